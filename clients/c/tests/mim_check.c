/*
 * mim_check: drives libmosquitto-im-client for clients/c/tests/
 * test_libclient.py, which starts the broker (and the weak link) and reads
 * what this prints. Every wait has a deadline; nothing sleeps a fixed time.
 *
 *   mim_check send -p PORT -u alice -t u/bob -n N [-s STATE] [-T SECS]
 *       sends "m0000".."mN-1" at once (the library queues them, persists
 *       them and sends them again after every reconnect), prints
 *       "receipt <index> <status> <seq> <duplicate>" per Receipt, "done";
 *       -c K: after every K, wait until the connection was lost once more.
 *   mim_check recv -p PORT -u bob -i CLIENT_ID -n N [-s STATE] [-T SECS]
 *       prints "msg <timeline> <seq> <body>" per message, "reset" when the
 *       store id changes; exits after N messages since the last reset
 *       (-R 1: and after a reset).
 *   mim_check chat -p PORT [-T SECS]
 *       alice and bob in one process: a message, an edit, a recall, a read
 *       mark, typing, a group and its membership news; "ok <step>" each.
 *
 * Options: -r MIN_MS,MAX_MS reconnect delays (default 50,500).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto-im/client.h>

static int port = 1883, recon_min = 50, recon_max = 500, timeout_s = 120;
static const char *user, *client_id, *state, *to;
static long n;
static int want_reset;          /* recv -R 1: the N count after a store-id change */
static int resets;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fail(const char *what)
{
	printf("FAIL %s\n", what);
	fflush(stdout);
	exit(1);
}

static void base_opts(struct mim_options *o, const char *u, const char *id, const char *st)
{
	mim_options_init(o);
	o->port = port;
	o->user = u;
	o->client_id = id;
	o->state_path = st;
	o->reconnect_min_ms = recon_min;
	o->reconnect_max_ms = recon_max;
	o->keepalive = 10;
	o->request_timeout_ms = 5000;
}

static void on_error(void *ud, int result, const char *what)
{
	(void)ud;
	fprintf(stderr, "mim_check: error %d: %s\n", result, what);
}

/* ---- send ---- */

static long receipts, refused, chunk, offlines;

static void on_send_state(void *ud, enum mim_state st)
{
	(void)ud;
	if(st == MIM_STATE_OFFLINE) offlines++;
	printf("state %d\n", (int)st);
}

static void on_receipt(void *ud, const struct mim_receipt *r)
{
	long idx = (long)(intptr_t)ud;

	if(r->status == MIM_ERR_CLOSED) return;
	printf("receipt %ld %d %llu %d\n", idx, r->status, (unsigned long long)r->seq, r->duplicate);
	fflush(stdout);
	receipts++;
	if(r->status != MIM_OK) refused++;
}

static int cmd_send(void)
{
	struct mim_options o;
	struct mim_client *c;
	int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
	char body[32];
	long i;
	int rc;

	base_opts(&o, user, client_id, state);
	o.cb.on_receipt = on_receipt;
	o.cb.on_error = on_error;
	o.cb.on_state = on_send_state;
	c = mim_new(&o, &rc);
	if(c == NULL) fail(mim_strerror(rc));
	mim_connect(c);
	for(i = 0; i < n; i++){
		snprintf(body, sizeof(body), "m%04ld", i);
		if(mim_send(c, to, body, strlen(body), NULL, on_receipt, (void *)(intptr_t)i, NULL) != MIM_OK) fail("mim_send");
		if(chunk && i % chunk == chunk - 1 && i + 1 < n){
			/* -c K: spread the sends over the cuts of the link: after
			 * every K, run until the connection was lost once more */
			long seen = offlines;

			while(offlines == seen && now_ms() < deadline) mim_loop(c, 50);
		}
	}
	while(receipts < n && now_ms() < deadline){
		if(mim_loop(c, 50) != MIM_OK) fail("login refused");
	}
	if(receipts < n) fail("not every message has its Receipt");
	if(mim_pending_count(c) != 0) fail("pending after every Receipt");
	mim_destroy(c);
	printf("done %ld refused %ld\n", receipts, refused);
	return refused ? 1 : 0;
}

/* ---- recv ---- */

static long got;

static void on_msg(void *ud, const struct mim_message *m)
{
	(void)ud;
	printf("msg %s %llu %.*s\n", m->timeline, (unsigned long long)m->seq, (int)m->len, (const char *)m->body);
	fflush(stdout);
	got++;
}

static void on_reset(void *ud, uint64_t old_id, uint64_t new_id)
{
	(void)ud;
	printf("reset %016llx %016llx\n", (unsigned long long)old_id, (unsigned long long)new_id);
	fflush(stdout);
	got = 0;
	resets++;
}

