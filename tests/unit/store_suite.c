/* The store suite (store_suite.h): seq allocation and the sender's copy,
 * dedup by (sender, cmid), batches rolled back, reopen continuity, ranges,
 * cursors, retention, encryption at rest, groups, presence contacts, the
 * store's identity, and the conversation operations. Each test starts on
 * a fresh store of the backend under test. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/crypt.h"
#include "base/defs.h"
#include "base/map.h"
#include "base/util.h"
#include "store/store.h"
#include "store_suite.h"
#include "tap.h"

enum { SYSTEM = 1, COMPRESSED = 2, EDIT = 4, EDITED = 16, RECALLED = 32 }; /* proto/im.proto's flags */

static const struct store_backend *be;

/* ---- the seam, one call each ---- */

struct im__tl *timeline(struct im__store *st, const char *name, bool create)
{
	bool err;

	return st->ops->timeline(st, name, strlen(name), create, &err);
}

struct im__msg msg(const char *from, const char *to, const char *cmid, const char *body)
{
	struct im__msg m = {0};

	m.ts_ms = im_now_ms();
	m.sender = from;
	m.cmid = cmid;
	m.to = to;
	m.body = body;
	m.body_len = strlen(body);
	return m;
}

/* The end of a one-operation batch. */
static int finish(struct im__store *st, int rc)
{
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

int append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m, struct im__appended *a)
{
	int rc = st->ops->begin(st);

	return finish(st, rc == MOSQ_ERR_SUCCESS ? st->ops->append(st, to, own, m, a) : rc);
}

int cursor_set(struct im__store *st, struct im__tl *tl, const char *u, const char *c, uint64_t seq, uint64_t *now)
{
	int rc = st->ops->begin(st);

	return finish(st, rc == MOSQ_ERR_SUCCESS ? st->ops->cursor_set(st, tl, u, c, seq, now) : rc);
}

int change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, uint64_t *seq)
{
	char tln[IM_TL_MAX + 1], body[64];
	struct im__tl *tl;
	struct im__msg m;
	int rc;

	snprintf(tln, sizeof(tln), "g/%s", group);
	snprintf(body, sizeof(body), "{\"event\":%d}", (int)op);
	rc = st->ops->begin(st);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	tl = timeline(st, tln, true);
	m = msg(actor, tln, NULL, body);
	m.flags = SYSTEM;
	m.content_type = "application/json";
	return finish(st, tl ? st->ops->group_change(st, op, group, actor, users, n, tl, &m, seq) : MOSQ_ERR_UNKNOWN);
}

int note(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts, const char *sender,
		const char *preview, int unread_add)
{
	int rc = st->ops->begin(st);

	return finish(st, rc == MOSQ_ERR_SUCCESS ? st->ops->note_last(st, owner, peer, seq, ts, sender, 0, preview, unread_add) : rc);
}

enum im_row name_row(void *ctx, const char *name)
{
	struct names *n = ctx;

	if(n->n < 16) snprintf(n->v[n->n++], IM_NAME_MAX + 1, "%s", name);
	return IM_ROW_NEXT;
}

int read_mark(struct im__store *st, const char *tl, const char *user, uint64_t seq, uint64_t *before, uint64_t *after,
		struct names *peers)
{
	struct im__tl *t;
	int rc = st->ops->begin(st);

	t = timeline(st, tl, false);
	if(rc == MOSQ_ERR_SUCCESS) rc = t ? st->ops->read_mark(st, t, user, seq, before, after, name_row, peers) : MOSQ_ERR_UNKNOWN;
	return finish(st, rc);
}

static int amend(struct im__store *st, const char *tl, uint64_t seq, const char *body, uint32_t flags)
{
	struct im__tl *t = timeline(st, tl, false);
	int rc = st->ops->begin(st);

	if(rc == MOSQ_ERR_SUCCESS) rc = t ? st->ops->amend(st, t, seq, body, body ? strlen(body) : 0, 0, flags) : MOSQ_ERR_UNKNOWN;
	return finish(st, rc);
}

enum im_row collect_row(void *ctx, const struct im__msg *m)
{
	struct collect *c = ctx;

	if(c->stop_after && c->n == c->stop_after) return IM_ROW_STOP;
	if(c->n < 64){
		c->seqs[c->n] = m->seq;
		c->refs[c->n] = m->ref_seq;
		snprintf(c->bodies[c->n], sizeof(c->bodies[0]), "%.*s", (int)m->body_len, (const char *)m->body);
	}
	c->n++;
	return IM_ROW_NEXT;
}

static int range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit, struct collect *c, bool *more)
{
	memset(c, 0, sizeof(*c));
	return st->ops->range(st, tl, after, limit, im_now_ms(), collect_row, c, more);
}

/* ---- reading back ---- */

struct whole { uint64_t next; bool ok; };

static enum im_row whole_row(void *ctx, const struct im__msg *m)
{
	struct whole *w = ctx;

	w->ok = w->ok && m->seq == w->next++;
	return IM_ROW_NEXT;
}

/* Every stored seq of a timeline is first..head, once each, as a sync
 * reads them (now 0: nothing counts as expired). */
static bool seqs_whole(struct im__store *st, const char *name)
{
	struct im__tl *t = timeline(st, name, false);
	struct whole w = {0, true};
	bool more;

	if(t == NULL) return false;
	w.next = t->first;
	if(st->ops->range(st, t, 0, 100000, 0, whole_row, &w, &more) != MOSQ_ERR_SUCCESS || more) return false;
	if(!w.ok || w.next != t->head + 1) fprintf(stderr, "%s: first %llu head %llu, rows up to %llu%s\n", name,
			(unsigned long long)t->first, (unsigned long long)t->head, (unsigned long long)w.next - 1, w.ok ? "" : " with a gap");
	return w.ok && w.next == t->head + 1;
}

