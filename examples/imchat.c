/*
 * imchat: a chat command line for mosquitto-im, on the client library
 * (clients/c, libmosquitto-im-client).
 *
 *   imchat -u alice                            interactive: the conversation list, /open bob, type to send
 *   imchat -u alice send bob "hi"              direct message, prints the seq
 *   imchat -u alice send -g team "hi"          group message
 *   imchat -u bob listen                       live, in order, resumes after restart
 *   imchat -u bob history u/bob --last 20      the last 20 messages of a timeline
 *   imchat -u alice group create team bob carol
 *   imchat -u alice group add|remove team dave
 *   imchat -u bob group leave team
 *   imchat -u bob group list | info team
 *   imchat -u alice edit bob 3 "hi!"           replace the text of my message u/bob #3
 *   imchat -u alice recall -g team 7           withdraw my message g/team #7
 *   imchat -u alice typing bob [on|off]        tell bob I am typing (or stopped)
 *   imchat -u alice conversations --limit 20   my latest conversations, unread counts
 *
 * Everything goes through the library. The one-shot commands (send,
 * history, group, edit, recall, typing, conversations) run a client that
 * follows no timeline (requests_only) for one exchange: a send keeps its
 * cmid across a lost connection until the Receipt, so it is stored exactly
 * once. `listen` and the interactive mode run a device: sync before live,
 * gaps filled, duplicates dropped, a state file; when the server's store
 * was replaced they print a line saying so and start over from seq 1.
 *
 * The chat (no command) is in imchat_chat.c. Errors go to stderr with a
 * non-zero exit: 1 for a failure, 2 for usage.
 */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto-im/client.h>

#include "im_print.h"
#include "imchat.h"

#define CONNACK_MS 10000

/* ---- options ---- */

struct imchat_opt opt = {.host = "127.0.0.1", .port = 1883, .reply_ms = 3000, .last_n = -1, .after = -1, .limit = -1};

