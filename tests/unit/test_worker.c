/* The worker's request paths under allocation failure (failmalloc style):
 * every allocation of a sync, a group request and a message with a Receipt
 * is failed in turn. Each attempt must end in a clear answer (the right
 * result, or a refusal that says why) or no answer at all, and never in a
 * wrong one: above all never an OK sync batch that claims more and holds
 * nothing, which a client would ask again for ever (issue #11, finding 10). */
#include <stdlib.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/config.h"
#include "base/limits.h"
#include "base/util.h"
#include "worker/internal.h"
#include "codec/record.h"
#include "store/sqlite/open.h"
#include "store/store.h"
#include "worker/job.h"
#include "tap.h"

static char path[256];
static long fail_at = -1, calls;

static void *f_malloc(size_t n) { return ++calls == fail_at ? NULL : malloc(n); }
static void *f_calloc(size_t a, size_t b) { return ++calls == fail_at ? NULL : calloc(a, b); }
static void *f_realloc(void *p, size_t n) { return ++calls == fail_at ? NULL : realloc(p, n); }

static void failing(long n)
{
	calls = 0;
	fail_at = n;
	im_malloc = f_malloc;
	im_calloc = f_calloc;
	im_realloc = f_realloc;
}

static void healthy(void)
{
	fail_at = -1;
	im_malloc = malloc;
	im_calloc = calloc;
	im_realloc = realloc;
}

static struct im__metrics metrics;
static struct im__worker w;

static void setup(void)
{
	struct im__store_options o = {.path = path, .synchronous = 1, .busy_timeout_ms = 100, .page_size = 1024};

	memset(&w, 0, sizeof(w));
	w.metrics = &metrics;
	w.btail = &w.bhead;
	CHECK_EQ(im_config__parse(&w.cfg, NULL, 0), MOSQ_ERR_SUCCESS);
	w.cfg.sync_max_frames = 10;
	CHECK_EQ(im_store__open_sqlite(&w.st, &o), MOSQ_ERR_SUCCESS);
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
	r.cmid = cmid;
	r.ctype = "";
	r.body = body;
	r.body_len = (uint32_t)strlen(body);
	j = job(IM_JOB_MSG, im_rec__size(&r), from);
	im_rec__encode(j->data, &r);
	return j;
}

/* Runs one job in a transaction of its own; returns the replies made. */
static int run(struct im__job *j, int (*fn)(struct im__worker *, struct im__job *))
{
	int rc;

	rc = w.st.ops->begin(&w.st);
	if(rc == MOSQ_ERR_SUCCESS) rc = fn(&w, j);
	if(rc == MOSQ_ERR_SUCCESS) rc = w.st.ops->commit(&w.st, 0);
	else w.st.ops->rollback(&w.st);
	im_job__free(j);
	return rc;
}

/* The completions of the last run, then forgets them. */
static struct im__done *take(void)
{
	struct im__done *d = w.bhead;

	w.bhead = NULL;
	w.btail = &w.bhead;
	return d;
}

static void drop(struct im__done *d)
{
	struct im__done *n;

	for(; d; d = n){
		n = d->next;
		free(d);
	}
}

static void fill(void)
{
	char b[32];
	int i;

	for(i = 1; i <= 25; i++){
		snprintf(b, sizeof(b), "body %d", i);
		CHECK_EQ(run(message("alice", "u/bob", b, ""), im_work__message), MOSQ_ERR_SUCCESS);
	}
	drop(take());
}

static void sync_under_failure(void)
{
	long n;
	int ok = 0, refused = 0, silent = 0;
	struct im__done *d, *all;
	Im__V1__SyncBatch *sb;

	for(n = 1; ; n++){
		struct im__job *j = job(IM_JOB_SYNC, 0, "bob");
		snprintf(j->u.sync.timeline, sizeof(j->u.sync.timeline), "u/bob");
		j->u.sync.has_after = true;
		j->to.counted = true;                    /* the broker counts it until its reply (clients.c) */
		j->to.epoch = 7;
		failing(n);
		if(run(j, im_work__sync) != MOSQ_ERR_SUCCESS) refused++; /* answered by the batch layer */
		healthy();
		all = take();
		for(d = all; d && d->kind != IM_DONE_REPLY; d = d->next);
		if(d == NULL){
			silent++;
		}else{
			/* Whatever the answer, it ends the request it answers. */
			CHECK(d->counted && d->sync_reply && d->epoch == 7 && d->user && !strcmp(d->user, "bob"));
			sb = im__v1__sync_batch__unpack(NULL, d->len, d->payload);
			CHECK(sb != NULL);
			if(sb && sb->status == IM__V1__STATUS__OK){
				CHECK_EQ(sb->n_frames, 10);      /* a whole batch, never an empty "more" */
				CHECK(sb->has_more);
				ok++;
			}else if(sb){
				CHECK_EQ(sb->status, IM__V1__STATUS__INTERNAL);
				CHECK(sb->reason && sb->reason[0]);
				refused++;
			}
			im__v1__sync_batch__free_unpacked(sb, NULL);
		}
		drop(all);
		if(calls < n) break;                     /* every allocation has been failed once */
	}
	CHECK(n > 3);
	CHECK(ok >= 1 && refused >= 1);
	printf("sync: %ld allocations, %d ok, %d refused, %d unanswered\n", n - 1, ok, refused, silent);
}

