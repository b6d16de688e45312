/*
 * imrecv: follow your inbox (and groups) with the reference client.
 * Prints one line per message, in order, each exactly once across
 * restarts that share the state file:
 *
 *   <timeline> <seq> <sender> <body>
 *
 *   imrecv -u bob -s bob.state            # forever
 *   imrecv -u bob -s bob.state -n 100     # stop after 100 messages
 *   imrecv -u bob -s bob.state -t 5       # stop 5 s after catching up
 *   imrecv -u bob -s bob.state -e         # events too:
 *
 *   event read <timeline> <user> <seq>    <user> read <timeline> up to <seq>
 *   event typing <timeline> <user> on|off
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/im_client.h"

static struct im_client *g_client;

static void on_signal(int sig)
{
	(void)sig;
	if(g_client) im_client_stop(g_client);
}

static void print_msg(void *ud, const Im__V1__Header *h, const uint8_t *body, size_t len)
{
	(void)ud;
	printf("%s %llu %s ", h->timeline, (unsigned long long)h->seq, h->sender ? h->sender : "?");
	fwrite(body, 1, len, stdout);
	putchar('\n');
	fflush(stdout);
}

static void print_event(void *ud, const Im__V1__Event *ev)
{
	(void)ud;
	if(ev->kind == IM__V1__EVENT__KIND__READ){
		printf("event read %s %s %llu\n", ev->timeline, ev->user, (unsigned long long)ev->seq);
	}else{
		printf("event typing %s %s %s\n", ev->timeline, ev->user, !ev->has_typing || ev->typing ? "on" : "off");
	}
	fflush(stdout);
}

static void on_reset(void *ud, uint64_t old_id, uint64_t new_id)
{
	(void)ud;
	fprintf(stderr, "imrecv: the server's message store was replaced (store id %016llx, was %016llx): "
			"starting over from seq 1\n", (unsigned long long)new_id, (unsigned long long)old_id);
}

static void usage(void)
{
	fprintf(stderr, "usage: imrecv -u user [-P password] [-h host] [-p port] [-i client_id] [-s state_file]\n"
			"              [-g group]... [-n max_messages] [-t idle_seconds] [-e] [--cafile file] [-v]\n"
			"  -e  print read marks and typing too: \"event read TIMELINE USER SEQ\", \"event typing TIMELINE USER on|off\"\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct im_client_options o = {0};
	const char *groups[65] = {0};
	int ng = 0, ch, idle = 0, rc;
	long max = 0;
	static const struct option longs[] = {{"cafile", required_argument, NULL, 'C'}, {NULL, 0, NULL, 0}};

	while((ch = getopt_long(argc, argv, "u:P:h:p:i:s:g:n:t:ve", longs, NULL)) != -1){
		switch(ch){
			case 'u': o.user = optarg; break;
			case 'P': o.password = optarg; break;
			case 'h': o.host = optarg; break;
			case 'p': o.port = atoi(optarg); break;
			case 'i': o.client_id = optarg; break;
			case 's': o.state_path = optarg; break;
			case 'g': if(ng < 64) groups[ng++] = optarg; break;
			case 'n': max = atol(optarg); break;
			case 't': idle = atoi(optarg) * 1000; break;
			case 'C': o.cafile = optarg; break;
			case 'v': o.verbose = 1; break;
			case 'e': o.on_event = print_event; break;
			default: usage();
		}
	}
	if(o.user == NULL) usage();
	o.groups = groups;
	o.on_reset = on_reset;
	g_client = im_client_new(&o, print_msg, NULL);
	if(g_client == NULL){
		fprintf(stderr, "imrecv: cannot create client\n");
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	rc = im_client_run(g_client, max, idle);
	im_client_free(g_client);
	return rc == 0 ? 0 : 1;
}