void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("imchat: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- printing messages: "HH:MM:SS timeline #seq sender: body" ---- */

/* Local time of ms since the epoch (0: now): HH:MM:SS, with the date before it. */
void put_time(FILE *out, int64_t ms, bool date)
{
	time_t s = ms ? (time_t)(ms / 1000) : time(NULL);
	struct tm tm;
	char ts[32];

	localtime_r(&s, &tm);
	strftime(ts, sizeof(ts), date ? "%Y-%m-%d %H:%M:%S" : "%H:%M:%S", &tm);
	fputs(ts, out);
}

void print_time(int64_t ms, bool date)
{
	put_time(stdout, ms, date);
}

/* One message, one line: control characters are shown as '?'. */
void put_body(FILE *out, const struct mim_message *h)
{
	size_t i;

	if(h->body_omitted){
		fputs("(body omitted: notify mode)", out);
		return;
	}
	for(i = 0; i < h->len; i++) fputc(h->body[i] < 0x20 && h->body[i] != '\t' ? '?' : h->body[i], out);
}

static void print_msg(const char *me_tl, const struct mim_message *h)
{
	print_time(h->ts_ms, false);
	printf(" %s #%" PRIu64 " %s", h->timeline ? h->timeline : "?", h->seq, h->sender ? h->sender : "?");
	if(h->flags & MIM_FLAG_SYSTEM){
		printf(" (system)");
	}else if(me_tl && h->to && h->timeline && !strcmp(h->timeline, me_tl) && strcmp(h->to, me_tl)){
		/* my own copy of a message I sent: name the peer */
		printf(" -> %s", !strncmp(h->to, "u/", 2) ? h->to + 2 : h->to);
	}
	/* an edit or a recall names the message it changes (in this timeline) */
	im_print_change(h->flags, h->ref_seq);
	fputs(": ", stdout);
	put_body(stdout, h);
	putchar('\n');
	fflush(stdout);
}

/* "u/bob unread 2 read #3 last #5 2026-11-30 13:13:13 alice: text": read is
 * how far the peer read its inbox u/bob (the seqs `send` prints; absent
 * while it read nothing); last is the latest message, its seq in the
 * timeline I read (u/<me>, g/<group>). */
void print_conv(const struct mim_conversation *c)
{
	printf("%s unread %" PRIu64, c->timeline ? c->timeline : "?", c->unread);
	if(c->peer_read_seq) printf(" read #%" PRIu64, c->peer_read_seq);
	printf(" last #%" PRIu64 " ", c->last_seq);
	print_time(c->last_ts_ms, true);
	printf(" %s", c->last_sender ? c->last_sender : "?");
	if(c->last_flags & MIM_FLAG_SYSTEM) printf(" (system)");
	im_print_change(c->last_flags, 0);
	printf(": %s\n", c->last_preview ? c->last_preview : "(no preview)");
}

/* ---- names ---- */

static bool valid_name(const char *n)
{
	size_t len = strlen(n);

	return len >= 1 && len <= IM_NAME_MAX && !strpbrk(n, "/+#$");
}

/* Where to send: "-g GROUP" (group), a timeline "u/USER" or "g/GROUP", or a
 * bare user name. Fills tl and returns NULL, or returns what is wrong. */
const char *parse_target(const char *arg, const char *group, char tl[IM_TL_MAX + 1])
{
	static char why[IM_NAME_MAX + 40];
	const char *name = group ? group : arg;
	char kind = group ? 'g' : 'u';

	if(!group && (!strncmp(arg, "u/", 2) || !strncmp(arg, "g/", 2))){
		kind = arg[0];
		name = arg + 2;
	}
	if(!valid_name(name)){
		snprintf(why, sizeof(why), "invalid %s name '%.64s'", kind == 'g' ? "group" : "user", name);
		return why;
	}
	snprintf(tl, IM_TL_MAX + 1, "%c/%s", kind, name);
	return NULL;
}

/* The same for the command line: dies on an invalid name. */
static void target(const char *arg, char tl[IM_TL_MAX + 1])
{
	const char *why = parse_target(arg, opt.group, tl);

	if(why) die("%s", why);
}

char *state_path(const char *kind)
{
	static char path[4096];
	const char *home = getenv("HOME");
	char dir[4000];

	if(opt.state) return (char *)opt.state;
	if(home == NULL || !*home) home = ".";
	snprintf(dir, sizeof(dir), "%s/.imchat", home);
	mkdir(dir, 0700);
	snprintf(path, sizeof(path), "%s/%s@%s:%d%s.state", dir, opt.user, opt.host, opt.port, kind);
	return path;
}

/* ---- a client, connected ---- */

static char g_login_why[160];

void no_plugin(const char *where)
{
	die("no reply from the mosquitto-im plugin on %s within %d ms: is the plugin loaded?", where, opt.reply_ms);
}

void login_refused(void)
{
	/* "the broker refused the login of alice: Not authorized" */
	const char *why = strrchr(g_login_why, ':');

	why = why ? why + 2 : "";
	if(!*why || strstr(why, "authori") || strstr(why, "user name or password")) why = "not authorised";
	die("login as %s refused by %s:%d: %s", opt.user, opt.host, opt.port, why);
}

static void on_error(void *ud, int result, const char *what)
{
	(void)ud;
	if(result == MIM_ERR_LOGIN){
		snprintf(g_login_why, sizeof(g_login_why), "%s", what);
		return;
	}
	fprintf(stderr, "imchat: %s\n", what);
}

void base_options(struct mim_options *o)
{
	mim_options_init(o);
	o->host = opt.host;
	o->port = opt.port;
	o->user = opt.user;
	o->password = opt.password;
	o->cafile = opt.cafile;
	o->verbose = opt.verbose;
	o->cb.on_error = on_error;
}

bool online(const struct mim_client *c)
{
	enum mim_state s = mim_get_state(c);

	return s == MIM_STATE_SYNCING || s == MIM_STATE_ONLINE;
}

/* Connects (trying for retry_s seconds while the broker cannot be
 * reached) and waits for the CONNACK. Dies on a refused login. */
static void connect_client(struct mim_client *c, int retry_s)
{
	int64_t until = now_ms() + (int64_t)retry_s * 1000, deadline;

	while(mim_connect(c) != MIM_OK){
		if(now_ms() >= until) die("cannot connect to %s:%d: %s", opt.host, opt.port, strerror(errno));
		poll(NULL, 0, 250);
	}
	deadline = now_ms() + CONNACK_MS;
	while(!online(c)){
		if(mim_loop(c, 50) == MIM_ERR_LOGIN) login_refused();
		if(now_ms() >= deadline){
			die("cannot connect to %s:%d: no CONNACK within %d s%s", opt.host, opt.port, CONNACK_MS / 1000,
					opt.cafile ? "" : " (a TLS listener?)");
		}
	}
}

/* A client for one exchange: follows nothing, keeps no session. */
static struct mim_client *oneshot(int retry_s)
{
	struct mim_options o;
	struct mim_client *c;
	int rc;

	base_options(&o);
	o.requests_only = true;
	c = mim_new(&o, &rc);
	if(c == NULL) die("cannot create the client: %s", mim_strerror(rc));
	connect_client(c, retry_s);
	return c;
}

/* Runs c until *done. A reply must come within --timeout of the request
 * (or, for a send, of every connection that carries it). A request whose
 * connection dropped is answered by the library (MIM_ERR_CONN_LOST); a
 * send waits for the next connection, for up to 30 s plus --retry. */
static void await(struct mim_client *c, const bool *done, const char *topic)
{
	int64_t deadline = now_ms() + opt.reply_ms, offline_since = 0;

	while(!*done){
		if(mim_loop(c, 50) == MIM_ERR_LOGIN) login_refused();
		if(*done) break;
		if(!online(c)){
			if(offline_since == 0) offline_since = now_ms();
			if(now_ms() - offline_since > 30000 + (int64_t)opt.retry_s * 1000){
				die("lost the connection to %s:%d and could not connect again", opt.host, opt.port);
			}
			continue;
		}
		if(offline_since){
			offline_since = 0;
			deadline = now_ms() + opt.reply_ms;   /* sent again on this connection */
			if(opt.verbose) fprintf(stderr, "imchat: connected again\n");
		}
		if(now_ms() > deadline) no_plugin(topic);
	}
}

/* A reply that is not OK ends the program, saying why. */
static void check_reply(const struct mim_reply *r, const char *what)
{
	if(r->status == MIM_OK) return;
	if(r->status == MIM_ERR_TIMEOUT) no_plugin(what);
	if(r->status == MIM_ERR_CONN_LOST){
		die("lost the connection to %s:%d while waiting for the reply on %s", opt.host, opt.port, what);
	}
	if(r->status < 0) die("%s: %s", what, mim_strerror(r->status));
	die("%s: %d %s: %s", what, r->status, mim_strerror(r->status), r->reason ? r->reason : "");
}

static void request_failed(int rc, const char *what)
{
	if(rc == MIM_ERR_NOT_CONNECTED){
		die("lost the connection to %s:%d before the request on %s", opt.host, opt.port, what);
	}
	die("%s: %s", what, mim_strerror(rc));
}

/* ---- send, edit, recall ---- */

struct sent {
	bool done;
	const char *tl, *change;
	uint64_t ref;
};

static void on_sent(void *ud, const struct mim_receipt *r)
{
	struct sent *s = ud;
	char topic[IM_TL_MAX + 8];

	snprintf(topic, sizeof(topic), "im/%s", s->tl);
	if(r->status == MIM_ERR_BROKER){
		die("%s refused the message to %s: %s (the broker log says why)", opt.host, topic,
				r->mqtt_reason == 0x87 ? "not authorised" : r->reason ? r->reason : "refused");
	}
	if(r->status != MIM_OK){
		die("%s refused: %d %s: %s", topic, r->status, mim_strerror(r->status), r->reason ? r->reason : "");
	}
	printf("%s seq %" PRIu64, r->timeline ? r->timeline : s->tl, r->seq);
	if(r->own_seq) printf(" (own copy u/%s seq %" PRIu64 ")", opt.user, r->own_seq);
	if(r->duplicate) printf(" duplicate");
	if(s->change) printf(" (%s of #%" PRIu64 ")", s->change, s->ref);
	putchar('\n');
	s->done = true;
}

/* A message to tl: a new one (change NULL), or an "edit" / "recall" of
 * message ref (its seq in tl). */
static int cmd_send(struct mim_client *c, const char *tl, const char *text, const char *change, uint64_t ref)
{
	struct mim_send_options so = {0};
	struct sent s = {false, tl, change, ref};
	char topic[IM_TL_MAX + 8];
	int rc;

	if(c == NULL) c = oneshot(opt.retry_s);
	snprintf(topic, sizeof(topic), "im/%s", tl);
	so.cmid = opt.cmid;
	if(change == NULL) rc = mim_send(c, tl, text, strlen(text), &so, on_sent, &s, NULL);
	else if(!strcmp(change, "edit")) rc = mim_edit(c, tl, ref, text, strlen(text), on_sent, &s);
	else rc = mim_recall(c, tl, ref, on_sent, &s);
	if(rc != MIM_OK) die("cannot send to %s: %s", topic, mim_strerror(rc));
	await(c, &s.done, topic);
	mim_destroy(c);
	return 0;
}

/* ---- history ---- */

struct page {
	bool done;
	const char *me;
	uint64_t after, head;
	bool more, quiet;
	size_t n;
	uint64_t copy_to_seq;           /* through_copy: the seq asked */
	char copy_tl[IM_TL_MAX + 1];    /* through_copy: where the original is */
	uint64_t copy_ref;
};

static void on_page(void *ud, const struct mim_reply *r)
{
	struct page *p = ud;
	char what[IM_TL_MAX + 32];
	size_t i;

	snprintf(what, sizeof(what), "sync %s refused", r->timeline ? r->timeline : "?");
	if(r->status == MIM_ERR_TIMEOUT || r->status == MIM_ERR_CONN_LOST) check_reply(r, "$CONTROL/im/v1/sync");
	check_reply(r, what);
	if(r->first_seq > p->after + 1 && opt.verbose){
		fprintf(stderr, "imchat: %s: seqs %" PRIu64 "..%" PRIu64 " are gone (retention)\n", r->timeline,
				p->after + 1, r->first_seq - 1);
	}
	for(i = 0; i < r->n_messages; i++){
		const struct mim_message *h = &r->messages[i];

		if(p->copy_to_seq){
			/* my own copy of a message I sent to someone: its original */
			if(h->seq == p->copy_to_seq && h->outgoing && h->to && strcmp(h->to, p->me) && h->peer_seq){
				snprintf(p->copy_tl, sizeof(p->copy_tl), "%s", h->to);
				p->copy_ref = h->peer_seq;
			}
		}else if(!p->quiet){
			print_msg(p->me, h);
		}
		p->after = h->seq;
	}
	p->n = r->n_messages;
	p->head = r->head_seq;
	p->more = r->has_more && r->n_messages > 0;
	p->done = true;
}

static void history_page(struct mim_client *c, struct page *p, const char *tl, uint32_t limit)
{
	int rc;

	p->done = false;
	rc = mim_history(c, tl, p->after, limit, on_page, p);
	if(rc != MIM_OK) request_failed(rc, "$CONTROL/im/v1/sync");
	await(c, &p->done, "$CONTROL/im/v1/sync");
}

static int cmd_history(const char *tl_arg)
{
	struct mim_client *c;
	char tl[IM_TL_MAX + 1], me[IM_TL_MAX + 1];
	struct page p = {0};

	/* "u/bob", "g/team", or a bare name: a group if it is not me */
	if(!strncmp(tl_arg, "u/", 2) || !strncmp(tl_arg, "g/", 2)) snprintf(tl, sizeof(tl), "%s", tl_arg);
	else if(!strcmp(tl_arg, opt.user)) snprintf(tl, sizeof(tl), "u/%s", tl_arg);
	else snprintf(tl, sizeof(tl), "g/%s", tl_arg);
	snprintf(me, sizeof(me), "u/%s", opt.user);
	if(tl[0] == 'u' && strcmp(tl, me)) die("history: %s is someone else's inbox; yours is %s", tl, me);
	if(!valid_name(tl + 2)) die("invalid name '%s'", tl + 2);
	p.me = me;
	c = oneshot(0);
	if(opt.after >= 0){
		p.after = (uint64_t)opt.after;
	}else if(opt.last_n >= 0){
		p.quiet = true;
		history_page(c, &p, tl, 1); /* learns head_seq */
		p.quiet = false;
		p.after = p.head > (uint64_t)opt.last_n ? p.head - (uint64_t)opt.last_n : 0;
	}
	do{
		history_page(c, &p, tl, 500);
	}while(p.more);
	mim_destroy(c);
	return 0;
}

/* ---- groups ---- */

/* `last` of a timeline in the state file of `listen`, or -1 if unknown or
 * counted in another store than store_id (0: the server did not say). */
static long long state_last(const char *tl, uint64_t store_id)
{
	FILE *f = fopen(state_path(""), "r");
	char name[IM_TL_MAX + 2], line[256], *end;
	unsigned long long last, id;
	long long r = -1;

	if(f == NULL) return -1;
	while(fgets(line, sizeof(line), f)){
		if(!strncmp(line, "store ", 6)){
			id = strtoull(line + 6, &end, 16);
			if(store_id && end > line + 6 && id != store_id){
				r = -1; /* the server's history was replaced since: listen starts over */
				break;
			}
		}else if(sscanf(line, "%66s %llu", name, &last) == 2 && !strcmp(name, tl)){
			r = (long long)last;
		}
	}
	fclose(f);
	return r;
}

struct group_call {
	bool done;
	const char *op, *group;
};

static void on_group(void *ud, const struct mim_reply *r)
{
	struct group_call *g = ud;
	char what[IM_NAME_MAX + 32];
	size_t i;

	if(r->status == MIM_ERR_TIMEOUT || r->status == MIM_ERR_CONN_LOST) check_reply(r, "$CONTROL/im/v1/group");
	snprintf(what, sizeof(what), "group %s%s%s", g->op, g->group ? " " : "", g->group ? g->group : "");
	check_reply(r, what);
	if(!strcmp(g->op, "list")){
		for(i = 0; i < r->n_groups; i++){
			char tl[IM_TL_MAX + 8];
			long long last;
			uint64_t unread = r->groups[i].unread;

			snprintf(tl, sizeof(tl), "g/%s", r->groups[i].name);
			/* unread as this machine's `listen` sees it, if it ran */
			last = state_last(tl, r->store_id);
			if(last >= 0) unread = r->groups[i].head_seq > (uint64_t)last ? r->groups[i].head_seq - (uint64_t)last : 0;
			printf("%s head %" PRIu64 " unread %" PRIu64 "\n", r->groups[i].name, r->groups[i].head_seq, unread);
		}
	}else if(!strcmp(g->op, "info")){
		printf("%s owner %s head %" PRIu64 "\nmembers:", r->group ? r->group : g->group, r->owner ? r->owner : "?",
				r->head_seq);
		for(i = 0; i < r->n_members; i++) printf(" %s", r->members[i]);
		putchar('\n');
	}else{
		printf("%s %s: ok", g->op, g->group);
		if(r->seq) printf(" (g/%s seq %" PRIu64 ")", g->group, r->seq);
		putchar('\n');
	}
	g->done = true;
}

static int cmd_group(int argc, char **argv)
{
	struct mim_client *c;
	struct group_call g = {false, NULL, NULL};
	const char *op;
	int i, rc;

	if(argc < 1) die("group: create|add|remove|leave|info <group> [users...], or group list");
	op = argv[0];
	if(!strcmp(op, "list")){
		if(argc != 1) die("usage: group list");
	}else if(!strcmp(op, "create") || !strcmp(op, "add") || !strcmp(op, "remove")){
		if(argc < 2 || (strcmp(op, "create") && argc < 3)) die("usage: group %s <group> user...", op);
	}else if(!strcmp(op, "leave") || !strcmp(op, "info")){
		if(argc != 2) die("usage: group %s <group>", op);
	}else{
		die("unknown group operation '%s' (create, add, remove, leave, list, info)", op);
	}
	for(i = 1; i < argc; i++){
		if(!valid_name(argv[i])) die("invalid %s name '%s'", i == 1 ? "group" : "user", argv[i]);
	}
	g.op = op;
	g.group = argc > 1 ? argv[1] : NULL;
	c = oneshot(0);
	rc = mim_group(c, op, g.group, (const char *const *)argv + 2, argc > 2 ? (size_t)argc - 2 : 0, on_group, &g);
	if(rc != MIM_OK) request_failed(rc, "$CONTROL/im/v1/group");
	await(c, &g.done, "$CONTROL/im/v1/group");
	mim_destroy(c);
	return 0;
}

/* ---- edit, recall, typing, conversations ---- */

/* A message is changed by its seq in the timeline it was sent to. In my
 * own inbox, a seq names my copy of a message I sent to someone (what
 * listen shows): it is changed through the original, in the peer's inbox
 * (the copy's `to`, at the copy's peer_seq). */
static void through_copy(struct mim_client *c, char tl[IM_TL_MAX + 1], uint64_t *ref)
{
	char me[IM_TL_MAX + 1];
	struct page p = {0};

	snprintf(me, sizeof(me), "u/%s", opt.user);
	if(strcmp(tl, me)) return;
	p.me = me;
	p.after = *ref - 1;
	p.copy_to_seq = *ref;
	history_page(c, &p, me, 1);
	if(p.n == 0 || p.after != *ref) die("no message #%" PRIu64 " in %s", *ref, me);
	if(p.copy_tl[0]){
		snprintf(tl, IM_TL_MAX + 1, "%s", p.copy_tl);
		*ref = p.copy_ref;
	}
}

static int cmd_change(const char *arg, const char *seq, const char *text)
{
	struct mim_client *c;
	char tl[IM_TL_MAX + 1], *end;
	uint64_t ref;

	target(arg, tl);
	errno = 0;
	ref = strtoull(seq, &end, 10);
	if(*seq < '1' || *seq > '9' || *end || errno) die("invalid seq '%s': a message's seq, from 1", seq);
	c = oneshot(opt.retry_s);
	through_copy(c, tl, &ref);
	return cmd_send(c, tl, text ? text : "", text ? "edit" : "recall", ref);
}

struct simple_call {
	bool done;
	const char *what;
};

static void on_typing_reply(void *ud, const struct mim_reply *r)
{
	struct simple_call *s = ud;

	if(r->status == MIM_ERR_TIMEOUT || r->status == MIM_ERR_CONN_LOST) check_reply(r, "$CONTROL/im/v1/typing");
	check_reply(r, s->what);
	s->done = true;
}

static int cmd_typing(const char *arg, const char *state)
{
	struct mim_client *c;
	char tl[IM_TL_MAX + 1], what[IM_TL_MAX + 16];
	struct simple_call s = {false, what};
	bool typing;
	int rc;

	target(arg, tl);
	if(state && strcmp(state, "on") && strcmp(state, "off")) die("typing: on or off, not '%s'", state);
	typing = state == NULL || !strcmp(state, "on");
	snprintf(what, sizeof(what), "typing %s", tl);
	c = oneshot(0);
	rc = mim_typing(c, tl, typing, on_typing_reply, &s);
	if(rc != MIM_OK) request_failed(rc, "$CONTROL/im/v1/typing");
	await(c, &s.done, "$CONTROL/im/v1/typing");
	printf("%s: %s\n", tl, typing ? "typing" : "stopped typing");
	mim_destroy(c);
	return 0;
}

struct convs_call {
	bool done, more;
	long shown;
	int64_t before_ts;
	char before_tl[IM_TL_MAX + 1];
};

static void on_convs(void *ud, const struct mim_reply *r)
{
	struct convs_call *v = ud;
	size_t i;

	if(r->status == MIM_ERR_TIMEOUT || r->status == MIM_ERR_CONN_LOST) check_reply(r, "$CONTROL/im/v1/conversations");
	check_reply(r, "conversations");
	for(i = 0; i < r->n_conversations; i++) print_conv(&r->conversations[i]);
	v->shown += (long)r->n_conversations;
	v->more = r->has_more && r->n_conversations > 0;
	if(v->more){
		v->before_ts = r->conversations[r->n_conversations - 1].last_ts_ms;
		snprintf(v->before_tl, sizeof(v->before_tl), "%s", r->conversations[r->n_conversations - 1].timeline);
	}
	v->done = true;
}

/* The latest first, all of them or --limit; pages of up to 200 (the
 * plugin's maximum), each asked after the one before it. */
static int cmd_conversations(void)
{
	struct mim_client *c = oneshot(0);
	struct convs_call v = {0};
	uint32_t limit;
	int rc;

	v.more = true;
	while(v.more && (opt.limit < 0 || v.shown < opt.limit)){
		limit = opt.limit < 0 || opt.limit - v.shown > 200 ? 200 : (uint32_t)(opt.limit - v.shown);
		v.done = false;
		rc = mim_conversations(c, limit, v.before_ts, v.before_tl[0] ? v.before_tl : NULL, on_convs, &v);
		if(rc != MIM_OK) request_failed(rc, "$CONTROL/im/v1/conversations");
		await(c, &v.done, "$CONTROL/im/v1/conversations");
	}
	mim_destroy(c);
	return 0;
}

/* ---- listen ---- */

volatile sig_atomic_t g_stop;
static long g_shown;
static int64_t g_last_ms;

void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static void print_listened(void *ud, const struct mim_message *m)
{
	print_msg(ud, m);
	g_shown++;
	g_last_ms = now_ms();
}

/* Edits and recalls are messages with seqs of their own: shown as such,
 * naming the seq they change. */
static void print_change(void *ud, const struct mim_message *m, const struct mim_message *orig)
{
	(void)orig;
	print_listened(ud, m);
}

/* Others' read marks and typing ("HH:MM:SS u/bob bob read up to #3",
 * "HH:MM:SS u/alice alice is typing"); mine (from another device) are not
 * news. A mark learned on connect has no time: now. */
static void print_read(void *ud, const struct mim_read *r)
{
	(void)ud;
	if(r->user == NULL || !strcmp(r->user, opt.user)) return;
	print_time(r->ts_ms, false);
	printf(" %s %s read up to #%" PRIu64 "\n", r->timeline, r->user, r->seq);
	fflush(stdout);
}

static void print_typing(void *ud, const struct mim_typing *t)
{
	(void)ud;
	if(!strcmp(t->user, opt.user)) return;
	print_time(t->ts_ms, false);
	printf(" %s %s %s\n", t->timeline, t->user, t->typing ? "is typing" : "stopped typing");
	fflush(stdout);
}

/* The client forgot every seq and delivers again from seq 1 (-v prints the
 * store ids). */
static void on_reset(void *ud, uint64_t old_id, uint64_t new_id)
{
	(void)ud;
	if(opt.verbose) fprintf(stderr, "imchat: store %016" PRIx64 " -> %016" PRIx64 "\n", old_id, new_id);
	printf("-- the server's message store was replaced: starting over --\n");
	fflush(stdout);
}

/* A device of this user on this machine: a stable client id ("imchat-
 * USER@HOST", plus suffix) and its state file. */
struct mim_client *device(struct mim_options *o, const char *suffix, char *idbuf, size_t cap)
{
	struct mim_client *c;
	char host[64] = "";
	int rc;

	o->state_path = state_path(suffix);
	if(opt.client_id){
		o->client_id = opt.client_id;
	}else{
		gethostname(host, sizeof(host) - 1);
		snprintf(idbuf, cap, "imchat-%s@%s%s", opt.user, host, suffix);
		o->client_id = idbuf;
	}
	c = mim_new(o, &rc);
	if(c == NULL) die("cannot create the client: %s", mim_strerror(rc));
	if(opt.verbose) fprintf(stderr, "imchat: %s (client id %s, state %s)\n", opt.user, o->client_id, o->state_path);
	connect_client(c, 0);
	return c;
}

/* The plugin answers: one request first, a clear error if it does not. */
static void on_check(void *ud, const struct mim_reply *r)
{
	if(r->status == MIM_ERR_TIMEOUT) no_plugin("$CONTROL/im/v1/group");
	*(bool *)ud = true;
}

static void check_plugin(struct mim_client *c)
{
	bool done = false;

	if(mim_group(c, "list", NULL, NULL, 0, on_check, &done) != MIM_OK) return;   /* lost: the client reconnects */
	await(c, &done, "$CONTROL/im/v1/group");
}

static int cmd_listen(void)
{
	struct mim_options o;
	struct mim_client *c;
	char idbuf[160], me[IM_TL_MAX + 1];
	int rc;

	base_options(&o);
	o.save_interval_ms = 0;      /* the state file after every message: a killed listen resumes exactly */
	o.cb.on_message = print_listened;
	o.cb.on_edit = print_change;
	o.cb.on_recall = print_change;
	o.cb.on_read = print_read;
	o.cb.on_typing = print_typing;
	/* membership: the group's system message says it (its first line) */
	o.cb.on_reset = on_reset;
	snprintf(me, sizeof(me), "u/%s", opt.user);
	o.userdata = me;
	c = device(&o, "", idbuf, sizeof(idbuf));
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	check_plugin(c);
	g_last_ms = now_ms();
	rc = MIM_OK;
	while(!g_stop){
		rc = mim_loop(c, 100);
		if(rc != MIM_OK) break;
		if(opt.max_msgs && g_shown >= opt.max_msgs) break;
		if(opt.idle_s && mim_caught_up(c) && now_ms() - g_last_ms > (int64_t)opt.idle_s * 1000) break;
	}
	mim_destroy(c);
	return rc == MIM_OK ? 0 : 1;
}

/* ---- main ---- */

static void usage(int code)
{
	fprintf(code ? stderr : stdout,
			"usage: imchat -u user [-P password] [-h host] [-p port] [--cafile file] [COMMAND]\n"
			"  (no command)              chat: the conversation list, /open USER or /open g/GROUP, type to send;\n"
			"         [-s STATE] [-i CLIENT_ID]   /convs, /help, /quit (state ~/.imchat/USER@HOST:PORT-chat.state)\n"
			"  send USER TEXT            direct message; prints the stored seq\n"
			"  send -g GROUP TEXT        group message\n"
			"       [--cmid ID]          your own message id (re-running with it stores nothing twice)\n"
			"       [--retry SECONDS]    keep trying to connect this long (default: fail at once)\n"
			"  listen [-n N] [-t IDLE]   follow your inbox and groups: \"HH:MM:SS timeline #seq sender: body\"\n"
			"         [-s STATE] [-i CLIENT_ID]   (state default ~/.imchat/USER@HOST:PORT.state)\n"
			"                            and the others' \"... USER read up to #SEQ\", \"... USER is typing\"\n"
			"  history TIMELINE [--last N | --after SEQ]   u/YOU, g/GROUP or a group name\n"
			"  group create GROUP [USER...] | add GROUP USER... | remove GROUP USER...\n"
			"  group leave GROUP | info GROUP | list\n"
			"  edit USER SEQ TEXT        replace the text of your message SEQ (the seq send printed)\n"
			"  edit -g GROUP SEQ TEXT    (USER may be u/USER or g/GROUP; in u/YOU, SEQ is your copy's)\n"
			"  recall USER SEQ | recall -g GROUP SEQ   withdraw your message (a group's owner: anyone's)\n"
			"  typing USER [on|off] | typing -g GROUP [on|off]   say you are typing, or stopped\n"
			"  conversations [--limit N] your conversations, latest first: unread, read marks, last message\n"
			"options: --timeout MS  wait for a reply of the plugin (default 3000); -v verbose\n");
	exit(code);
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{"cafile", required_argument, NULL, 'C'}, {"last", required_argument, NULL, 'L'},
		{"after", required_argument, NULL, 'A'}, {"cmid", required_argument, NULL, 'M'},
		{"retry", required_argument, NULL, 'R'}, {"timeout", required_argument, NULL, 'T'},
		{"limit", required_argument, NULL, 'N'},
		{"help", no_argument, NULL, 'H'}, {NULL, 0, NULL, 0}};
	char *pos[128] = {0};
	int npos = 0, ch;

	/* Options may come before or after the command (GNU permutation);
	 * "--" ends them, for a text that starts with '-'. */
	while(optind < argc){
		ch = getopt_long(argc, argv, "-u:P:h:p:i:s:g:n:t:v", longs, NULL);
		if(ch == -1){
			while(optind < argc && npos < 128) pos[npos++] = argv[optind++];
			break;
		}
		switch(ch){
			case 1: if(npos < 128) pos[npos++] = optarg; break;
			case 'u': opt.user = optarg; break;
			case 'P': opt.password = optarg; break;
			case 'h': opt.host = optarg; break;
			case 'p': opt.port = atoi(optarg); break;
			case 'i': opt.client_id = optarg; break;
			case 's': opt.state = optarg; break;
			case 'g': opt.group = optarg; break;
			case 'n': opt.max_msgs = atol(optarg); break;
			case 't': opt.idle_s = atoi(optarg); break;
			case 'v': opt.verbose = 1; break;
			case 'C': opt.cafile = optarg; break;
			case 'L': opt.last_n = atol(optarg); break;
			case 'A': opt.after = atoll(optarg); break;
			case 'M': opt.cmid = optarg; break;
			case 'R': opt.retry_s = atoi(optarg); break;
			case 'T': opt.reply_ms = atoi(optarg); break;
			case 'N': opt.limit = atol(optarg); if(opt.limit < 1) die("--limit must be 1 or more"); break;
			case 'H': usage(0); break;
			default: usage(2);
		}
	}
	if(opt.user == NULL){
		fprintf(stderr, "imchat: -u user is required\n");
		usage(2);
	}
	if(!valid_name(opt.user)) die("invalid user name '%s'", opt.user);
	if(opt.port <= 0 || opt.port > 65535) die("invalid port");
	if(opt.reply_ms <= 0) opt.reply_ms = 3000;
	if(opt.cmid && (!*opt.cmid || strlen(opt.cmid) > 36)) die("--cmid must be 1..36 bytes");
	if(npos < 1) return cmd_chat();
	/* With -g GROUP, the group takes the place of the USER argument. */
	if(!strcmp(pos[0], "send")){
		char tl[IM_TL_MAX + 1];

		if(npos != (opt.group ? 2 : 3)) die("usage: send USER TEXT, or send -g GROUP TEXT (quote the text)");
		target(pos[1], tl);
		return cmd_send(NULL, tl, pos[npos - 1], NULL, 0);
	}
	if(!strcmp(pos[0], "edit")){
		if(npos != (opt.group ? 3 : 4)) die("usage: edit USER SEQ TEXT, or edit -g GROUP SEQ TEXT (quote the text)");
		return cmd_change(pos[1], pos[npos - 2], pos[npos - 1]);
	}
	if(!strcmp(pos[0], "recall")){
		if(npos != (opt.group ? 2 : 3)) die("usage: recall USER SEQ, or recall -g GROUP SEQ");
		return cmd_change(pos[1], pos[npos - 1], NULL);
	}
	if(!strcmp(pos[0], "typing")){
		int first = opt.group ? 1 : 2;

		if(npos < first || npos > first + 1) die("usage: typing USER [on|off], or typing -g GROUP [on|off]");
		return cmd_typing(pos[1], npos > first ? pos[first] : NULL);
	}
	if(!strcmp(pos[0], "conversations")){
		if(npos != 1) die("usage: conversations [--limit N]");
		return cmd_conversations();
	}
	if(!strcmp(pos[0], "listen")){
		if(npos != 1) usage(2);
		return cmd_listen();
	}
	if(!strcmp(pos[0], "history")){
		if(npos != 2) die("usage: history TIMELINE [--last N | --after SEQ]");
		return cmd_history(pos[1]);
	}
	if(!strcmp(pos[0], "group")) return cmd_group(npos - 1, pos + 1);
	fprintf(stderr, "imchat: unknown command '%s'\n", pos[0]);
	usage(2);
}
