/* The worker's code, unchanged, on the PostgreSQL store: two workers (two
 * nodes) sharing one database. Messages, repeats, syncs, acks and group
 * requests go to one node or the other; each answer must be what a single
 * store would give: seqs continue across nodes, a repeat on the other node
 * is a duplicate, a sync and an ack see what the other node wrote. */
#include <stdlib.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/config.h"
#include "base/limits.h"
#include "base/util.h"
#include "worker/internal.h"
#include "codec/record.h"
#include "store/pg/open.h"
#include "store/store.h"
#include "worker/job.h"
#include "tap.h"
#include "pg_harness.h"

static struct pg_server primary;
static char uri[256];
static struct im__metrics metrics;
static struct im__worker w1, w2;

static void setup(struct im__worker *w, const char *node)
{
	struct im__store_pg_options o = {.conninfo = uri, .node_id = node, .synchronous_commit = "on"};

	memset(w, 0, sizeof(*w));
	w->metrics = &metrics;
	w->btail = &w->bhead;
	CHECK_EQ(im_config__parse(&w->cfg, NULL, 0), MOSQ_ERR_SUCCESS);
	w->cfg.sync_max_frames = 10;
	CHECK_EQ(im_store__open_pg(&w->st, &o), MOSQ_ERR_SUCCESS);
}

static struct im__job *job(enum im_job_kind kind, size_t data_len, const char *user)
{
	struct im__job *j = im_job__new(kind, data_len, "client-1", kind == IM_JOB_SYNC ? "sync" : kind == IM_JOB_GROUP ? "group" : "receipt",
			"replies/x", NULL, 0);

	snprintf(j->user, sizeof(j->user), "%s", user);
	return j;
}

static struct im__job *message(const char *from, const char *to, const char *body, const char *cmid)
{
	struct im__rec r = {0};
	char own[IM_TL_MAX + 1];
	struct im__job *j;

	snprintf(own, sizeof(own), "u/%s", from);
	r.kind = IM_REC_MESSAGE;
	r.ts_ms = im_now_ms();
	r.sender = from;
	r.to = to;
	r.own = to[0] == 'u' ? own : "";
	r.cmid = cmid ? cmid : "";
	r.ctype = "";
	r.body = body;
	r.body_len = (uint32_t)strlen(body);
	j = job(IM_JOB_MSG, im_rec__size(&r), from);
	im_rec__encode(j->data, &r);
	return j;
}

/* Runs one job in a batch of its own, as run_batch does (minus retries). */
static int run(struct im__worker *w, struct im__job *j, int (*fn)(struct im__worker *, struct im__job *))
{
	int rc = w->st.ops->begin(&w->st);

	if(rc == MOSQ_ERR_SUCCESS) rc = fn(w, j);
	if(rc == MOSQ_ERR_SUCCESS) rc = w->st.ops->commit(&w->st, 0);
	else w->st.ops->rollback(&w->st);
	im_job__free(j);
	return rc;
}

/* The reply of the last run (its payload copied out), dropping the rest. */
static size_t reply(struct im__worker *w, uint8_t *out, size_t cap, int *frames)
{
	struct im__done *d = w->bhead, *n;
	size_t len = 0;

	*frames = 0;
	for(; d; d = n){
		n = d->next;
		if(d->kind == IM_DONE_REPLY && d->len <= cap){
			memcpy(out, d->payload, d->len);
			len = d->len;
		}
		if(d->kind == IM_DONE_FRAME) (*frames)++;
		free(d);
	}
	w->bhead = NULL;
	w->btail = &w->bhead;
	return len;
}

static Im__V1__Receipt *send_msg(struct im__worker *w, const char *from, const char *to, const char *body, const char *cmid,
		int *frames)
{
	uint8_t buf[4096];
	size_t n;

	CHECK_EQ(run(w, message(from, to, body, cmid), im_work__message), MOSQ_ERR_SUCCESS);
	n = reply(w, buf, sizeof(buf), frames);
	return n ? im__v1__receipt__unpack(NULL, n, buf) : NULL;
}