static void on_state(void *ud, enum mim_state s)
{
	(void)ud;
	printf("state %d\n", (int)s);
	fflush(stdout);
}

static int cmd_recv(void)
{
	struct mim_options o;
	struct mim_client *c;
	int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
	int rc;

	base_opts(&o, user, client_id, state);
	o.cb.on_message = on_msg;
	o.cb.on_reset = on_reset;
	o.cb.on_state = on_state;
	o.cb.on_error = on_error;
	c = mim_new(&o, &rc);
	if(c == NULL) fail(mim_strerror(rc));
	mim_connect(c);
	while((got < n || resets < want_reset || !mim_caught_up(c)) && now_ms() < deadline){
		if(mim_loop(c, 50) != MIM_OK) fail("login refused");
	}
	mim_destroy(c);
	if(got < n) fail("not every message came");
	printf("done %ld\n", got);
	return 0;
}

/* ---- chat: both users in one loop ---- */

struct side {
	const char *name;
	struct mim_client *c;
	struct mim_message last_msg;
	char last_body[256];
	uint64_t edit_of, recall_of, read_seq;
	char orig_after_edit[256];
	bool orig_recalled, typing_on, typing_off, member;
	char member_group[80];
	uint64_t group_msgs;
	int replies, reply_status;
	long msgs;
};

static void s_msg(void *ud, const struct mim_message *m)
{
	struct side *s = ud;

	if(m->outgoing) return;
	if(m->timeline[0] == 'g'){
		if(!(m->flags & MIM_FLAG_SYSTEM)) s->group_msgs++;
		return;
	}
	s->last_msg = *m;
	snprintf(s->last_body, sizeof(s->last_body), "%.*s", (int)m->len, (const char *)m->body);
	s->msgs++;
}

static void s_edit(void *ud, const struct mim_message *e, const struct mim_message *orig)
{
	struct side *s = ud;

	if(e->outgoing) return;
	s->edit_of = e->ref_seq;
	if(orig) snprintf(s->orig_after_edit, sizeof(s->orig_after_edit), "%.*s%s", (int)orig->len,
			(const char *)orig->body, orig->flags & MIM_FLAG_EDITED ? " (edited)" : "");
}

static void s_recall(void *ud, const struct mim_message *r, const struct mim_message *orig)
{
	struct side *s = ud;

	if(r->outgoing) return;
	s->recall_of = r->ref_seq;
	s->orig_recalled = orig && (orig->flags & MIM_FLAG_RECALLED) && orig->len == 0;
}

static void s_read(void *ud, const struct mim_read *r)
{
	struct side *s = ud;

	if(!strcmp(r->user, s->name)) return;
	printf("read %s %s %llu\n", r->timeline, r->user, (unsigned long long)r->seq);
	s->read_seq = r->seq;
}

static void s_typing(void *ud, const struct mim_typing *t)
{
	struct side *s = ud;

	printf("typing %s %s %d\n", t->timeline, t->user, t->typing);
	if(t->typing) s->typing_on = true;
	else s->typing_off = true;
}

static void s_member(void *ud, const char *group, bool member, uint64_t seq)
{
	struct side *s = ud;

	printf("member %s %s %d %llu\n", s->name, group, member, (unsigned long long)seq);
	s->member = member;
	snprintf(s->member_group, sizeof(s->member_group), "%s", group);
}

static void s_reply(void *ud, const struct mim_reply *r)
{
	struct side *s = ud;

	s->replies++;
	s->reply_status = r->status;
}

static struct side A = {.name = "alice"}, B = {.name = "bob"};

static void open_side(struct side *s, bool auto_ack)
{
	struct mim_options o;
	char id[64];
	int rc;

	snprintf(id, sizeof(id), "%s-check", s->name);
	base_opts(&o, s->name, id, NULL);
	o.auto_ack = auto_ack;
	o.userdata = s;
	o.cb.on_message = s_msg;
	o.cb.on_edit = s_edit;
	o.cb.on_recall = s_recall;
	o.cb.on_read = s_read;
	o.cb.on_typing = s_typing;
	o.cb.on_membership = s_member;
	o.cb.on_error = on_error;
	s->c = mim_new(&o, &rc);
	if(s->c == NULL) fail(mim_strerror(rc));
	mim_connect(s->c);
}

/* Runs both clients until cond() or the deadline. */
static void wait_for(bool (*cond)(void), const char *what)
{
	int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;

	while(!cond()){
		if(now_ms() > deadline) fail(what);
		mim_loop(A.c, 10);
		mim_loop(B.c, 10);
	}
	printf("ok %s\n", what);
	fflush(stdout);
}

