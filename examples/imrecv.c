/*
 * imrecv: follow your inbox (and groups) with the client library
 * (libmosquitto-im-client, clients/c). Prints one line per message, in
 * order, each exactly once across restarts that share the state file:
 *
 *   <timeline> <seq> <sender> <body>
 *
 *   imrecv -u bob -s bob.state            # forever
 *   imrecv -u bob -s bob.state -n 100     # stop after 100 messages
 *   imrecv -u bob -s bob.state -t 5       # stop 5 s after catching up
 *   imrecv -u bob -s bob.state -g team    # the group team too (-a: all groups, and new ones)
 *   imrecv -u bob -s bob.state -e         # events too:
 *
 *   event read <timeline> <user> <seq>    <user> read <timeline> up to <seq>
 *   event typing <timeline> <user> on|off
 *   event member <group> on|off           (with -a)
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto-im/client.h>

static struct mim_client *g_client;
static volatile sig_atomic_t g_stop;
static long g_delivered, g_max;
static int64_t g_last_ms;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static void print_msg(void *ud, const struct mim_message *m)
{
	(void)ud;
	printf("%s %llu %s ", m->timeline, (unsigned long long)m->seq, m->sender ? m->sender : "?");
	fwrite(m->body, 1, m->len, stdout);
	putchar('\n');
	fflush(stdout);
	g_delivered++;
	g_last_ms = now_ms();
}

/* Edits and recalls are messages with seqs of their own: printed as such. */
static void print_change(void *ud, const struct mim_message *m, const struct mim_message *orig)
{
	(void)orig;
	print_msg(ud, m);
}

static void print_read(void *ud, const struct mim_read *r)
{
	(void)ud;
	printf("event read %s %s %llu\n", r->timeline, r->user, (unsigned long long)r->seq);
	fflush(stdout);
}

static void print_typing(void *ud, const struct mim_typing *t)
{
	(void)ud;
	printf("event typing %s %s %s\n", t->timeline, t->user, t->typing ? "on" : "off");
	fflush(stdout);
}

static void print_member(void *ud, const char *group, bool member, uint64_t seq)
{
	(void)ud;
	(void)seq;
	printf("event member g/%s %s\n", group, member ? "on" : "off");
	fflush(stdout);
}

static void on_reset(void *ud, uint64_t old_id, uint64_t new_id)
{
	(void)ud;
	fprintf(stderr, "imrecv: the server's message store was replaced (store id %016llx, was %016llx): "
			"starting over from seq 1\n", (unsigned long long)new_id, (unsigned long long)old_id);
}

static void on_error(void *ud, int result, const char *what)
{
	(void)ud;
	(void)result;
	fprintf(stderr, "imrecv: %s\n", what);
}

static void usage(void)
{
	fprintf(stderr, "usage: imrecv -u user [-P password] [-h host] [-p port] [-i client_id] [-s state_file]\n"
			"              [-g group]... [-a] [-n max_messages] [-t idle_seconds] [-e] [--cafile file] [-v]\n"
			"  -a  follow every group the user is in, also those it joins while running\n"
			"  -e  print read marks and typing too: \"event read TIMELINE USER SEQ\", \"event typing TIMELINE USER on|off\"\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct mim_options o;
	const char *groups[65] = {0};
	int ng = 0, ch, idle = 0, rc, events = 0, all = 0;
	static const struct option longs[] = {{"cafile", required_argument, NULL, 'C'}, {NULL, 0, NULL, 0}};

	mim_options_init(&o);
	while((ch = getopt_long(argc, argv, "u:P:h:p:i:s:g:n:t:vea", longs, NULL)) != -1){
		switch(ch){
			case 'u': o.user = optarg; break;
			case 'P': o.password = optarg; break;
			case 'h': o.host = optarg; break;
			case 'p': o.port = atoi(optarg); break;
			case 'i': o.client_id = optarg; break;
			case 's': o.state_path = optarg; break;
			case 'g': if(ng < 64) groups[ng++] = optarg; break;
			case 'a': all = 1; break;
			case 'n': g_max = atol(optarg); break;
			case 't': idle = atoi(optarg) * 1000; break;
			case 'C': o.cafile = optarg; break;
			case 'v': o.verbose = 1; break;
			case 'e': events = 1; break;
			default: usage();
		}
	}
	if(o.user == NULL) usage();
	if(o.client_id == NULL){
		static char id[160];

		snprintf(id, sizeof(id), "%s-imclient", o.user);   /* a device is its client id */
		o.client_id = id;
	}
	/* -g: those groups; -a: all of them; neither: the inbox only */
	o.follow_groups = all;
	o.groups = ng ? groups : NULL;
	o.save_interval_ms = 0;      /* the state file after every message: once across restarts */
	o.cb.on_message = print_msg;
	o.cb.on_edit = print_change;
	o.cb.on_recall = print_change;
	if(events){
		o.cb.on_read = print_read;
		o.cb.on_typing = print_typing;
		o.cb.on_membership = print_member;
	}
	o.cb.on_reset = on_reset;
	o.cb.on_error = on_error;
	g_client = mim_new(&o, &rc);
	if(g_client == NULL){
		fprintf(stderr, "imrecv: cannot create the client: %s\n", mim_strerror(rc));
		return 1;
	}
	rc = mim_connect(g_client);
	if(rc != MIM_OK){
		fprintf(stderr, "imrecv: cannot connect to %s:%d: %s\n", o.host ? o.host : "127.0.0.1", o.port ? o.port : 1883,
				strerror(errno));
		mim_destroy(g_client);
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	g_last_ms = now_ms();
	rc = MIM_OK;
	for(;;){
		rc = mim_loop(g_client, 100);
		if(rc != MIM_OK) break;
		if(g_max && g_delivered >= g_max) break;
		if(idle && mim_caught_up(g_client) && now_ms() - g_last_ms > idle) break;
		if(g_stop) break;
	}
	mim_destroy(g_client);
	return rc == MIM_OK ? 0 : 1;
}