static Im__V1__SyncBatch *sync_tl(struct im__worker *w, const char *user, const char *tl)
{
	struct im__job *j = job(IM_JOB_SYNC, 0, user);
	uint8_t buf[65536];
	size_t n;
	int frames;

	snprintf(j->u.sync.timeline, sizeof(j->u.sync.timeline), "%s", tl);
	j->u.sync.has_after = true;
	CHECK_EQ(run(w, j, im_work__sync), MOSQ_ERR_SUCCESS);
	n = reply(w, buf, sizeof(buf), &frames);
	return n ? im__v1__sync_batch__unpack(NULL, n, buf) : NULL;
}

static Im__V1__AckResponse *ack(struct im__worker *w, const char *user, const char *tl, uint64_t seq)
{
	struct im__job *j = job(IM_JOB_ACK, 0, user);
	uint8_t buf[4096];
	size_t n;
	int frames;

	snprintf(j->u.ack.timeline, sizeof(j->u.ack.timeline), "%s", tl);
	j->u.ack.seq = seq;
	CHECK_EQ(run(w, j, im_work__ack), MOSQ_ERR_SUCCESS);
	n = reply(w, buf, sizeof(buf), &frames);
	return n ? im__v1__ack_response__unpack(NULL, n, buf) : NULL;
}

static Im__V1__GroupResponse *group(struct im__worker *w, const char *user, const char *op, const char *g, const char *member)
{
	struct im__job *j = job(IM_JOB_GROUP, IM_NAME_MAX + 1, user);
	uint8_t buf[4096];
	size_t n;
	int frames;

	snprintf(j->u.group.op, sizeof(j->u.group.op), "%s", op);
	snprintf(j->u.group.group, sizeof(j->u.group.group), "%s", g);
	j->u.group.members = (char (*)[IM_NAME_MAX + 1])(void *)j->data;
	if(member){
		snprintf(j->u.group.members[0], IM_NAME_MAX + 1, "%s", member);
		j->u.group.n = 1;
	}
	CHECK_EQ(run(w, j, im_work__group), MOSQ_ERR_SUCCESS);
	n = reply(w, buf, sizeof(buf), &frames);
	return n ? im__v1__group_response__unpack(NULL, n, buf) : NULL;
}