static long long peek(struct im__store *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static long long peek(struct im__store *st, const char *fmt, ...)
{
	char q[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	return be->sql(st, q);
}

static bool reopen(struct im__store *st)
{
	im_store__close(st);
	if(be->open(st) == MOSQ_ERR_SUCCESS) return true;
	CHECK(!"the store opened again");
	return false;
}

/* ---- tests ---- */

static void append_and_dedup(struct im__store *st)
{
	struct im__tl *bob, *alice;
	struct im__msg m;
	struct im__appended d;
	int i;

	bob = timeline(st, "u/bob", true);
	alice = timeline(st, "u/alice", true);
	CHECK(bob && alice && bob != alice);
	CHECK(timeline(st, "u/bob", false) == bob); /* one entry per timeline */
	CHECK(timeline(st, "u/nobody", false) == NULL);
	if(!bob || !alice) return;
	for(i = 1; i <= 3; i++){
		char body[8];
		snprintf(body, sizeof(body), "m%d", i);
		m = msg("alice", "u/bob", NULL, body);
		CHECK_EQ(append(st, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
		CHECK_EQ(d.seq, i);
		CHECK_EQ(d.own_seq, i);
		CHECK(!d.duplicate);
		CHECK_STR(d.timeline, "u/bob");
	}
	m = msg("alice", "u/bob", "c1", "with cmid");
	CHECK_EQ(append(st, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 4);
	CHECK(!d.duplicate);
	/* A repeat: the original's values. */
	m = msg("alice", "u/bob", "c1", "again");
	CHECK_EQ(append(st, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate);
	CHECK_EQ(d.seq, 4);
	CHECK_EQ(d.own_seq, 4);
	CHECK_STR(d.timeline, "u/bob");
	/* The same cmid to someone else is the same message. */
	m = msg("alice", "u/carol", "c1", "elsewhere");
	CHECK_EQ(append(st, timeline(st, "u/carol", true), alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate);
	CHECK_STR(d.timeline, "u/bob");
	CHECK_EQ(d.seq, 4);
	CHECK_EQ(timeline(st, "u/carol", false)->head, 0);
	CHECK_EQ(timeline(st, "u/bob", false)->head, 4); /* the repeats took no seq */
	/* Another sender may reuse the cmid. */
	m = msg("carol", "u/bob", "c1", "from carol");
	CHECK_EQ(append(st, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate);
	CHECK_EQ(d.seq, 5);
	CHECK_EQ(d.own_seq, 0);
	CHECK_EQ(timeline(st, "u/alice", false)->head, 4);
	/* A repeat inside one batch sees the first copy. */
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	m = msg("dave", "u/bob", "x1", "once");
	CHECK_EQ(st->ops->append(st, bob, timeline(st, "u/dave", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 6);
	CHECK(timeline(st, "u/bob", false) == bob && bob->head == 6); /* written by this batch: exact */
	CHECK_EQ(st->ops->append(st, bob, timeline(st, "u/dave", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 6 && d.own_seq == 1);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	/* A rolled-back batch gives its seqs back. */
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	m = msg("alice", "u/bob", NULL, "rolled back");
	CHECK_EQ(st->ops->append(st, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 7);
	st->ops->rollback(st);
	CHECK(bob->stale && alice->stale);
	/* Reloaded by the next lookup, which every batch makes (the worker's
	 * records name their timelines). */
	CHECK_EQ(timeline(st, "u/bob", false)->head, 6);
	CHECK(!bob->stale);
	CHECK(timeline(st, "u/alice", false) == alice && !alice->stale && alice->head == 4);
	m = msg("alice", "u/bob", NULL, "m7");
	CHECK_EQ(append(st, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 7);
	CHECK_EQ(d.own_seq, 5);
	CHECK(seqs_whole(st, "u/bob") && seqs_whole(st, "u/alice") && seqs_whole(st, "u/carol") && seqs_whole(st, "u/dave"));
}

/* A timeline made inside a batch that rolls back: gone with the batch, or
 * (made apart) left empty. Either way nothing of the batch is stored and
 * the next batch counts from 1. */
static void timeline_rollback(struct im__store *st)
{
	struct im__tl *t;
	struct im__msg m = msg("gil", "u/ghost", NULL, "boo");
	struct im__appended d = {0};

	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	t = timeline(st, "u/ghost", true);
	CHECK(t != NULL);
	CHECK_EQ(t ? st->ops->append(st, t, timeline(st, "u/gil", true), &m, &d) : MOSQ_ERR_UNKNOWN, MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 1 && d.own_seq == 1);
	st->ops->rollback(st);
	t = timeline(st, "u/ghost", false);
	if(be->tl_create_commits) CHECK(t != NULL && t->head == 0);
	else CHECK(t == NULL);
	t = timeline(st, "u/ghost", true);
	CHECK(t != NULL);
	if(t == NULL) return;
	CHECK_EQ(t->head, 0);
	CHECK_EQ(append(st, t, timeline(st, "u/gil", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 1 && d.own_seq == 1);
	if(!reopen(st)) return;
	CHECK(seqs_whole(st, "u/ghost") && seqs_whole(st, "u/gil"));
	CHECK_EQ(timeline(st, "u/ghost", false)->head, 1);
}

static void reopen_and_range(struct im__store *st)
{
	struct im__tl *bob = timeline(st, "u/bob", true);
	struct collect c;
	struct im__msg m;
	struct im__appended d;
	char body[8];
	bool more;
	int i;

	for(i = 1; i <= 5 && bob; i++){
		snprintf(body, sizeof(body), "m%d", i);
		m = msg("alice", "u/bob", NULL, body);
		CHECK_EQ(append(st, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	}
	if(!reopen(st)) return;
	bob = timeline(st, "u/bob", false);
	CHECK(bob != NULL);
	if(bob == NULL) return;
	CHECK_EQ(bob->head, 5); /* survives a reopen */
	CHECK_EQ(bob->first, 1);
	m = msg("alice", "u/bob", NULL, "after reopen");
	CHECK_EQ(append(st, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 6);
	CHECK_EQ(range(st, bob, 2, 2, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK_EQ(c.seqs[0], 3);
	CHECK_EQ(c.seqs[1], 4);
	CHECK_STR(c.bodies[1], "m4");
	CHECK(more);
	CHECK_EQ(range(st, bob, 4, 100, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK_STR(c.bodies[1], "after reopen");
	CHECK(!more);
	/* A callback that stops early (byte budget) reports more. */
	memset(&c, 0, sizeof(c));
	c.stop_after = 1;
	CHECK_EQ(st->ops->range(st, bob, 0, 100, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK(more);
	/* Expired rows are skipped. */
	m = msg("alice", "u/bob", NULL, "expiring");
	m.expires_ms = m.ts_ms + 1000;
	CHECK_EQ(append(st, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(st->ops->range(st, bob, 6, 100, m.ts_ms, collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(st->ops->range(st, bob, 6, 100, m.ts_ms + 1000, collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
}

static void cursors(struct im__store *st)
{
	struct im__tl *bob = timeline(st, "u/bob", true);
	uint64_t v = 99;

	CHECK_EQ(st->ops->cursor_get(st, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 0);
	v = 99;
	CHECK_EQ(st->ops->cursor_get(st, NULL, "bob", "phone", &v), MOSQ_ERR_SUCCESS); /* no timeline yet */
	CHECK_EQ(v, 0);
	CHECK_EQ(cursor_set(st, bob, "bob", "phone", 3, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3);
	CHECK_EQ(cursor_set(st, bob, "bob", "phone", 2, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3); /* never moves back */
	CHECK_EQ(cursor_set(st, bob, "bob", "phone", 5, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5);
	CHECK_EQ(cursor_set(st, bob, "bob", "laptop", 1, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 1);
	CHECK_EQ(st->ops->cursor_get(st, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5); /* devices are independent */
	if(!reopen(st)) return;
	CHECK_EQ(st->ops->cursor_get(st, timeline(st, "u/bob", false), "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5);
}

/* Sweeps to the end; returns the rows deleted. */
static int sweep(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget)
{
	int64_t cursor = 0;
	bool done = false;
	int rows, total = 0, steps = 0;

	do{
		rows = st->ops->trim_step(st, cutoff_ms, keep, budget, &cursor, &done);
		CHECK(rows >= 0 && rows <= (int)budget);
		total += rows;
	}while(!done && ++steps < 50);
	return total;
}

static void retention(struct im__store *st)
{
	struct im__tl *t = timeline(st, "u/ret", true);
	struct im__msg m;
	struct im__appended d;
	struct collect c;
	bool more;
	int i;

	for(i = 0; i < 30 && t; i++){
		m = msg("alice", "u/ret", NULL, "r");
		m.ts_ms = 1000 + i; /* ancient */
		CHECK_EQ(append(st, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	}
	if(t == NULL) return;
	/* Count limit: keep 10, 7 rows per step at most. */
	CHECK_EQ(sweep(st, 0, 10, 7), 20);
	CHECK_EQ(timeline(st, "u/ret", false)->first, 21);
	CHECK_EQ(t->head, 30);
	CHECK_EQ(range(st, t, 0, 100, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 10);
	CHECK_EQ(c.seqs[0], 21);
	/* Age limit: everything is older than the cutoff; head stays. */
	CHECK_EQ(sweep(st, 5000, 0, 1000), 10);
	CHECK_EQ(timeline(st, "u/ret", false)->first, 31);
	m = msg("alice", "u/ret", NULL, "after trim");
	CHECK_EQ(append(st, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 31); /* the sequence never restarts */
	CHECK(seqs_whole(st, "u/ret"));
	/* first persists. */
	if(!reopen(st)) return;
	t = timeline(st, "u/ret", false);
	CHECK(t && t->first == 31 && t->head == 31);
}

static void encryption(struct im__store *st)
{
	struct im__crypt crypt;
	struct im__tl *t;
	struct im__msg m;
	struct im__appended d;
	struct collect c;
	char keypath[300], find[64];
	const char *q;
	FILE *f;
	bool more;

	snprintf(keypath, sizeof(keypath), "%s/im-suite-keys-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
	f = fopen(keypath, "w");
	fprintf(f, "# old key\n1 %s\n2 %s  # current\n",
			"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
			"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100");
	fclose(f);
	CHECK_EQ(im_crypt__load(&crypt, keypath), MOSQ_ERR_SUCCESS);
	CHECK_EQ(crypt.n, 2);
	st->crypt = &crypt;
	t = timeline(st, "u/sec", true);
	m = msg("alice", "u/sec", "sealed-1", "TOP-SECRET-BODY");
	CHECK_EQ(append(st, t, timeline(st, "u/alice", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 1);
	CHECK_EQ(append(st, t, timeline(st, "u/alice", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 1);
	CHECK_EQ(range(st, t, 0, 10, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK_STR(c.bodies[0], "TOP-SECRET-BODY");
	CHECK_EQ(range(st, timeline(st, "u/alice", false), 0, 10, &c, &more), MOSQ_ERR_SUCCESS); /* the copy, sealed for its seq */
	CHECK_STR(c.bodies[0], "TOP-SECRET-BODY");
	/* At rest: sealed with key 2, no plaintext. */
	CHECK_EQ(peek(st, "SELECT key_id FROM messages WHERE tl = %lld AND seq = 1", (long long)t->id), 2);
	q = strchr(be->body_find, '?');
	snprintf(find, sizeof(find), "%.*s'TOP-SECRET'%s", (int)(q - be->body_find), be->body_find, q + 1);
	CHECK_EQ(peek(st, "SELECT %s FROM messages WHERE tl = %lld AND seq = 1", find, (long long)t->id), 0);
	/* Without the keys, the row cannot be read: an error, not garbage. */
	st->crypt = NULL;
	CHECK(range(st, t, 0, 10, &c, &more) != MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
	st->crypt = &crypt;
	/* A row moved to another seq no longer opens. */
	peek(st, "UPDATE messages SET seq = 7 WHERE tl = %lld AND seq = 1", (long long)t->id);
	CHECK(range(st, t, 0, 10, &c, &more) != MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
	st->crypt = NULL;
	im_crypt__free(&crypt);
	/* Bad key files are refused. */
	f = fopen(keypath, "w");
	fprintf(f, "1 not-hex\n");
	fclose(f);
	CHECK(im_crypt__load(&crypt, keypath) != MOSQ_ERR_SUCCESS);
	unlink(keypath);
}

struct groups { int n; size_t members[8]; char owner[8][IM_NAME_MAX + 1]; char name[8][IM_NAME_MAX + 1]; };

static enum im_row group_row(void *ctx, const char *group, const char *owner, const char *const *members, size_t n)
{
	struct groups *g = ctx;

	(void)members;
	if(g->n < 8){
		snprintf(g->name[g->n], IM_NAME_MAX + 1, "%s", group);
		snprintf(g->owner[g->n], IM_NAME_MAX + 1, "%s", owner);
		g->members[g->n++] = n;
	}
	return IM_ROW_NEXT;
}

static void groups(struct im__store *st)
{
	char *add[] = {"bob", "carol"}, *rm[] = {"carol"}, *zed[] = {"zed"};
	struct im__group *g;
	struct names nm = {0};
	struct groups all = {0};
	struct collect c;
	uint64_t seq = 0;
	bool err, more;
	size_t groups_cached;

	CHECK(st->ops->group(st, "room", 4, &err) == NULL && !err);
	CHECK_EQ(change(st, IM_GROUP_CREATE, "room", "alice", add, 2, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 1);
	g = st->ops->group(st, "room", 4, &err);
	CHECK(g && !strcmp(g->owner, "alice") && g->members.count == 3);
	CHECK_EQ(change(st, IM_GROUP_REMOVE, "room", "alice", rm, 1, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 2);
	g = st->ops->group(st, "room", 4, &err);
	CHECK(g && g->members.count == 2 && !im_map__get(&g->members, "carol", 5));
	CHECK_EQ(change(st, IM_GROUP_LEAVE, "room", "bob", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 3);
	CHECK(seqs_whole(st, "g/room"));
	CHECK_EQ(range(st, timeline(st, "g/room", false), 0, 10, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 3);
	CHECK_STR(c.bodies[2], "{\"event\":3}");
	/* Creating a group that exists fails the batch; the rollback drops
	 * the cache, so the retry sees the group. */
	CHECK_EQ(change(st, IM_GROUP_CREATE, "later", "zed", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK(change(st, IM_GROUP_CREATE, "later", "yan", zed, 1, &seq) != MOSQ_ERR_SUCCESS);
	st->ops->cached(st, &groups_cached);
	CHECK_EQ(groups_cached, 0);
	g = st->ops->group(st, "later", 5, &err);
	CHECK(g && !strcmp(g->owner, "zed") && g->members.count == 1);
	CHECK(seqs_whole(st, "g/later"));
	CHECK_EQ(timeline(st, "g/later", false)->head, 1);
	/* Lists, in name order (bytewise). */
	CHECK_EQ(change(st, IM_GROUP_CREATE, "Aardvark", "alice", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->groups_of(st, "alice", name_row, &nm), MOSQ_ERR_SUCCESS);
	CHECK_EQ(nm.n, 2);
	CHECK_STR(nm.v[0], "Aardvark");
	CHECK_STR(nm.v[1], "room");
	CHECK_EQ(st->ops->each_group(st, group_row, &all), MOSQ_ERR_SUCCESS);
	CHECK_EQ(all.n, 3);
	/* Counts for the membership limits, each up to upto (0: all). */
	{
		const char *who[] = {"alice", "zed", "yan", "bob"};
		uint32_t n[4];

		CHECK_EQ(st->ops->group_counts(st, who, 4, false, 0, n), MOSQ_ERR_SUCCESS);
		CHECK(n[0] == 2 && n[1] == 1 && n[2] == 0 && n[3] == 0);
		CHECK_EQ(st->ops->group_counts(st, who, 4, true, 0, n), MOSQ_ERR_SUCCESS);
		CHECK(n[0] == 2 && n[1] == 1 && n[2] == 0 && n[3] == 0);
		CHECK_EQ(st->ops->group_counts(st, who, 1, false, 1, n), MOSQ_ERR_SUCCESS);
		CHECK_EQ(n[0], 1);
	}
	CHECK_STR(all.name[0], "Aardvark");
	CHECK_EQ(all.members[0], 1);
	CHECK_STR(all.name[2], "room");
	CHECK_STR(all.owner[2], "alice");
	CHECK_EQ(all.members[2], 1);
	if(!reopen(st)) return;
	g = st->ops->group(st, "room", 4, &err);
	CHECK(g && !strcmp(g->owner, "alice") && g->members.count == 1 && im_map__get(&g->members, "alice", 5));
}

struct pairs { int n; char v[8][40]; };

static enum im_row pair_row(void *ctx, const char *w, const char *r)
{
	struct pairs *p = ctx;

	if(p->n < 8) snprintf(p->v[p->n++], sizeof(p->v[0]), "%s>%s", w, r);
	return IM_ROW_NEXT;
}

static void contacts(struct im__store *st)
{
	struct pairs p = {0};
	bool first = false;

	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->wrote(st, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(first);
	CHECK_EQ(st->ops->wrote(st, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(!first);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->each_wrote(st, pair_row, &p), MOSQ_ERR_SUCCESS);
	CHECK_EQ(p.n, 1);
	CHECK_STR(p.v[0], "alice>bob"); /* directed */
	/* Stored, not only remembered. */
	if(!reopen(st)) return;
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->wrote(st, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(!first);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
}

/* What the store says about itself: made once, read at every open;
 * applied_lsn moves with a commit that names one; a renewed id is written
 * by the next commit, not before. */
static void identity(struct im__store *st)
{
	uint64_t id = st->store_id;
	uint8_t key[16];

	memcpy(key, st->frame_key, sizeof(key));
	CHECK_STR(st->ops->name, be->name);
	CHECK(st->created);
	CHECK(id != 0);
	CHECK_EQ(st->applied_lsn, 0);
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->commit(st, 100), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->applied_lsn, 100);
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS); /* 0 keeps */
	CHECK_EQ(st->applied_lsn, 100);
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	st->ops->rollback(st);
	if(!reopen(st)) return;
	CHECK(!st->created);
	CHECK_EQ(st->store_id, id);
	CHECK(memcmp(st->frame_key, key, sizeof(key)) == 0);
	CHECK_EQ(st->applied_lsn, 100);
	CHECK_EQ(im_store__renew_id(st), MOSQ_ERR_SUCCESS);
	CHECK(st->store_id != id);
	if(!reopen(st)) return;
	CHECK_EQ(st->store_id, id); /* no commit: not written */
	CHECK_EQ(im_store__renew_id(st), MOSQ_ERR_SUCCESS);
	id = st->store_id;
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->commit(st, 101), MOSQ_ERR_SUCCESS);
	if(!reopen(st)) return;
	CHECK_EQ(st->store_id, id);
	CHECK_EQ(st->applied_lsn, 101);
	CHECK(memcmp(st->frame_key, key, sizeof(key)) == 0);
}

struct marks { int n; char user[8][IM_NAME_MAX + 1]; uint64_t seq[8]; };

static enum im_row mark_row(void *ctx, const char *user, uint64_t seq)
{
	struct marks *k = ctx;

	if(k->n < 8){
		snprintf(k->user[k->n], IM_NAME_MAX + 1, "%s", user);
		k->seq[k->n++] = seq;
	}
	return IM_ROW_NEXT;
}

/* The list's entries; only: just that one ("u/<peer>" or "g/<group>"). */
struct convs { const char *only; int n; char name[8][IM_TL_MAX + 1]; uint64_t last_seq[8], unread[8], peer_read[8];
	int64_t ts[8]; char preview[8][32]; };

static enum im_row conv_row(void *ctx, const struct im__conv *c)
{
	struct convs *k = ctx;
	char name[IM_TL_MAX + 1];

	snprintf(name, sizeof(name), "%c/%s", c->kind, c->name);
	if(k->n < 8 && (k->only == NULL || !strcmp(name, k->only))){
		snprintf(k->name[k->n], sizeof(k->name[0]), "%s", name);
		snprintf(k->preview[k->n], sizeof(k->preview[0]), "%s", c->preview ? c->preview : "(none)");
		k->last_seq[k->n] = c->last_seq;
		k->unread[k->n] = c->unread;
		k->peer_read[k->n] = c->peer_read;
		k->ts[k->n] = c->last_ts;
		k->n++;
	}
	return IM_ROW_NEXT;
}

static long long unread(struct im__store *st, const char *owner, const char *tl)
{
	struct convs k = {.only = tl};

	if(st->ops->conversations(st, owner, 100, 0, NULL, im_now_ms(), conv_row, &k) != MOSQ_ERR_SUCCESS || k.n != 1) return -1;
	return (long long)k.unread[0];
}

/* Each row of a DM names the other's seq, the copy flag telling which is
 * which. */
static bool paired(struct im__store *st, const char *tl, const char *other, uint64_t seq)
{
	struct im__msg_ref r, o;
	bool found, found_o;

	if(st->ops->lookup(st, timeline(st, tl, false), seq, &found, &r) != MOSQ_ERR_SUCCESS || !found) return false;
	if(st->ops->lookup(st, timeline(st, other, false), r.peer_seq, &found_o, &o) != MOSQ_ERR_SUCCESS || !found_o) return false;
	return o.peer_seq == seq && o.copy != r.copy && !strcmp(o.sender, r.sender);
}

static void conversations(struct im__store *st)
{
	struct im__tl *carl, *dora;
	struct im__appended d, d2;
	struct im__msg_ref ref;
	struct im__msg m;
	struct collect c;
	struct marks k = {0};
	struct convs cv = {0};
	struct names peers = {0};
	const char *names[] = {"u/carl", "u/dora"};
	const bool create[] = {true, true};
	char *carl_in[] = {"carl"};
	uint64_t before, after, seq;
	bool found, yes, more;
	int i;

	carl = timeline(st, "u/carl", true);
	dora = timeline(st, "u/dora", true);
	CHECK(carl && dora);
	if(!carl || !dora) return;
	m = msg("dora", "u/carl", "dc-1", "hello carl");
	CHECK_EQ(append(st, carl, dora, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 1 && d.own_seq == 1);
	/* Two in one batch, the timelines prelocked as the worker does where
	 * the backend has several writers. */
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	if(st->ops->prelock) CHECK_EQ(st->ops->prelock(st, names, create, 2), MOSQ_ERR_SUCCESS);
	m = msg("carl", "u/dora", "cd-1", "hi dora");
	CHECK_EQ(st->ops->append(st, dora, carl, &m, &d), MOSQ_ERR_SUCCESS);
	m = msg("dora", "u/carl", "dc-2", "how are you");
	m.flags = COMPRESSED; /* claimed only: the store keeps bodies as given */
	CHECK_EQ(st->ops->append(st, carl, dora, &m, &d2), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 2 && d.own_seq == 2 && d2.seq == 3 && d2.own_seq == 3);
	for(i = 1; i <= 3; i++) CHECK(paired(st, "u/carl", "u/dora", (uint64_t)i) && paired(st, "u/dora", "u/carl", (uint64_t)i));
	/* dedup and lookup. */
	CHECK_EQ(st->ops->dedup(st, "dora", "dc-2", &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 3 && d.own_seq == 3 && !strcmp(d.timeline, "u/carl"));
	CHECK_EQ(st->ops->dedup(st, "dora", "nope", &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate);
	CHECK_EQ(st->ops->lookup(st, carl, 3, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && !strcmp(ref.sender, "dora") && ref.peer_seq == 3 && ref.copy == 0 && ref.flags == COMPRESSED);
	CHECK_EQ(st->ops->lookup(st, dora, 3, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && ref.copy == 1 && ref.peer_seq == 3);
	CHECK_EQ(st->ops->lookup(st, carl, 99, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(!found);

	/* An edit: the new body, flagged edited (compressed cleared); its
	 * event row names the message (ref_seq), read back by range. */
	CHECK_EQ(amend(st, "u/carl", 3, "how are you?", EDITED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->lookup(st, carl, 3, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && ref.flags == EDITED);
	m = msg("dora", "u/carl", "dc-2e", "how are you?");
	m.flags = EDIT;
	m.ref_seq = 3;
	m.own_ref_seq = 3;
	CHECK_EQ(append(st, carl, dora, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 4 && d.own_seq == 4);
	CHECK_EQ(range(st, dora, 3, 10, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK(c.n == 1 && c.seqs[0] == 4 && c.refs[0] == 3);
	CHECK_EQ(range(st, carl, 2, 10, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK(c.n == 2 && !strcmp(c.bodies[0], "how are you?") && !strcmp(c.bodies[1], "how are you?") && c.refs[1] == 3);
	/* A recall erases the body and its edits' bodies, and nothing else. */
	CHECK_EQ(amend(st, "u/carl", 3, NULL, RECALLED), MOSQ_ERR_SUCCESS);
	st->ops->scrub(st);
	CHECK_EQ(range(st, carl, 0, 10, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK(c.n == 4 && !strcmp(c.bodies[0], "hello carl") && !strcmp(c.bodies[2], "") && !strcmp(c.bodies[3], ""));
	for(i = 3; i <= 4; i++){
		CHECK_EQ(st->ops->lookup(st, carl, (uint64_t)i, &found, &ref), MOSQ_ERR_SUCCESS);
		CHECK(found && (ref.flags & RECALLED));
	}

	/* note_last, in seq order as one writer notes: unread adds up. */
	CHECK_EQ(note(st, "carl", "dora", 1, 1000, "dora", "hello carl", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(st, "dora", "carl", 2, 2000, "carl", NULL, 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(st, "carl", "dora", 3, 3000, "dora", "how are you", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(st, NULL, "room", 3, 2500, "bob", "in the room", 0), MOSQ_ERR_SUCCESS);
	cv.only = "u/dora";
	CHECK_EQ(st->ops->conversations(st, "carl", 100, 0, NULL, im_now_ms(), conv_row, &cv), MOSQ_ERR_SUCCESS);
	/* seq 3 was recalled above: sync returns no body, so no preview. */
	CHECK(cv.n == 1 && cv.unread[0] == 2 && cv.last_seq[0] == 3 && cv.ts[0] == 3000 && !strcmp(cv.preview[0], "(none)"));
	CHECK_EQ(st->ops->has_conv(st, "carl", "dora", &yes), MOSQ_ERR_SUCCESS);
	CHECK(yes);
	CHECK_EQ(st->ops->has_conv(st, "carl", "zoe", &yes), MOSQ_ERR_SUCCESS);
	CHECK(!yes);

	/* Read marks: up only; in the own inbox the peers' messages now read
	 * leave unread (dora's at seqs 1 and 3 of u/carl; 2 is carl's copy). */
	CHECK_EQ(read_mark(st, "u/carl", "carl", 1, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 0 && after == 1 && peers.n == 1 && !strcmp(peers.v[0], "dora"));
	CHECK_EQ(unread(st, "carl", "u/dora"), 1);
	peers.n = 0;
	CHECK_EQ(read_mark(st, "u/carl", "carl", 1, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 1 && after == 1 && peers.n == 0);
	CHECK_EQ(read_mark(st, "u/carl", "carl", 4, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 1 && after == 4 && peers.n == 1);
	CHECK_EQ(unread(st, "carl", "u/dora"), 0); /* 3 (the recalled one) counted, not 4 (its edit) */
	peers.n = 0;
	CHECK_EQ(read_mark(st, "u/carl", "dora", 2, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 0 && after == 2 && peers.n == 0); /* not dora's inbox: no counts */
	CHECK_EQ(read_mark(st, "u/dora", "dora", 4, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread(st, "dora", "u/carl"), 0);
	/* carl sees his own mark and head; dora his mark as far as it passed
	 * her messages (1, 3, and the edit 4), and her last noted one (3). */
	CHECK_EQ(st->ops->reads_of(st, carl, "carl", mark_row, &k, &seq), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && !strcmp(k.user[0], "carl") && k.seq[0] == 4 && seq == carl->head);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, carl, "dora", mark_row, &k, &seq), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && !strcmp(k.user[0], "carl") && k.seq[0] == 4 && seq == 3);

	/* The list: carl's conversation with dora and the group room (carl a
	 * member), latest first, paged strictly before a (ts, timeline). */
	CHECK_EQ(change(st, IM_GROUP_CREATE, "room", "bob", carl_in, 1, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(st, NULL, "room", 3, 2500, "bob", "in the room", 0), MOSQ_ERR_SUCCESS); /* as after every change */
	CHECK_EQ(note(st, "carl", "eli", 9, 2500, "eli", "same ts", 1), MOSQ_ERR_SUCCESS);
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(st->ops->conversations(st, "carl", 10, 0, NULL, im_now_ms(), conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK_EQ(cv.n, 3);
	CHECK_STR(cv.name[0], "u/dora");
	/* dora's mark (4) as far as it passed carl's messages in u/dora: 2. */
	CHECK(cv.last_seq[0] == 3 && cv.unread[0] == 0 && cv.peer_read[0] == 2 && !strcmp(cv.preview[0], "(none)"));
	CHECK_STR(cv.name[1], "u/eli");   /* ts 2500 both: "u/eli" > "g/room" */
	CHECK_EQ(cv.peer_read[1], 0);
	CHECK_STR(cv.name[2], "g/room");  /* noted at seq 3, which g/room does not hold: no preview */
	CHECK(cv.last_seq[2] == 3 && cv.unread[2] == 3 && !strcmp(cv.preview[2], "(none)"));
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(st->ops->conversations(st, "carl", 1, 2500, "u/eli", im_now_ms(), conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK(cv.n == 1 && !strcmp(cv.name[0], "g/room"));
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(st->ops->conversations(st, "carl", 2, 0, NULL, im_now_ms(), conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK_EQ(cv.n, 2);
	CHECK_EQ(read_mark(st, "g/room", "carl", 2, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(st->ops->conversations(st, "carl", 10, 2500, "u/eli", im_now_ms(), conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK(cv.n == 1 && cv.unread[0] == 1);
	CHECK(seqs_whole(st, "u/carl") && seqs_whole(st, "u/dora"));
}

/* ---- conversations, second round (issue #20) ---- */

enum { RECALL = 8 };

/* One batch of the worker's work for a direct message: the message and the
 * sender's copy, and both sides of the conversation noted (the recipient's
 * counting it unread unless it is an edit or a recall). Its seq in u/<to>. */
static uint64_t dm(struct im__store *st, const char *from, const char *to, const char *body, uint32_t flags,
		int64_t expires_ms)
{
	char tt[IM_TL_MAX + 1], ft[IM_TL_MAX + 1];
	struct im__tl *t, *f;
	struct im__appended d = {0};
	struct im__msg m;
	int rc;

	snprintf(tt, sizeof(tt), "u/%s", to);
	snprintf(ft, sizeof(ft), "u/%s", from);
	rc = st->ops->begin(st);
	t = timeline(st, tt, true);
	f = timeline(st, ft, true);
	m = msg(from, tt, NULL, body);
	m.flags = flags;
	m.expires_ms = expires_ms;
	if(rc == MOSQ_ERR_SUCCESS) rc = t && f ? st->ops->append(st, t, f, &m, &d) : MOSQ_ERR_UNKNOWN;
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, to, from, d.seq, m.ts_ms, from, flags, body, (flags & (EDIT | RECALL)) ? 0 : 1);
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, from, to, d.own_seq, m.ts_ms, from, flags, body, 0);
	CHECK_EQ(finish(st, rc), MOSQ_ERR_SUCCESS);
	return d.seq;
}

/* The same for a group message, or (flags SYSTEM) a membership change. */
static uint64_t gm(struct im__store *st, const char *group, const char *from, const char *body, uint32_t flags,
		int64_t ts, int64_t expires_ms)
{
	char tn[IM_TL_MAX + 1];
	struct im__tl *t;
	struct im__appended d = {0};
	struct im__msg m;
	int rc;

	snprintf(tn, sizeof(tn), "g/%s", group);
	rc = st->ops->begin(st);
	t = timeline(st, tn, true);
	m = msg(from, tn, NULL, body);
	m.flags = flags;
	m.expires_ms = expires_ms;
	if(ts) m.ts_ms = ts;
	if(rc == MOSQ_ERR_SUCCESS) rc = t ? st->ops->append(st, t, NULL, &m, &d) : MOSQ_ERR_UNKNOWN;
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, NULL, group, d.seq, m.ts_ms, from, flags, body, (flags & (EDIT | RECALL)) ? 1 : 0);
	CHECK_EQ(finish(st, rc), MOSQ_ERR_SUCCESS);
	return d.seq;
}

/* A membership change as the worker makes it: the change, then its
 * notice noted in the list. */
static void member_change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, int64_t ts)
{
	uint64_t seq;
	int rc;

	CHECK_EQ(change(st, op, group, actor, users, n, &seq), MOSQ_ERR_SUCCESS);
	rc = st->ops->begin(st);
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, NULL, group, seq, ts ? ts : im_now_ms(), actor, SYSTEM, NULL, 0);
	CHECK_EQ(finish(st, rc), MOSQ_ERR_SUCCESS);
}

static struct convs list(struct im__store *st, const char *owner, int64_t now_ms)
{
	struct convs k = {0};

	CHECK_EQ(st->ops->conversations(st, owner, 8, 0, NULL, now_ms, conv_row, &k), MOSQ_ERR_SUCCESS);
	return k;
}

static int entry(const struct convs *k, const char *tl)
{
	int i;

	for(i = 0; i < k->n; i++) if(!strcmp(k->name[i], tl)) return i;
	CHECK(!"the entry is listed");
	return 0;
}

/* A read mark tells a writer only how far its own messages were read, and
 * a group's marks are its current members'. */
static void marks_tell_writers_their_own(struct im__store *st)
{
	struct names peers = {0};
	struct marks k = {0};
	struct im__tl *bob;
	struct convs cv;
	uint64_t before, after, head;
	char *bea[] = {"bea"}, *both[] = {"bea", "cid"};
	int i;

	CHECK_EQ(dm(st, "mallory", "bob", "hi bob", 0, 0), 1);
	for(i = 0; i < 3; i++) CHECK_EQ(dm(st, "alice", "bob", "a", 0, 0), (uint64_t)(2 + i));
	dm(st, "bob", "alice", "hi alice", 0, 0);                       /* bob's copy: u/bob 5 */
	CHECK_EQ(dm(st, "alice", "bob", "a3", 0, 0), 6);
	CHECK_EQ(read_mark(st, "u/bob", "bob", 4, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(after == 4 && peers.n == 2);
	if((bob = timeline(st, "u/bob", false)) == NULL) return;
	CHECK_EQ(st->ops->reads_of(st, bob, "mallory", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && !strcmp(k.user[0], "bob") && k.seq[0] == 1 && head == 1);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, bob, "alice", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && k.seq[0] == 4 && head == 6);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, bob, "bob", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && k.seq[0] == 4 && head == 6);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, bob, "carol", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 0 && head == 0);
	cv = list(st, "mallory", im_now_ms());
	CHECK_EQ(cv.peer_read[entry(&cv, "u/bob")], 1);
	cv = list(st, "alice", im_now_ms());
	CHECK_EQ(cv.peer_read[entry(&cv, "u/bob")], 4);
	/* bob reads on past alice's last: she sees it, mallory nothing new. */
	CHECK_EQ(read_mark(st, "u/bob", "bob", 6, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, bob, "alice", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && k.seq[0] == 6);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, bob, "mallory", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && k.seq[0] == 1 && head == 1);

	/* A removed member's mark is no longer shown. */
	member_change(st, IM_GROUP_CREATE, "crew", "ann", both, 2, 0);
	CHECK_EQ(read_mark(st, "g/crew", "bea", 1, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK_EQ(read_mark(st, "g/crew", "cid", 1, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	member_change(st, IM_GROUP_REMOVE, "crew", "ann", bea, 1, 0);
	k.n = 0;
	CHECK_EQ(st->ops->reads_of(st, timeline(st, "g/crew", false), "ann", mark_row, &k, &head), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && !strcmp(k.user[0], "cid") && head == 2);
}

/* Edits and recalls are not messages to read: in a direct conversation
 * and in a group, the unread count leaves them out, before and after the
 * reader's mark moves. */
static void unread_leaves_out_edits(struct im__store *st)
{
	struct names peers = {0};
	uint64_t before, after;
	struct convs cv;
	char *dan[] = {"dan"};

	dm(st, "ann", "dan", "one", 0, 0);                              /* 1 */
	dm(st, "ann", "dan", "one!", EDIT, 0);                          /* 2 */
	dm(st, "ann", "dan", "two", 0, 0);                              /* 3 */
	dm(st, "ann", "dan", "", RECALL, 0);                            /* 4 */
	CHECK_EQ(unread(st, "dan", "u/ann"), 2);
	CHECK_EQ(read_mark(st, "u/dan", "dan", 2, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread(st, "dan", "u/ann"), 1);
	CHECK_EQ(read_mark(st, "u/dan", "dan", 4, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread(st, "dan", "u/ann"), 0);

	member_change(st, IM_GROUP_CREATE, "club", "ann", dan, 1, 0);      /* 1 */
	gm(st, "club", "ann", "g one", 0, 0, 0);                        /* 2 */
	gm(st, "club", "ann", "g one!", EDIT, 0, 0);                    /* 3 */
	gm(st, "club", "ann", "g two", 0, 0, 0);                        /* 4 */
	gm(st, "club", "ann", "", RECALL, 0, 0);                        /* 5 */
	cv = list(st, "dan", im_now_ms());
	CHECK_EQ(cv.unread[entry(&cv, "g/club")], 3);                   /* the notice, two messages */
	/* A first mark, then one that moves on. */
	CHECK_EQ(read_mark(st, "g/club", "dan", 3, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	cv = list(st, "dan", im_now_ms());
	CHECK_EQ(cv.unread[entry(&cv, "g/club")], 1);
	gm(st, "club", "ann", "g two!", EDIT, 0, 0);                    /* 6 */
	cv = list(st, "dan", im_now_ms());
	CHECK_EQ(cv.unread[entry(&cv, "g/club")], 1);
	CHECK_EQ(read_mark(st, "g/club", "dan", 6, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	gm(st, "club", "ann", "g three", 0, 0, 0);                      /* 7 */
	cv = list(st, "dan", im_now_ms());
	CHECK_EQ(cv.unread[entry(&cv, "g/club")], 1);
}

/* A preview is shown only while sync would return its message: not once
 * it expired, nor once retention removed it (which erases it at rest). */
static void previews_follow_messages(struct im__store *st)
{
	int64_t soon = im_now_ms() + 60000;
	struct convs cv;
	char *fay[] = {"fay"};

	dm(st, "eve", "fay", "PIN 4711", 0, soon);
	member_change(st, IM_GROUP_CREATE, "vault", "eve", fay, 1, 0);
	gm(st, "vault", "eve", "PIN 4711", 0, 0, soon);
	cv = list(st, "fay", im_now_ms());
	CHECK_STR(cv.preview[entry(&cv, "u/eve")], "PIN 4711");
	CHECK_STR(cv.preview[entry(&cv, "g/vault")], "PIN 4711");
	cv = list(st, "fay", soon);
	CHECK_STR(cv.preview[entry(&cv, "u/eve")], "(none)");
	CHECK_STR(cv.preview[entry(&cv, "g/vault")], "(none)");
	cv = list(st, "eve", soon);                                     /* her copy expired too */
	CHECK_STR(cv.preview[entry(&cv, "u/fay")], "(none)");

	/* Retention by count: gil's message leaves u/hal, not u/gil. */
	dm(st, "gil", "hal", "PIN 4711", 0, 0);
	dm(st, "ida", "hal", "one", 0, 0);
	dm(st, "ida", "hal", "two", 0, 0);
	gm(st, "safe", "gil", "PIN 4711", 0, 1000, 0);                  /* ancient */
	CHECK(sweep(st, 5000, 2, 1000) > 0);
	cv = list(st, "hal", im_now_ms());
	CHECK_STR(cv.preview[entry(&cv, "u/gil")], "(none)");
	CHECK_STR(cv.preview[entry(&cv, "u/ida")], "two");
	cv = list(st, "gil", im_now_ms());
	CHECK_STR(cv.preview[entry(&cv, "u/hal")], "PIN 4711");
	CHECK_EQ(peek(st, "SELECT count(*) FROM convs WHERE owner = 'hal' AND preview IS NOT NULL"), 1);   /* ida's */
	CHECK_EQ(peek(st, "SELECT count(*) FROM group_last WHERE grp = 'safe' AND preview IS NOT NULL"), 0);
}

/* Pages of the list across direct conversations, groups of a few (noted
 * per member), and larger groups (ordered when listed), with groups moving
 * between the two; and a page's cost, whatever the number of groups. */
struct page_rows { int n; char tl[256][IM_TL_MAX + 1]; int64_t ts[256]; };

static enum im_row page_row(void *ctx, const struct im__conv *c)
{
	struct page_rows *p = ctx;

	if(p->n < 256){
		snprintf(p->tl[p->n], sizeof(p->tl[0]), "%c/%s", c->kind, c->name);
		p->ts[p->n++] = c->last_ts;
	}
	return IM_ROW_NEXT;
}

/* Every entry of owner's list, 3 per page; true if latest first, each once. */
static int whole_list(struct im__store *st, const char *owner)
{
	struct page_rows all = {0}, p;
	int i, j, pages = 0;

	do{
		memset(&p, 0, sizeof(p));
		CHECK_EQ(st->ops->conversations(st, owner, 3, all.n ? all.ts[all.n - 1] : 0, all.n ? all.tl[all.n - 1] : NULL,
				im_now_ms(), page_row, &p), MOSQ_ERR_SUCCESS);
		for(i = 0; i < p.n && all.n < 256; i++){
			snprintf(all.tl[all.n], sizeof(all.tl[0]), "%s", p.tl[i]);
			all.ts[all.n++] = p.ts[i];
		}
	}while(p.n == 3 && ++pages < 100);
	for(i = 1; i < all.n; i++){
		if(all.ts[i] > all.ts[i - 1] || (all.ts[i] == all.ts[i - 1] && strcmp(all.tl[i], all.tl[i - 1]) >= 0)) return -1;
		for(j = 0; j < i; j++) if(!strcmp(all.tl[i], all.tl[j])) return -1;
	}
	return all.n;
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double page_us(struct im__store *st, const char *owner)
{
	struct page_rows p = {0};
	double t0 = now_us();

	CHECK_EQ(st->ops->conversations(st, owner, 51, 0, NULL, im_now_ms(), page_row, &p), MOSQ_ERR_SUCCESS);
	CHECK_EQ(p.n, 51);
	return now_us() - t0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Medians of pages of 50 for each owner, asked in turns. */
static void pages_us(struct im__store *st, const char *const *owners, int n, double *median)
{
	double t[4][21];
	int i, k;

	for(i = 0; i < n; i++) page_us(st, owners[i]);          /* warm */
	for(k = 0; k < 21; k++){
		for(i = 0; i < n; i++) t[i][k] = page_us(st, owners[i]);
	}
	for(i = 0; i < n; i++){
		qsort(t[i], 21, sizeof(double), cmp_double);
		median[i] = t[i][10];
	}
}

/* n groups of two made by ann with user, in batches of 100, each change
 * and its notice as the worker makes them. */
static void groups_with(struct im__store *st, const char *user, const char *prefix, int n)
{
	char name[IM_NAME_MAX + 1], tn[IM_TL_MAX + 1], *who[] = {(char *)user};
	struct im__tl *t;
	struct im__msg m;
	uint64_t seq;
	int i, rc = MOSQ_ERR_SUCCESS;

	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		if(i % 100 == 0) rc = st->ops->begin(st);
		snprintf(name, sizeof(name), "%s%05d", prefix, i);
		snprintf(tn, sizeof(tn), "g/%s", name);
		t = timeline(st, tn, true);
		m = msg("ann", tn, NULL, "{}");
		m.flags = SYSTEM;
		if(rc == MOSQ_ERR_SUCCESS) rc = t ? st->ops->group_change(st, IM_GROUP_CREATE, name, "ann", who, 1, t, &m, &seq) : MOSQ_ERR_UNKNOWN;
		if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, NULL, name, seq, m.ts_ms, "ann", SYSTEM, NULL, 0);
		if(rc != MOSQ_ERR_SUCCESS || i % 100 == 99 || i == n - 1) rc = finish(st, rc);
	}
	CHECK_EQ(rc, MOSQ_ERR_SUCCESS);
}

static void pages_whatever_the_groups(struct im__store *st)
{
	char many[IM_STORE_FAN_MAX + 2][IM_NAME_MAX + 1], *users[IM_STORE_FAN_MAX + 2], *pam[] = {"pam"};
	const char *owners[] = {"few", "lot"};
	double before[1], after[2];
	int64_t at = im_now_ms() + 100000; /* later than anything before, one ms apart */
	int i;

	/* pam: 4 direct conversations, 3 groups of two, and one that grows
	 * past IM_STORE_FAN_MAX members and shrinks back. */
	for(i = 0; i < IM_STORE_FAN_MAX + 2; i++){
		snprintf(many[i], sizeof(many[i]), "m%02d", i);
		users[i] = many[i];
	}
	dm(st, "pam", "qui", "1", 0, 0);
	member_change(st, IM_GROUP_CREATE, "g1", "ann", pam, 1, 0);
	dm(st, "rob", "pam", "2", 0, 0);
	member_change(st, IM_GROUP_CREATE, "big", "ann", pam, 1, 0);
	member_change(st, IM_GROUP_CREATE, "g2", "ann", pam, 1, 0);
	dm(st, "pam", "sue", "3", 0, 0);
	member_change(st, IM_GROUP_CREATE, "g3", "ann", pam, 1, 0);
	gm(st, "g1", "ann", "g1 again", 0, ++at, 0);
	dm(st, "tom", "pam", "4", 0, 0);
	CHECK_EQ(whole_list(st, "pam"), 8);
	member_change(st, IM_GROUP_ADD, "big", "ann", users, IM_STORE_FAN_MAX + 2, ++at);
	CHECK_EQ(peek(st, "SELECT fan FROM group_last WHERE grp = 'big'"), 0);
	CHECK_EQ(whole_list(st, "pam"), 8);
	gm(st, "g2", "ann", "g2 again", 0, ++at, 0);
	gm(st, "big", "ann", "big again", 0, ++at, 0);
	CHECK_EQ(whole_list(st, "pam"), 8);
	CHECK_EQ(list(st, "pam", im_now_ms()).n, 8);
	CHECK_STR(list(st, "pam", im_now_ms()).name[0], "g/big");
	CHECK_STR(list(st, "m00", im_now_ms()).name[0], "g/big");      /* a member who joined a larger group */
	member_change(st, IM_GROUP_REMOVE, "big", "ann", users, IM_STORE_FAN_MAX + 2, ++at);
	CHECK_EQ(peek(st, "SELECT fan FROM group_last WHERE grp = 'big'"), 1);
	gm(st, "g3", "ann", "g3 again", 0, ++at, 0);
	CHECK_EQ(whole_list(st, "pam"), 8);
	CHECK_STR(list(st, "pam", im_now_ms()).name[0], "g/g3");
	CHECK_STR(list(st, "pam", im_now_ms()).name[1], "g/big");

	/* The cost of a page of 50: few is in 5 groups, lot in 2,000; both
	 * wrote to 50 people, before lot's groups were made. Asked in turns,
	 * so that the machine's load falls on both alike. */
	for(i = 0; i < 50; i++){
		char to[16];

		snprintf(to, sizeof(to), "p%02d", i);
		dm(st, "few", to, "x", 0, 0);
		dm(st, "lot", to, "x", 0, 0);
	}
	groups_with(st, "few", "few", 5);
	pages_us(st, owners, 1, before);
	groups_with(st, "lot", "lot", 2000);
	pages_us(st, owners, 2, after);
	printf("# %s: a page of 50: in 5 of 5 groups %.0f us; in 5 of 2,005 %.0f us; in 2,000 %.0f us\n",
			be->name, before[0], after[0], after[1]);
	CHECK(after[1] < 3 * after[0]);
}

/* ---- one batch of many operations (issue #22) ----
 * A backend may keep a batch's writes until its commit (PostgreSQL writes
 * them behind, a few statements per batch): whatever it holds, the batch's
 * own operations see it as written, and a rollback leaves nothing. */

static uint32_t flags_of(struct im__store *st, const char *tl, uint64_t seq)
{
	struct im__msg_ref r;
	bool found = false;

	if(st->ops->lookup(st, timeline(st, tl, false), seq, &found, &r) != MOSQ_ERR_SUCCESS || !found) return 0xFFFFFFFFu;
	return r.flags;
}

/* The worker's DM inside an open batch: append, both sides noted. */
static int dm_in(struct im__store *st, const char *from, const char *to, const char *cmid, const char *body,
		uint32_t flags, uint64_t ref, uint64_t own_ref, struct im__appended *d)
{
	char tt[IM_TL_MAX + 1], ft[IM_TL_MAX + 1];
	struct im__tl *t, *f;
	struct im__msg m;
	int rc;

	snprintf(tt, sizeof(tt), "u/%s", to);
	snprintf(ft, sizeof(ft), "u/%s", from);
	t = timeline(st, tt, true);
	f = timeline(st, ft, true);
	m = msg(from, tt, cmid, body);
	m.flags = flags;
	m.ref_seq = ref;
	m.own_ref_seq = own_ref;
	if(flags & RECALL){
		m.body = "";
		m.body_len = 0;
	}
	rc = t && f ? st->ops->append(st, t, f, &m, d) : MOSQ_ERR_UNKNOWN;
	if(rc != MOSQ_ERR_SUCCESS || d->duplicate) return rc;
	rc = st->ops->note_last(st, to, from, d->seq, m.ts_ms, from, flags, (flags & RECALL) ? NULL : body,
			(flags & (EDIT | RECALL)) ? 0 : 1);
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, from, to, d->own_seq, m.ts_ms, from, flags,
			(flags & RECALL) ? NULL : body, 0);
	return rc;
}

static void batch_edits_its_own(struct im__store *st)
{
	struct im__appended d, e;
	struct im__msg_ref ref;
	struct collect c;
	bool found = false, more;

	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "amy", "bo", NULL, "first", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 1 && d.own_seq == 1);
	/* The message is found where it waits, with its pair. */
	CHECK_EQ(st->ops->lookup(st, timeline(st, "u/bo", false), 1, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && !ref.copy && ref.peer_seq == 1 && !strcmp(ref.sender, "amy"));
	CHECK_EQ(st->ops->lookup(st, timeline(st, "u/amy", false), 1, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && ref.copy && ref.peer_seq == 1);
	/* Edited in the same batch, both rows, and the edit appended. */
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/bo", false), 1, "edited", 6, 0, EDITED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/amy", false), 1, "edited", 6, 0, EDITED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "amy", "bo", "e1", "edited", EDIT, 1, 1, &e), MOSQ_ERR_SUCCESS);
	CHECK(!e.duplicate && e.seq == 2 && e.own_seq == 2);
	/* A second message, edited (with a cmid), then recalled: the recall
	 * takes the body of its edit along, where it waits. */
	CHECK_EQ(dm_in(st, "amy", "bo", NULL, "second", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 3);
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/bo", false), 3, "second'", 7, 0, EDITED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "amy", "bo", "e2", "second'", EDIT, 3, 3, &e), MOSQ_ERR_SUCCESS);
	CHECK_EQ(e.seq, 4);
	CHECK_EQ(dm_in(st, "amy", "bo", NULL, "third", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/bo", false), 5, "third'", 6, 0, EDITED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "amy", "bo", NULL, "third'", EDIT, 5, 5, &e), MOSQ_ERR_SUCCESS);
	CHECK_EQ(e.seq, 6);
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/bo", false), 3, NULL, 0, 0, RECALLED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/amy", false), 3, NULL, 0, 0, RECALLED), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "amy", "bo", "r2", "", RECALL, 3, 3, &e), MOSQ_ERR_SUCCESS);
	CHECK_EQ(e.seq, 7);
	/* The edit's cmid again, in the batch: the original's values. */
	CHECK_EQ(dm_in(st, "amy", "bo", "e1", "edited", EDIT, 1, 1, &e), MOSQ_ERR_SUCCESS);
	CHECK(e.duplicate && e.seq == 2 && e.own_seq == 2);
	/* A read in the batch sees it all. */
	CHECK_EQ(range(st, timeline(st, "u/bo", false), 0, 20, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 7);
	CHECK_STR(c.bodies[0], "edited");
	CHECK_STR(c.bodies[2], "");
	CHECK_STR(c.bodies[3], "");
	CHECK_STR(c.bodies[4], "third'");
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);

	CHECK(seqs_whole(st, "u/bo") && seqs_whole(st, "u/amy"));
	CHECK_EQ(range(st, timeline(st, "u/bo", false), 0, 20, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 7);
	CHECK_STR(c.bodies[0], "edited");
	CHECK_STR(c.bodies[1], "edited");
	CHECK_STR(c.bodies[2], "");
	CHECK_STR(c.bodies[3], "");         /* the recalled message's edit */
	CHECK_STR(c.bodies[4], "third'");
	CHECK_STR(c.bodies[5], "third'");   /* an edit of a message not recalled keeps its body */
	CHECK_EQ(c.refs[1], 1);
	CHECK_EQ(c.refs[6], 3);
	CHECK_EQ(range(st, timeline(st, "u/amy", false), 0, 20, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 7);
	CHECK_STR(c.bodies[0], "edited");
	CHECK_STR(c.bodies[2], "");
	CHECK_EQ(flags_of(st, "u/bo", 1), EDITED);
	CHECK_EQ(flags_of(st, "u/amy", 1), EDITED);
	CHECK_EQ(flags_of(st, "u/bo", 3), EDITED | RECALLED);  /* flags are ORed in */
	CHECK_EQ(flags_of(st, "u/bo", 4), EDIT | RECALLED);
	CHECK_EQ(flags_of(st, "u/bo", 6), EDIT);
	CHECK(paired(st, "u/bo", "u/amy", 7));
	/* Three messages to read, the edits and the recall not. */
	CHECK_EQ(unread(st, "bo", "u/amy"), 3);
	CHECK_EQ(unread(st, "amy", "u/bo"), 0);
	CHECK_EQ(peek(st, "SELECT count(*) FROM messages WHERE cmid = 'e1'"), 2);
}

static void batch_rollback_leaves_nothing(struct im__store *st)
{
	struct im__appended d;
	struct im__tl *t;
	struct collect c;
	bool more;

	CHECK_EQ(dm(st, "cy", "di", "before", 0, 0), 1);
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "cy", "di", NULL, "gone 1", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 2);
	CHECK_EQ(dm_in(st, "cy", "di", "k1", "gone 2", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 3);
	CHECK_EQ(dm_in(st, "di", "cy", NULL, "gone 3", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->amend(st, timeline(st, "u/di", false), 1, "gone edit", 9, 0, EDITED), MOSQ_ERR_SUCCESS);
	st->ops->rollback(st);
	/* As if the batch never ran: its seqs, its cmid, its counts. */
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "cy", "di", "k1", "kept", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 2 && d.own_seq == 2);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	t = timeline(st, "u/di", false);
	CHECK(t && t->head == 2);
	CHECK(seqs_whole(st, "u/di") && seqs_whole(st, "u/cy"));
	CHECK_EQ(range(st, t, 0, 20, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK_STR(c.bodies[0], "before");
	CHECK_STR(c.bodies[1], "kept");
	CHECK_EQ(flags_of(st, "u/di", 1), 0);
	CHECK_EQ(unread(st, "di", "u/cy"), 2);
	CHECK_EQ(unread(st, "cy", "u/di"), 0);
	CHECK_EQ(peek(st, "SELECT count(*) FROM messages WHERE body = 'gone 1' OR body = 'gone 2' OR body = 'gone 3'"), 0);
}

/* Reads in the middle of a batch: a read mark counts what the batch
 * stored and noted before it, the list shows it. */
static void batch_reads_what_it_wrote(struct im__store *st)
{
	struct im__appended d;
	struct names peers = {0};
	uint64_t before = 0, after = 0;
	struct convs k;
	bool yes = false;

	CHECK_EQ(dm(st, "ed", "flo", "one", 0, 0), 1);
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "ed", "flo", NULL, "two", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "ed", "flo", NULL, "three", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 3);
	CHECK_EQ(st->ops->has_conv(st, "flo", "ed", &yes), MOSQ_ERR_SUCCESS);
	CHECK(yes);
	CHECK_EQ(st->ops->read_mark(st, timeline(st, "u/flo", false), "flo", 2, &before, &after, name_row, &peers),
			MOSQ_ERR_SUCCESS);
	CHECK(before == 0 && after == 2);
	CHECK(peers.n == 1 && !strcmp(peers.v[0], "ed"));
	/* Noted after the read: counted after it. */
	CHECK_EQ(dm_in(st, "ed", "flo", NULL, "four", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	memset(&k, 0, sizeof(k));
	k.only = "u/ed";
	CHECK_EQ(st->ops->conversations(st, "flo", 8, 0, NULL, im_now_ms(), conv_row, &k), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && k.unread[0] == 2 && k.last_seq[0] == 4);
	CHECK_STR(k.preview[0], "four");
	/* A new conversation in the batch, seen at once. */
	CHECK_EQ(dm_in(st, "gus", "flo", NULL, "hi", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->has_conv(st, "flo", "gus", &yes), MOSQ_ERR_SUCCESS);
	CHECK(yes);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread(st, "flo", "u/ed"), 2);
	CHECK_EQ(unread(st, "flo", "u/gus"), 1);
	CHECK(seqs_whole(st, "u/flo") && seqs_whole(st, "u/ed") && seqs_whole(st, "u/gus"));
}

/* A backend that looks a batch's cmids up at once (dedup_batch, called by
 * the worker after prelock) answers from that as append would have. */
static void batch_dedup_at_once(struct im__store *st)
{
	const char *senders[] = {"hal", "hal", "hal", "ivy"};
	const char *cmids[] = {"n1", "old", "n1", "n1"};
	struct im__appended d, e;
	struct collect c;
	bool more;
	int pass;

	CHECK_EQ(dm(st, "hal", "jo", "old one", 0, 0), 1);
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "hal", "jo", "old", "stored", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 2);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	if(st->ops->dedup_batch == NULL) return;
	/* Twice: the first batch rolled back, as a failed batch is, leaves
	 * nothing the second could mistake for a repeat. */
	for(pass = 0; pass < 2; pass++){
		CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
		CHECK_EQ(st->ops->dedup_batch(st, senders, cmids, 4), MOSQ_ERR_SUCCESS);
		CHECK_EQ(st->ops->dedup(st, "hal", "n1", &e), MOSQ_ERR_SUCCESS);
		CHECK(!e.duplicate);
		CHECK_EQ(st->ops->dedup(st, "hal", "old", &e), MOSQ_ERR_SUCCESS);
		CHECK(e.duplicate && e.seq == 2 && e.own_seq == 2);
		CHECK_STR(e.timeline, "u/jo");
		CHECK_EQ(dm_in(st, "hal", "jo", "n1", "new", 0, 0, 0, &d), MOSQ_ERR_SUCCESS);
		CHECK(!d.duplicate && d.seq == 3 && d.own_seq == 3);
		/* Repeated in the batch (to someone else, too): the first's values. */
		CHECK_EQ(dm_in(st, "hal", "kim", "n1", "again", 0, 0, 0, &e), MOSQ_ERR_SUCCESS);
		CHECK(e.duplicate && e.seq == 3 && e.own_seq == 3);
		CHECK_STR(e.timeline, "u/jo");
		CHECK_EQ(st->ops->dedup(st, "hal", "n1", &e), MOSQ_ERR_SUCCESS);
		CHECK(e.duplicate && e.seq == 3);
		CHECK_EQ(dm_in(st, "hal", "jo", "old", "old again", 0, 0, 0, &e), MOSQ_ERR_SUCCESS);
		CHECK(e.duplicate && e.seq == 2 && e.own_seq == 2);
		/* Another sender's n1 is another message. */
		CHECK_EQ(dm_in(st, "ivy", "jo", "n1", "ivy's", 0, 0, 0, &e), MOSQ_ERR_SUCCESS);
		CHECK(!e.duplicate && e.seq == 4 && e.own_seq == 1);
		/* A cmid the batch did not list is asked as usual. */
		CHECK_EQ(dm_in(st, "hal", "jo", "n2", "unlisted", 0, 0, 0, &e), MOSQ_ERR_SUCCESS);
		CHECK(!e.duplicate && e.seq == 5);
		if(pass == 0) st->ops->rollback(st);
		else CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
	}
	CHECK(seqs_whole(st, "u/jo") && seqs_whole(st, "u/hal") && seqs_whole(st, "u/ivy"));
	CHECK_EQ(timeline(st, "u/kim", false) ? (long long)timeline(st, "u/kim", false)->head : 0, 0);
	CHECK_EQ(range(st, timeline(st, "u/jo", false), 0, 20, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 5);
	CHECK_STR(c.bodies[2], "new");
	CHECK_STR(c.bodies[3], "ivy's");
	CHECK_EQ(peek(st, "SELECT count(*) FROM messages WHERE sender = 'hal' AND cmid = 'n1'"), 2); /* and its copy */
	/* After the commit, a later batch finds it stored. */
	CHECK_EQ(st->ops->begin(st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st->ops->dedup_batch(st, senders, cmids, 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(dm_in(st, "hal", "jo", "n1", "third time", 0, 0, 0, &e), MOSQ_ERR_SUCCESS);
	CHECK(e.duplicate && e.seq == 3 && e.own_seq == 3);
	CHECK_EQ(st->ops->commit(st, 0), MOSQ_ERR_SUCCESS);
}

static const struct { const char *name; void (*fn)(struct im__store *st); } tests[] = {
	{"append_and_dedup", append_and_dedup},
	{"timeline_rollback", timeline_rollback},
	{"reopen_and_range", reopen_and_range},
	{"cursors", cursors},
	{"retention", retention},
	{"encryption", encryption},
	{"groups", groups},
	{"contacts", contacts},
	{"identity", identity},
	{"conversations", conversations},
	{"marks_tell_writers_their_own", marks_tell_writers_their_own},
	{"unread_leaves_out_edits", unread_leaves_out_edits},
	{"previews_follow_messages", previews_follow_messages},
	{"pages_whatever_the_groups", pages_whatever_the_groups},
	{"batch_edits_its_own", batch_edits_its_own},
	{"batch_rollback_leaves_nothing", batch_rollback_leaves_nothing},
	{"batch_reads_what_it_wrote", batch_reads_what_it_wrote},
	{"batch_dedup_at_once", batch_dedup_at_once},
};

void store_suite(const struct store_backend *backend, int *checks, int *failed)
{
	struct im__store st;
	size_t i;
	int before;

	be = backend;
	for(i = 0; i < sizeof(tests) / sizeof(tests[0]); i++){
		before = tap_failed;
		be->fresh();
		if(be->open(&st) == MOSQ_ERR_SUCCESS){
			tests[i].fn(&st);
			im_store__close(&st);
		}else{
			CHECK(!"the store opened");
		}
		if(tap_failed != before) fprintf(stderr, "# %s: %s failed\n", be->name, tests[i].name);
	}
	printf("# the store suite on %s: %zu tests, %d checks, %d failed\n", be->name, i, tap_checks, tap_failed);
	*checks += tap_checks;
	*failed += tap_failed;
	tap_checks = tap_failed = 0;
}