static void group_under_failure(void)
{
	const char *ops[] = {"create", "list", "info", "add"};
	long n;
	size_t k;
	char name[32];
	int answers = 0;
	struct im__done *d, *all;
	Im__V1__GroupResponse *gr;

	for(k = 0; k < 4; k++){
		for(n = 1; ; n++){
			struct im__job *j = job(IM_JOB_GROUP, 2 * (IM_NAME_MAX + 1), "alice");
			snprintf(name, sizeof(name), "g%ld", k == 0 ? n : 0);
			snprintf(j->u.group.op, sizeof(j->u.group.op), "%s", ops[k]);
			snprintf(j->u.group.group, sizeof(j->u.group.group), "%s", name);
			j->u.group.members = (char (*)[IM_NAME_MAX + 1])(void *)j->data;
			snprintf(j->u.group.members[0], IM_NAME_MAX + 1, "bob");
			snprintf(j->u.group.members[1], IM_NAME_MAX + 1, "carol%ld", n);
			j->u.group.n = k == 3 ? 2 : 1;
			if(k == 0 && n == 1){
				/* g0 exists for list/info/add. */
				struct im__job *c = job(IM_JOB_GROUP, IM_NAME_MAX + 1, "alice");
				snprintf(c->u.group.op, sizeof(c->u.group.op), "create");
				snprintf(c->u.group.group, sizeof(c->u.group.group), "g0");
				CHECK_EQ(run(c, im_work__group), MOSQ_ERR_SUCCESS);
				drop(take());
			}
			failing(n);
			/* A failed allocation inside the store's caches reads as a
			 * store failure: the batch is rolled back and its requests
			 * answered "store failure" (worker.c). Also a clear answer. */
			if(run(j, im_work__group) != MOSQ_ERR_SUCCESS) answers++;
			healthy();
			all = take();
			for(d = all; d; d = d->next){
				if(d->kind != IM_DONE_REPLY) continue;
				gr = im__v1__group_response__unpack(NULL, d->len, d->payload);
				CHECK(gr != NULL);
				if(gr){
					CHECK(gr->status == IM__V1__STATUS__OK || (gr->status == IM__V1__STATUS__INTERNAL && gr->reason));
					if(gr->status == IM__V1__STATUS__OK && !strcmp(ops[k], "list")) CHECK(gr->n_groups >= 1);
					answers++;
				}
				im__v1__group_response__free_unpacked(gr, NULL);
			}
			drop(all);
			if(calls < n) break;
		}
	}
	CHECK(answers > 4);
}

static void receipt_under_failure(void)
{
	long n;
	char cmid[32];
	struct im__done *d, *all;
	Im__V1__Receipt *r;
	int receipts = 0;

	for(n = 1; ; n++){
		struct im__job *j;

		snprintf(cmid, sizeof(cmid), "cm-%ld", n);
		j = message("carol", "u/dave", "hello dave", cmid);
		failing(n);
		run(j, im_work__message);
		healthy();
		all = take();
		for(d = all; d; d = d->next){
			if(d->kind != IM_DONE_REPLY) continue;
			r = im__v1__receipt__unpack(NULL, d->len, d->payload);
			CHECK(r && r->status == IM__V1__STATUS__OK && r->seq > 0 && !r->duplicate);
			im__v1__receipt__free_unpacked(r, NULL);
			receipts++;
		}
		drop(all);
		if(calls < n) break;
	}
	CHECK(receipts >= 1);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char p2[300];

	snprintf(path, sizeof(path), "%s/im-test-worker-%d.db", tmp, (int)getpid());
	setup();
	fill();
	sync_under_failure();
	group_under_failure();
	receipt_under_failure();
	im_store__close(&w.st);
	im_config__free(&w.cfg);
	unlink(path);
	snprintf(p2, sizeof(p2), "%s-wal", path); unlink(p2);
	snprintf(p2, sizeof(p2), "%s-shm", path); unlink(p2);
	return TAP_DONE();
}