static uint64_t sent_seq;
static int sent_status = -100;

static void on_sent(void *ud, const struct mim_receipt *r)
{
	(void)ud;
	sent_status = r->status;
	sent_seq = r->seq;
}

static bool both_online(void) { return mim_caught_up(A.c) && mim_caught_up(B.c); }
static bool got_hello(void) { return B.msgs == 1 && !strcmp(B.last_body, "hello") && sent_status == MIM_OK; }
static bool got_edit(void) { return B.edit_of == sent_seq && !strcmp(B.orig_after_edit, "hello!! (edited)"); }
static bool got_recall(void) { return B.recall_of == sent_seq && B.orig_recalled; }
static bool got_read(void) { return A.read_seq >= sent_seq; }
static bool got_typing_on(void) { return A.typing_on; }
static bool got_typing_off(void) { return A.typing_off; }
static bool group_made(void) { return A.replies == 1 && B.member && !strcmp(B.member_group, "team"); }
static bool group_msg(void) { return B.group_msgs == 1; }
static bool bob_left(void) { return !B.member && A.replies == 2; }

static int cmd_chat(void)
{
	const char *members[] = {"bob"};
	int maj, min, pat;

	if(mim_version(&maj, &min, &pat) != MOSQUITTO_IM_CLIENT_VERSION || maj != MOSQUITTO_IM_CLIENT_VERSION_MAJOR){
		fail("version");
	}
	open_side(&A, true);
	open_side(&B, false);      /* bob acks what he read himself: a chat UI */
	wait_for(both_online, "online");
	if(mim_send(A.c, "bob", "hello", 5, NULL, on_sent, NULL, NULL) != MIM_OK) fail("send");
	wait_for(got_hello, "message");
	if(mim_edit(A.c, "u/bob", sent_seq, "hello!!", 7, NULL, NULL) != MIM_OK) fail("edit");
	wait_for(got_edit, "edit");
	if(mim_recall(A.c, "u/bob", sent_seq, NULL, NULL) != MIM_OK) fail("recall");
	wait_for(got_recall, "recall");
	if(mim_ack(B.c, "u/bob", 0) != MIM_OK) fail("ack");
	wait_for(got_read, "read mark");
	if(mim_typing(B.c, "alice", true, NULL, NULL) != MIM_OK) fail("typing");
	wait_for(got_typing_on, "typing");
	if(mim_typing(B.c, "alice", false, NULL, NULL) != MIM_OK) fail("typing off");
	wait_for(got_typing_off, "stopped typing");
	if(mim_group(A.c, "create", "team", members, 1, s_reply, &A) != MIM_OK) fail("group create");
	wait_for(group_made, "membership");
	if(mim_send(A.c, "g/team", "hi team", 7, NULL, NULL, NULL, NULL) != MIM_OK) fail("group send");
	wait_for(group_msg, "group message");
	if(mim_group(A.c, "remove", "team", members, 1, s_reply, &A) != MIM_OK) fail("group remove");
	wait_for(bob_left, "membership removed");
	if(mim_timeline(B.c, 1) != NULL) fail("bob still follows the group");
	mim_destroy(A.c);
	mim_destroy(B.c);
	printf("done\n");
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd;
	int i;

	if(argc < 2) fail("usage: mim_check send|recv|chat [options]");
	cmd = argv[1];
	for(i = 2; i + 1 < argc; i += 2){
		const char *k = argv[i], *v = argv[i + 1];

		if(!strcmp(k, "-p")) port = atoi(v);
		else if(!strcmp(k, "-u")) user = v;
		else if(!strcmp(k, "-i")) client_id = v;
		else if(!strcmp(k, "-s")) state = v;
		else if(!strcmp(k, "-t")) to = v;
		else if(!strcmp(k, "-n")) n = atol(v);
		else if(!strcmp(k, "-T")) timeout_s = atoi(v);
		else if(!strcmp(k, "-R")) want_reset = atoi(v);
		else if(!strcmp(k, "-c")) chunk = atol(v);
		else if(!strcmp(k, "-r")) sscanf(v, "%d,%d", &recon_min, &recon_max);
		else fail("unknown option");
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if(!strcmp(cmd, "send")) return user && to && n > 0 ? cmd_send() : (fail("send: -u -t -n"), 1);
	if(!strcmp(cmd, "recv")) return user && n > 0 ? cmd_recv() : (fail("recv: -u -n"), 1);
	if(!strcmp(cmd, "chat")) return cmd_chat();
	fail("unknown command");
	return 1;
}