static void two_workers(void)
{
	Im__V1__Receipt *r;
	Im__V1__SyncBatch *sb;
	Im__V1__AckResponse *ar;
	Im__V1__GroupResponse *gr;
	int frames;

	CHECK_EQ(w1.st.store_id, w2.st.store_id);
	/* Messages on both nodes: one sequence per timeline. */
	r = send_msg(&w1, "alice", "u/bob", "hi bob", "c1", &frames);
	CHECK(r && r->status == IM__V1__STATUS__OK && r->seq == 1 && r->own_seq == 1 && !r->duplicate);
	CHECK_EQ(frames, 2);
	im__v1__receipt__free_unpacked(r, NULL);
	r = send_msg(&w2, "bob", "u/alice", "hi alice", "c1", &frames);
	CHECK(r && r->seq == 2 && r->own_seq == 2 && !r->duplicate); /* u/alice: 1 was alice's copy */
	im__v1__receipt__free_unpacked(r, NULL);
	/* A repeat through the other node: the original's seq, no frames. */
	r = send_msg(&w2, "alice", "u/bob", "hi bob", "c1", &frames);
	CHECK(r && r->duplicate && r->seq == 1 && r->own_seq == 1 && !strcmp(r->timeline, "u/bob"));
	CHECK_EQ(frames, 0);
	im__v1__receipt__free_unpacked(r, NULL);
	r = send_msg(&w1, "alice", "u/bob", "again", NULL, &frames);
	CHECK(r && r->seq == 3 && r->own_seq == 3);
	im__v1__receipt__free_unpacked(r, NULL);

	/* Syncs and acks on one node see what the other wrote. */
	sb = sync_tl(&w2, "bob", "u/bob");
	CHECK(sb && sb->status == IM__V1__STATUS__OK && sb->n_frames == 3 && sb->head_seq == 3 && sb->store_id == w1.st.store_id);
	im__v1__sync_batch__free_unpacked(sb, NULL);
	sb = sync_tl(&w1, "alice", "u/alice");
	CHECK(sb && sb->n_frames == 3 && sb->head_seq == 3);
	im__v1__sync_batch__free_unpacked(sb, NULL);
	ar = ack(&w1, "bob", "u/bob", 3);   /* w1's last write to u/bob was seq 3 */
	CHECK(ar && ar->status == IM__V1__STATUS__OK && ar->cursor == 3 && ar->head_seq == 3);
	im__v1__ack_response__free_unpacked(ar, NULL);
	r = send_msg(&w2, "carol", "u/bob", "from carol", NULL, &frames);
	CHECK(r && r->seq == 4);
	im__v1__receipt__free_unpacked(r, NULL);
	ar = ack(&w1, "bob", "u/bob", 4);   /* written by w2: w1 must not call it "beyond the head" */
	CHECK(ar && ar->status == IM__V1__STATUS__OK && ar->cursor == 4 && ar->head_seq == 4);
	im__v1__ack_response__free_unpacked(ar, NULL);
	ar = ack(&w2, "bob", "u/bob", 2);
	CHECK(ar && ar->status == IM__V1__STATUS__OK && ar->cursor == 4); /* never back */
	im__v1__ack_response__free_unpacked(ar, NULL);
	ar = ack(&w2, "bob", "u/bob", 9);
	CHECK(ar && ar->status == IM__V1__STATUS__BAD_REQUEST && ar->head_seq == 4);
	im__v1__ack_response__free_unpacked(ar, NULL);

	/* Groups: made on one node, used on the other. */
	gr = group(&w1, "alice", "create", "team", "bob");
	CHECK(gr && gr->status == IM__V1__STATUS__OK && gr->seq == 1);
	im__v1__group_response__free_unpacked(gr, NULL);
	gr = group(&w2, "carol", "create", "team", NULL);
	CHECK(gr && gr->status == IM__V1__STATUS__CONFLICT);
	im__v1__group_response__free_unpacked(gr, NULL);
	r = send_msg(&w2, "bob", "g/team", "hello team", "g1", &frames);
	CHECK(r && r->status == IM__V1__STATUS__OK && r->seq == 2);
	CHECK_EQ(frames, 1);
	im__v1__receipt__free_unpacked(r, NULL);
	r = send_msg(&w2, "carol", "g/team", "let me in", NULL, &frames);
	CHECK(r && r->status == IM__V1__STATUS__FORBIDDEN);
	im__v1__receipt__free_unpacked(r, NULL);
	gr = group(&w2, "bob", "list", "", NULL);
	CHECK(gr && gr->status == IM__V1__STATUS__OK && gr->n_groups == 1);
	if(gr && gr->n_groups == 1) CHECK(!strcmp(gr->groups[0]->name, "team") && gr->groups[0]->head_seq == 2);
	im__v1__group_response__free_unpacked(gr, NULL);
	gr = group(&w1, "alice", "info", "team", NULL);
	CHECK(gr && gr->status == IM__V1__STATUS__OK && gr->n_members == 2 && gr->head_seq == 2);
	im__v1__group_response__free_unpacked(gr, NULL);
	/* w1 removes bob; w2's cache is dropped (cluster invalidation's job). */
	gr = group(&w1, "alice", "remove", "team", "bob");
	CHECK(gr && gr->status == IM__V1__STATUS__OK && gr->seq == 3);
	im__v1__group_response__free_unpacked(gr, NULL);
	im_store__forget_group(&w2.st, "team", 4);
	r = send_msg(&w2, "bob", "g/team", "still here?", NULL, &frames);
	CHECK(r && r->status == IM__V1__STATUS__FORBIDDEN);
	im__v1__receipt__free_unpacked(r, NULL);
	sb = sync_tl(&w2, "alice", "g/team");
	CHECK(sb && sb->n_frames == 3 && sb->head_seq == 3);
	im__v1__sync_batch__free_unpacked(sb, NULL);
}

static void cleanup(void)
{
	pgh_stop(&primary, "immediate");
	pgh_remove_root();
}

static void on_signal(int sig)
{
	cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if(!pgh_setup()){
		printf("PostgreSQL server programs not found (IM_PG_BIN): skipped\n");
		return 0;
	}
	atexit(cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGSEGV, on_signal);
	signal(SIGABRT, on_signal);
	if(!pgh_init(&primary, "primary")){
		fprintf(stderr, "could not start PostgreSQL (see %s/cmd.log)\n", pgh_root);
		return 1;
	}
	pgh_uri(&primary, uri, sizeof(uri));
	setup(&w1, "w1");
	setup(&w2, "w2");
	two_workers();
	im_store__close(&w1.st);
	im_store__close(&w2.st);
	im_config__free(&w1.cfg);
	im_config__free(&w2.cfg);
	return TAP_DONE();
}
