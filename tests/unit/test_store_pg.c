/* The PostgreSQL store against a real server, through the seam, as the
 * worker uses it: seq allocation and the sender's copy, dedup, two nodes
 * writing the same timelines at once, the dedup race between nodes, reopen
 * continuity, ranges, cursors, retention, groups with their system
 * messages, applied_lsn per node, the shared store id and frame key, the
 * conversation operations (edits, recalls, read marks, unread counts, the
 * list) with two nodes moving the same counters, prelock against the
 * deadlock of opposite-order batches,
 * migrations, a killed connection and a failover to a promoted standby.
 *
 * test_store_pg --bench prints appends per second instead. Environment:
 * IM_PG_BIN (the server's programs), IM_PG_KEEP (keep the temporary
 * folder), IM_URI_SUFFIX (appended to the connection URI, e.g.
 * "?options=-c%20lock_timeout%3D100ms"), IM_RACE_N (batches of the race
 * in opposite orders, 12). */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/crypt.h"
#include "base/defs.h"
#include "base/limits.h"
#include "base/map.h"
#include "base/util.h"
#include "store/pg/internal.h"
#include "store/pg/open.h"
#include "store/store.h"
#include "tap.h"
#include "pg_harness.h"

extern char stub_last_log[1024]; /* stubs.c: the last line logged */
int stub_log_has(const char *needle); /* stubs.c: ... contains needle, safely across threads */

#define SCHEMA_VERSION 7   /* schema/pg/NNN_*.sql: the last NNN */

static struct pg_server primary;
static char uri[256];
static PGconn *admin;

/* ---- the seam, one call each ---- */

static int open_node(struct im__store *st, const char *node)
{
	struct im__store_pg_options o = {.conninfo = uri, .node_id = node, .synchronous_commit = "on"};

	return im_store__open_pg(st, &o);
}

static struct im__tl *timeline(struct im__store *st, const char *name, bool create)
{
	bool err;

	return st->ops->timeline(st, name, strlen(name), create, &err);
}

static struct im__msg msg(const char *from, const char *to, const char *cmid, const char *body)
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

/* One message in a batch of its own. */
static int append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m, struct im__appended *a)
{
	int rc = st->ops->begin(st);

	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->append(st, to, own, m, a);
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

static int cursor_set(struct im__store *st, struct im__tl *tl, const char *u, const char *c, uint64_t seq, uint64_t *now)
{
	int rc = st->ops->begin(st);

	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->cursor_set(st, tl, u, c, seq, now);
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

struct collect { uint64_t seqs[64]; char bodies[64][16]; int n; int stop_after; };

static enum im_row collect_row(void *ctx, const struct im__msg *m)
{
	struct collect *c = ctx;

	if(c->stop_after && c->n == c->stop_after) return IM_ROW_STOP;
	if(c->n < 64){
		c->seqs[c->n] = m->seq;
		snprintf(c->bodies[c->n], sizeof(c->bodies[0]), "%.*s", (int)m->body_len, (const char *)m->body);
	}
	c->n++;
	return IM_ROW_NEXT;
}

/* ---- SQL on the side (the admin connection) ---- */

static long long sql_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long sql_int(const char *fmt, ...)
{
	char q[1024];
	va_list ap;
	PGresult *r;
	long long v = -1;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	r = PQexec(admin, q);
	if(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)){
		v = atoll(PQgetvalue(r, 0, 0));
	}else if(PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK){
		fprintf(stderr, "sql: %s: %s", q, PQerrorMessage(admin));
	}
	PQclear(r);
	return v;
}

/* Every stored seq of a timeline is 1..head with no gap and no repeat
 * (first_seq..head after retention). */
static bool gap_free(const char *tl)
{
	long long head = sql_int("SELECT head FROM timelines WHERE name = '%s'", tl);
	long long first = sql_int("SELECT first_seq FROM timelines WHERE name = '%s'", tl);
	long long n = sql_int("SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = '%s'", tl);
	long long lo = sql_int("SELECT coalesce(min(seq), 0) FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = '%s'", tl);
	long long hi = sql_int("SELECT coalesce(max(seq), 0) FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = '%s'", tl);

	if(n == 0) return true;
	if(n != head - first + 1 || lo != first || hi != head){
		fprintf(stderr, "%s: head %lld first %lld rows %lld (%lld..%lld)\n", tl, head, first, n, lo, hi);
		return false;
	}
	return true;
}

static int backend_pid(struct im__store *st)
{
	return PQbackendPID(im_pg(st)->conn);
}

struct pid_wait { int pid; const char *state; };

static bool pid_gone(void *ctx)
{
	struct pid_wait *w = ctx;

	return sql_int("SELECT count(*) FROM pg_stat_activity WHERE pid = %d", w->pid) == 0;
}

static bool pid_waits_on_lock(void *ctx)
{
	struct pid_wait *w = ctx;

	return sql_int("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event_type = 'Lock'", w->pid) == 1;
}

static void kill_backend(int pid)
{
	struct pid_wait w = {pid, NULL};

	CHECK_EQ(sql_int("SELECT pg_terminate_backend(%d)::int", pid), 1);
	CHECK(pgh_wait(pid_gone, &w, 10000));
}

/* ---- tests ---- */

static struct im__store a, b;     /* node "a" and node "b", open throughout */

static void two_nodes(void)
{
	CHECK_EQ(open_node(&a, "a"), MOSQ_ERR_SUCCESS);
	CHECK(a.created);
	CHECK_EQ(open_node(&b, "b"), MOSQ_ERR_SUCCESS);
	CHECK(!b.created);
	CHECK(a.store_id != 0);
	CHECK_EQ(a.store_id, b.store_id);
	CHECK(memcmp(a.frame_key, b.frame_key, 16) == 0);
	CHECK_STR(a.ops->name, "postgresql");
	CHECK_EQ(sql_int("SELECT version FROM im_schema_version"), SCHEMA_VERSION);
	CHECK_EQ(sql_int("SELECT count(*) FROM nodes"), 2);
}

static void append_and_dedup(void)
{
	struct im__tl *bob, *alice, *bob_b;
	struct im__msg m;
	struct im__appended d;
	int i;

	bob = timeline(&a, "u/bob", true);
	alice = timeline(&a, "u/alice", true);
	CHECK(bob && alice && bob != alice);
	CHECK(timeline(&a, "u/bob", false) == bob); /* one entry per timeline */
	CHECK(timeline(&a, "u/nobody", false) == NULL);
	if(!bob || !alice) return;
	for(i = 1; i <= 3; i++){
		char body[8];
		snprintf(body, sizeof(body), "m%d", i);
		m = msg("alice", "u/bob", NULL, body);
		CHECK_EQ(append(&a, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
		CHECK_EQ(d.seq, i);
		CHECK_EQ(d.own_seq, i);
		CHECK(!d.duplicate);
		CHECK_STR(d.timeline, "u/bob");
	}
	m = msg("alice", "u/bob", "c1", "with cmid");
	CHECK_EQ(append(&a, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 4);
	CHECK(!d.duplicate);
	/* A repeat through the other node: the original's values. */
	bob_b = timeline(&b, "u/bob", false);
	CHECK(bob_b && bob_b->head == 4);
	m = msg("alice", "u/bob", "c1", "again");
	CHECK_EQ(append(&b, bob_b, timeline(&b, "u/alice", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate);
	CHECK_EQ(d.seq, 4);
	CHECK_EQ(d.own_seq, 4);
	CHECK_STR(d.timeline, "u/bob");
	/* The same cmid to someone else is the same message. */
	m = msg("alice", "u/carol", "c1", "elsewhere");
	CHECK_EQ(append(&a, timeline(&a, "u/carol", true), alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate);
	CHECK_STR(d.timeline, "u/bob");
	CHECK_EQ(d.seq, 4);
	CHECK_EQ(timeline(&a, "u/carol", false)->head, 0);
	CHECK_EQ(timeline(&a, "u/bob", false)->head, 4); /* the repeats took no seq */
	/* Another sender may reuse the cmid. */
	m = msg("carol", "u/bob", "c1", "from carol");
	CHECK_EQ(append(&b, timeline(&b, "u/bob", false), NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate);
	CHECK_EQ(d.seq, 5);
	CHECK_EQ(d.own_seq, 0);
	/* Node a's cached head was a hint: the next call reads 5. */
	CHECK_EQ(timeline(&a, "u/bob", false)->head, 5);
	CHECK_EQ(timeline(&a, "u/alice", false)->head, 4);
	/* A repeat inside one batch sees the first copy. */
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	m = msg("dave", "u/bob", "x1", "once");
	CHECK_EQ(a.ops->append(&a, bob, timeline(&a, "u/dave", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 6);
	CHECK(timeline(&a, "u/bob", false) == bob && bob->head == 6); /* locked: exact, no read */
	CHECK_EQ(a.ops->append(&a, bob, timeline(&a, "u/dave", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 6 && d.own_seq == 1);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	/* A rolled-back batch gives its seqs back. */
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	m = msg("alice", "u/bob", NULL, "rolled back");
	CHECK_EQ(a.ops->append(&a, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 7);
	a.ops->rollback(&a);
	CHECK(bob->stale);
	CHECK_EQ(timeline(&a, "u/bob", false)->head, 6);
	CHECK(!bob->stale);
	m = msg("alice", "u/bob", NULL, "m7");
	CHECK_EQ(append(&a, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 7);
	CHECK_EQ(d.own_seq, 5);
	CHECK(gap_free("u/bob") && gap_free("u/alice") && gap_free("u/carol") && gap_free("u/dave"));
}

static void reopen_and_range(void)
{
	struct im__store st;
	struct im__tl *bob;
	struct collect c = {0};
	struct im__msg m;
	struct im__appended d;
	bool more;

	CHECK_EQ(open_node(&st, "r"), MOSQ_ERR_SUCCESS);
	bob = timeline(&st, "u/bob", false);
	CHECK(bob != NULL);
	if(bob == NULL) return;
	CHECK_EQ(bob->head, 7);
	CHECK_EQ(bob->first, 1);
	m = msg("alice", "u/bob", NULL, "after reopen");
	CHECK_EQ(append(&st, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 8);
	CHECK_EQ(st.ops->range(&st, bob, 2, 2, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK_EQ(c.seqs[0], 3);
	CHECK_EQ(c.seqs[1], 4);
	CHECK_STR(c.bodies[1], "with cmid");
	CHECK(more);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(st.ops->range(&st, bob, 6, 100, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK(!more);
	memset(&c, 0, sizeof(c));
	c.stop_after = 1;
	CHECK_EQ(st.ops->range(&st, bob, 0, 100, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK(more);
	/* Expired rows are skipped. */
	m = msg("alice", "u/bob", NULL, "expiring");
	m.expires_ms = m.ts_ms + 1000;
	CHECK_EQ(append(&st, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(st.ops->range(&st, bob, 8, 100, m.ts_ms, collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(st.ops->range(&st, bob, 8, 100, m.ts_ms + 1000, collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
	/* range refreshes head from its snapshot: another node wrote meanwhile. */
	m = msg("carol", "u/bob", NULL, "via a");
	CHECK_EQ(append(&a, timeline(&a, "u/bob", false), NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(bob->head, 9);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(st.ops->range(&st, bob, 9, 100, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK_EQ(bob->head, 10);
	st.ops->close(&st);
}

static void cursors(void)
{
	struct im__tl *bob = timeline(&a, "u/bob", false), *bob_b = timeline(&b, "u/bob", false);
	uint64_t v = 99;

	CHECK_EQ(a.ops->cursor_get(&a, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 0);
	CHECK_EQ(a.ops->cursor_get(&a, NULL, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(cursor_set(&a, bob, "bob", "phone", 3, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3);
	CHECK_EQ(cursor_set(&b, bob_b, "bob", "phone", 2, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3); /* never moves back, whichever node */
	CHECK_EQ(cursor_set(&b, bob_b, "bob", "phone", 5, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5);
	CHECK_EQ(cursor_set(&a, bob, "bob", "laptop", 1, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 1);
	CHECK_EQ(a.ops->cursor_get(&a, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5);
}

static void retention(void)
{
	struct im__tl *t, *tb;
	struct im__msg m;
	struct im__appended d;
	struct collect c = {0};
	int64_t cursor = 0, cursor_b = 0;
	bool done = false, done_b = false, more;
	int i, rows, total = 0, steps = 0;

	t = timeline(&a, "u/ret", true);
	for(i = 0; i < 30; i++){
		m = msg("alice", "u/ret", NULL, "r");
		m.ts_ms = 1000 + i; /* ancient */
		CHECK_EQ(append(&a, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	}
	/* Count limit: keep 10, 7 rows per step, both nodes sweeping at once. */
	tb = timeline(&b, "u/ret", false);
	do{
		if(!done){
			rows = a.ops->trim_step(&a, 0, 10, 7, &cursor, &done);
			CHECK(rows >= 0 && rows <= 7);
			total += rows;
		}
		if(!done_b){
			rows = b.ops->trim_step(&b, 0, 10, 7, &cursor_b, &done_b);
			CHECK(rows >= 0 && rows <= 7);
			total += rows;
		}
	}while((!done || !done_b) && ++steps < 100);
	CHECK_EQ(total, 20); /* each row deleted once */
	CHECK_EQ(timeline(&a, "u/ret", false)->first, 21);
	CHECK_EQ(t->head, 30);
	CHECK_EQ(timeline(&b, "u/ret", false)->first, 21);
	CHECK(tb == timeline(&b, "u/ret", false));
	CHECK_EQ(a.ops->range(&a, t, 0, 100, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 10);
	CHECK_EQ(c.seqs[0], 21);
	/* Age limit: everything is older than the cutoff; head stays. */
	cursor = 0;
	total = steps = 0;
	do{
		rows = b.ops->trim_step(&b, 5000, 0, 1000, &cursor, &done);
		total += rows;
	}while(!done && ++steps < 50);
	CHECK_EQ(total, 10);
	CHECK_EQ(timeline(&a, "u/ret", false)->first, 31);
	m = msg("alice", "u/ret", NULL, "after trim");
	CHECK_EQ(append(&a, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 31); /* the sequence never restarts */
	CHECK(gap_free("u/ret"));
}

static void encryption(void)
{
	struct im__crypt crypt;
	struct im__tl *t, *tb;
	struct im__msg m;
	struct im__appended d;
	struct collect c = {0};
	char keypath[300];
	FILE *f;
	bool more;

	snprintf(keypath, sizeof(keypath), "%s/keys", pgh_root);
	f = fopen(keypath, "w");
	fprintf(f, "1 %s\n2 %s\n", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
			"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100");
	fclose(f);
	CHECK_EQ(im_crypt__load(&crypt, keypath), MOSQ_ERR_SUCCESS);
	a.crypt = &crypt;
	t = timeline(&a, "u/sec", true);
	m = msg("alice", "u/sec", "sealed-1", "TOP-SECRET-BODY");
	CHECK_EQ(append(&a, t, timeline(&a, "u/alice", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 1);
	m = msg("alice", "u/sec", "sealed-1", "TOP-SECRET-BODY");
	CHECK_EQ(append(&a, t, timeline(&a, "u/alice", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 1);
	CHECK_EQ(a.ops->range(&a, t, 0, 10, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK_STR(c.bodies[0], "TOP-SECRET-BODY");
	CHECK_EQ(sql_int("SELECT key_id FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = 'u/sec'"), 2);
	CHECK_EQ(sql_int("SELECT position('TOP-SECRET'::bytea in body) FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = 'u/sec'"), 0);
	/* Without the keys, the row cannot be read: an error, not garbage. */
	tb = timeline(&b, "u/sec", false);
	memset(&c, 0, sizeof(c));
	CHECK(b.ops->range(&b, tb, 0, 10, im_now_ms(), collect_row, &c, &more) != MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
	/* A row moved to another seq no longer opens. */
	sql_int("UPDATE messages SET seq = 7 WHERE tl = %lld AND seq = 1", (long long)t->id);
	memset(&c, 0, sizeof(c));
	CHECK(a.ops->range(&a, t, 0, 10, im_now_ms(), collect_row, &c, &more) != MOSQ_ERR_SUCCESS);
	sql_int("UPDATE messages SET seq = 1 WHERE tl = %lld AND seq = 7", (long long)t->id);
	a.crypt = NULL;
	im_crypt__free(&crypt);
	unlink(keypath);
}

struct names { char v[16][IM_NAME_MAX + 1]; int n; };

static enum im_row name_row(void *ctx, const char *name)
{
	struct names *n = ctx;

	if(n->n < 16) snprintf(n->v[n->n++], IM_NAME_MAX + 1, "%s", name);
	return IM_ROW_NEXT;
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

static int change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
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
	m.flags = 1;
	m.content_type = "application/json";
	rc = tl ? st->ops->group_change(st, op, group, actor, users, n, tl, &m, seq) : MOSQ_ERR_UNKNOWN;
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

static void groups(void)
{
	char *add[] = {"bob", "carol"}, *rm[] = {"carol"}, *zed[] = {"zed"};
	struct im__group *g;
	struct names nm = {0};
	struct groups all = {0};
	struct collect c = {0};
	uint64_t seq = 0;
	bool err, more;
	size_t groups_cached;

	CHECK(a.ops->group(&a, "room", 4, &err) == NULL && !err);
	CHECK_EQ(change(&a, IM_GROUP_CREATE, "room", "alice", add, 2, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 1);
	g = a.ops->group(&a, "room", 4, &err);
	CHECK(g && !strcmp(g->owner, "alice") && g->members.count == 3);
	/* Node b loads it; then a removes carol: b's cache is stale until forgotten. */
	g = b.ops->group(&b, "room", 4, &err);
	CHECK(g && g->members.count == 3);
	CHECK_EQ(change(&a, IM_GROUP_REMOVE, "room", "alice", rm, 1, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 2);
	CHECK(a.ops->group(&a, "room", 4, &err)->members.count == 2);
	CHECK(b.ops->group(&b, "room", 4, &err)->members.count == 3);
	im_store__forget_group(&b, "room", 4);
	g = b.ops->group(&b, "room", 4, &err);
	CHECK(g && g->members.count == 2 && !im_map__get(&g->members, "carol", 5));
	/* b's change continues the same timeline. */
	CHECK_EQ(change(&b, IM_GROUP_LEAVE, "room", "bob", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 3);
	CHECK(gap_free("g/room"));
	CHECK_EQ(b.ops->range(&b, timeline(&b, "g/room", false), 0, 10, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 3);
	CHECK_STR(c.bodies[2], "{\"event\":3}");
	/* Creating a group that exists (another node made it) fails the
	 * batch; the rollback drops the cache, so the retry sees the group. */
	CHECK(b.ops->group(&b, "room", 4, &err) != NULL);
	CHECK_EQ(change(&a, IM_GROUP_CREATE, "later", "zed", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK(change(&b, IM_GROUP_CREATE, "later", "yan", zed, 1, &seq) != MOSQ_ERR_SUCCESS);
	b.ops->cached(&b, &groups_cached);
	CHECK_EQ(groups_cached, 0);
	g = b.ops->group(&b, "later", 5, &err);
	CHECK(g && !strcmp(g->owner, "zed"));
	CHECK(gap_free("g/later"));
	CHECK_EQ(timeline(&b, "g/later", false)->head, 1);
	/* Lists, in name order. */
	CHECK_EQ(change(&a, IM_GROUP_CREATE, "Aardvark", "alice", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->groups_of(&b, "alice", name_row, &nm), MOSQ_ERR_SUCCESS);
	CHECK_EQ(nm.n, 2);
	CHECK_STR(nm.v[0], "Aardvark");
	CHECK_STR(nm.v[1], "room");
	CHECK_EQ(b.ops->each_group(&b, group_row, &all), MOSQ_ERR_SUCCESS);
	CHECK_EQ(all.n, 3);
	CHECK_STR(all.name[0], "Aardvark");
	CHECK_EQ(all.members[0], 1);
	CHECK_STR(all.name[2], "room");
	CHECK_STR(all.owner[2], "alice");
	CHECK_EQ(all.members[2], 1);
}

struct pairs { int n; char v[8][40]; };

static enum im_row pair_row(void *ctx, const char *w, const char *r)
{
	struct pairs *p = ctx;

	if(p->n < 8) snprintf(p->v[p->n++], sizeof(p->v[0]), "%s>%s", w, r);
	return IM_ROW_NEXT;
}

static void contacts(void)
{
	struct pairs p = {0};
	bool first = false;

	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->wrote(&a, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(first);
	CHECK_EQ(a.ops->wrote(&a, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(!first);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->begin(&b), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->wrote(&b, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(!first); /* the other node noted it first */
	CHECK_EQ(b.ops->commit(&b, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->each_wrote(&b, pair_row, &p), MOSQ_ERR_SUCCESS);
	CHECK_EQ(p.n, 1);
	CHECK_STR(p.v[0], "alice>bob");
}

static void applied_lsn(void)
{
	struct im__store st;

	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->commit(&a, 100), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.applied_lsn, 100);
	CHECK_EQ(b.ops->begin(&b), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->commit(&b, 200), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS); /* 0 keeps */
	CHECK_EQ(a.applied_lsn, 100);
	/* A rolled-back batch records nothing. */
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	a.ops->rollback(&a);
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'a'"), 100);
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'b'"), 200);
	CHECK_EQ(open_node(&st, "b"), MOSQ_ERR_SUCCESS); /* b's position, read at open */
	CHECK_EQ(st.applied_lsn, 200);
	CHECK_EQ(st.store_id, b.store_id);
	/* The store id renewed by one node is written at its next commit. */
	CHECK_EQ(im_store__renew_id(&st), MOSQ_ERR_SUCCESS);
	CHECK(st.store_id != a.store_id);
	CHECK_EQ(st.ops->begin(&st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st.ops->commit(&st, 201), MOSQ_ERR_SUCCESS);
	st.ops->close(&st);
	CHECK_EQ(open_node(&st, "c"), MOSQ_ERR_SUCCESS);
	CHECK(st.store_id != a.store_id);
	CHECK_EQ(st.applied_lsn, 0);
	st.ops->close(&st);
	/* Opening node b again took its node_id over: the old b cannot commit. */
	CHECK_EQ(b.ops->begin(&b), MOSQ_ERR_SUCCESS);
	CHECK(b.ops->commit(&b, 300) != MOSQ_ERR_SUCCESS);
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'b'"), 201);
	b.ops->close(&b);
	CHECK_EQ(open_node(&b, "b"), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.applied_lsn, 201);
	CHECK(open_node(&st, "") != MOSQ_ERR_SUCCESS);
}

/* ---- two nodes at once ---- */

#define RACE_BATCHES 40
#define RACE_BATCH 8
#define RACE_SHARED (RACE_BATCHES * RACE_BATCH / 4)

struct racer {
	struct im__store st;
	const char *node, *me, *peer, *tag;
	int batches;
	bool backwards, prelock;
	int retries, lock_fails;
	uint64_t dup_seq[RACE_SHARED]; /* seq of each shared cmid */
	char dup_tl[RACE_SHARED][IM_TL_MAX + 1];
	bool failed;
};

/* Batch k of one racer: DMs to its peer, group messages, and cmids both
 * racers send. Retried whole, like the worker, until it commits. With
 * backwards, the second racer goes through the kinds in reverse, so the
 * two take the same timelines' locks in opposite orders: PostgreSQL (or
 * the lock_timeout) must break the deadlocks, one batch fails and is
 * retried. */
static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void *race(void *arg)
{
	struct racer *r = arg;
	char tl_peer[IM_TL_MAX + 1], tl_me[IM_TL_MAX + 1], tl_target[32], tl_shared[32], tl_group[32];
	char cmid[48], body[64], sender[32];
	struct im__appended d;
	struct im__msg m;
	int k, i, rc, idx, kind, sidx, attempt;

	snprintf(tl_peer, sizeof(tl_peer), "u/%s%s", r->peer, r->tag);
	snprintf(tl_me, sizeof(tl_me), "u/%s%s", r->me, r->tag);
	snprintf(tl_target, sizeof(tl_target), "u/target%s", r->tag);
	snprintf(tl_shared, sizeof(tl_shared), "u/shared%s", r->tag);
	snprintf(tl_group, sizeof(tl_group), "g/race%s", r->tag);
	snprintf(sender, sizeof(sender), "shared%s", r->tag);
	const char *all[] = {tl_group, tl_me, tl_peer, tl_shared, tl_target};
	const bool create[] = {true, true, true, true, true};

	qsort(all, 5, sizeof(all[0]), cmp_str);
	for(k = 0; k < r->batches; k++){
		for(attempt = 0;;){
			rc = r->st.ops->begin(&r->st);
			/* As the worker does: every timeline of the batch, in order. */
			if(rc == MOSQ_ERR_SUCCESS && r->prelock) rc = r->st.ops->prelock(&r->st, all, create, 5);
			for(i = 0; i < RACE_BATCH && rc == MOSQ_ERR_SUCCESS; i++){
				struct im__tl *to, *own = NULL;
				idx = k * RACE_BATCH + i;
				kind = r->backwards ? 3 - i % 4 : i % 4;
				sidx = k * (RACE_BATCH / 4) + i / 4;
				switch(kind){
					case 0: /* a DM, no cmid */
						snprintf(body, sizeof(body), "%s-dm-%d", r->node, idx);
						to = timeline(&r->st, tl_peer, true);
						own = timeline(&r->st, tl_me, true);
						m = msg(tl_me + 2, tl_peer, NULL, body);
						break;
					case 1: /* the same cmid from both racers */
						snprintf(cmid, sizeof(cmid), "shared-%d", sidx);
						snprintf(body, sizeof(body), "%s-shared-%d", r->node, sidx);
						to = timeline(&r->st, tl_target, true);
						own = timeline(&r->st, tl_shared, true);
						m = msg(sender, tl_target, cmid, body);
						break;
					default: /* the group */
						snprintf(body, sizeof(body), "%s-g-%d", r->node, idx);
						snprintf(cmid, sizeof(cmid), "%s-g-%d", r->node, idx);
						to = timeline(&r->st, tl_group, true);
						m = msg(tl_me + 2, tl_group, cmid, body);
						break;
				}
				rc = to ? r->st.ops->append(&r->st, to, own, &m, &d) : MOSQ_ERR_UNKNOWN;
				if(rc == MOSQ_ERR_SUCCESS && kind == 1){
					r->dup_seq[sidx] = d.seq;
					snprintf(r->dup_tl[sidx], sizeof(r->dup_tl[sidx]), "%s", d.timeline);
				}
			}
			if(rc == MOSQ_ERR_SUCCESS) rc = r->st.ops->commit(&r->st, (uint64_t)k + 1);
			else r->st.ops->rollback(&r->st);
			if(rc == MOSQ_ERR_SUCCESS) break;
			/* Approximate (the log line is shared by both threads). */
			if(stub_log_has("40P01") || stub_log_has("55P03")) r->lock_fails++;
			if(++r->retries > 200){
				r->failed = true;
				return NULL;
			}
			/* The worker's pause before a retry: 50 ms, doubling. */
			usleep((useconds_t)(50000u << (attempt < 5 ? attempt : 5)));
			attempt++;
		}
	}
	return NULL;
}

static long long count_tl(const char *name, const char *tag)
{
	return sql_int("SELECT head FROM timelines WHERE name = '%s%s'", name, tag);
}

static void concurrent_writers(const char *tag, int batches, bool backwards, bool prelock)
{
	struct racer r1 = {.node = "w1", .me = "ann", .peer = "ben", .tag = tag, .batches = batches, .prelock = prelock};
	struct racer r2 = {.node = "w2", .me = "ben", .peer = "ann", .tag = tag, .batches = batches, .backwards = backwards,
		.prelock = prelock};
	char name[64];
	pthread_t t1, t2;
	int i, shared = batches * RACE_BATCH / 4;
	long long t0 = pgh_now_ms();

	CHECK_EQ(open_node(&r1.st, r1.node), MOSQ_ERR_SUCCESS);
	CHECK_EQ(open_node(&r2.st, r2.node), MOSQ_ERR_SUCCESS);
	pthread_create(&t1, NULL, race, &r1);
	pthread_create(&t2, NULL, race, &r2);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	CHECK(!r1.failed && !r2.failed);
	printf("# two nodes, %s order%s: %d batches of %d each in %lld ms, %d + %d retries (%d deadlocks or lock timeouts seen)\n",
			backwards ? "opposite" : "the same", prelock ? ", prelocked" : "", batches, RACE_BATCH, pgh_now_ms() - t0,
			r1.retries, r2.retries, r1.lock_fails + r2.lock_fails);
	/* Locked up front in one order, the batches only ever wait. */
	if(prelock) CHECK_EQ(r1.retries + r2.retries, 0);
	/* Gap-free, each message once. */
	for(i = 0; i < 5; i++){
		static const char *const tls[] = {"u/ann", "u/ben", "u/target", "u/shared", "g/race"};
		snprintf(name, sizeof(name), "%s%s", tls[i], tag);
		CHECK(gap_free(name));
	}
	CHECK_EQ(count_tl("g/race", tag), batches * RACE_BATCH);
	CHECK_EQ(count_tl("u/ann", tag), batches * RACE_BATCH / 2);
	CHECK_EQ(count_tl("u/ben", tag), batches * RACE_BATCH / 2);
	CHECK_EQ(sql_int("SELECT count(DISTINCT body) FROM messages WHERE peer IN ('u/ann%s', 'u/ben%s')", tag, tag),
			batches * RACE_BATCH / 2);
	/* Each shared cmid stored once (and its copy once), both nodes told the same seq. */
	CHECK_EQ(count_tl("u/target", tag), shared);
	CHECK_EQ(count_tl("u/shared", tag), shared);
	CHECK_EQ(sql_int("SELECT count(*) FROM messages WHERE sender = 'shared%s' AND copy = 0", tag), shared);
	for(i = 0; i < shared; i++){
		CHECK_EQ(r1.dup_seq[i], r2.dup_seq[i]);
		snprintf(name, sizeof(name), "u/target%s", tag);
		CHECK_STR(r1.dup_tl[i], name);
		CHECK_EQ(r1.dup_seq[i], sql_int("SELECT seq FROM messages WHERE sender = 'shared%s' AND cmid = 'shared-%d' AND copy = 0", tag, i));
	}
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'w1'"), batches);
	r1.st.ops->close(&r1.st);
	r2.st.ops->close(&r2.st);
}

/* The dedup race made deterministic: node a has stored (sender, cmid) in
 * an open transaction; node b stores the same (to another timeline), so
 * its insert waits for a's transaction. */
struct second {
	struct im__store *st;
	const char *tl;
	struct im__appended d;
	int rc;
	int pid;
};

static void *second_append(void *arg)
{
	struct second *s = arg;
	struct im__msg m = msg("eve", s->tl, "same", "second");
	struct im__tl *t;

	s->rc = s->st->ops->begin(s->st);
	t = timeline(s->st, s->tl, true);
	if(s->rc == MOSQ_ERR_SUCCESS) s->rc = t ? s->st->ops->append(s->st, t, NULL, &m, &s->d) : MOSQ_ERR_UNKNOWN;
	if(s->rc == MOSQ_ERR_SUCCESS) s->rc = s->st->ops->commit(s->st, 0);
	else s->st->ops->rollback(s->st);
	return NULL;
}

static void dedup_race(bool sealed, bool first_commits)
{
	struct im__crypt crypt;
	struct second s2 = {0};
	struct pid_wait w;
	struct im__appended d;
	struct im__msg m;
	struct im__tl *one, *two;
	pthread_t t;
	char keypath[300], tl1[32], tl2[32];

	snprintf(tl1, sizeof(tl1), "g/one-%d%d", sealed, first_commits);
	snprintf(tl2, sizeof(tl2), "g/two-%d%d", sealed, first_commits);
	sql_int("DELETE FROM messages WHERE sender = 'eve'");
	if(sealed){
		snprintf(keypath, sizeof(keypath), "%s/keys", pgh_root);
		FILE *f = fopen(keypath, "w");
		fprintf(f, "3 %s\n", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
		fclose(f);
		CHECK_EQ(im_crypt__load(&crypt, keypath), MOSQ_ERR_SUCCESS);
		a.crypt = &crypt;
		b.crypt = &crypt;
	}
	two = timeline(&b, tl2, true);
	one = timeline(&a, tl1, true);
	CHECK(one && two);
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	m = msg("eve", tl1, "same", "first");
	CHECK_EQ(a.ops->append(&a, one, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 1);
	s2.st = &b;
	s2.tl = tl2;
	w.pid = backend_pid(&b);
	pthread_create(&t, NULL, second_append, &s2);
	CHECK(pgh_wait(pid_waits_on_lock, &w, 10000)); /* b's insert waits for a */
	if(first_commits){
		CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	}else{
		a.ops->rollback(&a);
	}
	pthread_join(t, NULL);
	CHECK_EQ(s2.rc, MOSQ_ERR_SUCCESS);
	if(first_commits){
		CHECK(s2.d.duplicate);
		CHECK_EQ(s2.d.seq, 1);
		CHECK_STR(s2.d.timeline, tl1);
		CHECK_EQ(timeline(&b, tl2, false)->head, 0); /* its seq given back */
	}else{
		CHECK(!s2.d.duplicate);
		CHECK_EQ(s2.d.seq, 1);
		CHECK_STR(s2.d.timeline, tl2);
		CHECK_EQ(timeline(&a, tl1, false)->head, 0);
	}
	CHECK_EQ(sql_int("SELECT count(*) FROM messages WHERE sender = 'eve' AND cmid = 'same'"), 1);
	CHECK(gap_free(tl1) && gap_free(tl2));
	if(sealed){
		a.crypt = NULL;
		b.crypt = NULL;
		im_crypt__free(&crypt);
		unlink(keypath);
	}
}

/* ---- conversations ---- */

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

struct convs { int n; char name[8][IM_TL_MAX + 1]; uint64_t last_seq[8], unread[8], peer_read[8]; int64_t ts[8];
	char preview[8][32]; };

static enum im_row conv_row(void *ctx, const struct im__conv *c)
{
	struct convs *k = ctx;

	if(k->n < 8){
		snprintf(k->name[k->n], sizeof(k->name[0]), "%c/%s", c->kind, c->name);
		snprintf(k->preview[k->n], sizeof(k->preview[0]), "%s", c->preview ? c->preview : "(none)");
		k->last_seq[k->n] = c->last_seq;
		k->unread[k->n] = c->unread;
		k->peer_read[k->n] = c->peer_read;
		k->ts[k->n] = c->last_ts;
		k->n++;
	}
	return IM_ROW_NEXT;
}

/* One write op in a batch of its own. */
static int note(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts, const char *sender,
		const char *preview, int unread_add)
{
	int rc = st->ops->begin(st);

	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->note_last(st, owner, peer, seq, ts, sender, 0, preview, unread_add);
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

static int read_mark(struct im__store *st, const char *tl, const char *user, uint64_t seq, uint64_t *before, uint64_t *after,
		struct names *peers)
{
	struct im__tl *t;
	int rc = st->ops->begin(st);

	t = timeline(st, tl, false);
	if(rc == MOSQ_ERR_SUCCESS) rc = t ? st->ops->read_mark(st, t, user, seq, before, after, name_row, peers) : MOSQ_ERR_UNKNOWN;
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

static int amend(struct im__store *st, const char *tl, uint64_t seq, const char *body, uint32_t flags)
{
	struct im__tl *t = timeline(st, tl, false);
	int rc = st->ops->begin(st);

	if(rc == MOSQ_ERR_SUCCESS) rc = t ? st->ops->amend(st, t, seq, body, body ? strlen(body) : 0, 0, flags) : MOSQ_ERR_UNKNOWN;
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

static long long unread(const char *owner, const char *peer)
{
	return sql_int("SELECT unread FROM convs WHERE owner = '%s' AND peer = '%s'", owner, peer);
}

/* Each op through the seam, node a and node b on the same rows. */
static void conversation_ops(void)
{
	struct im__tl *carl, *dora;
	struct im__appended d, d2;
	struct im__msg_ref ref;
	struct im__msg m;
	struct collect c = {0};
	struct marks k = {0};
	struct convs cv = {0};
	struct names peers = {0};
	const char *names[] = {"u/carl", "u/dora"};
	const bool create[] = {true, true};
	uint64_t before, after;
	bool found, yes, more;
	int i;

	CHECK_EQ(sql_int("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('reads', 'convs', 'group_last')"), 3);
	/* A DM: each row names the other's seq, whether the second timeline's
	 * seq was known up front (locked) or learnt after. */
	carl = timeline(&a, "u/carl", true);
	dora = timeline(&a, "u/dora", true);
	CHECK(carl && dora);
	if(!carl || !dora) return;
	m = msg("dora", "u/carl", "dc-1", "hello carl");
	CHECK_EQ(append(&a, carl, dora, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 1 && d.own_seq == 1);
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->prelock(&a, names, create, 2), MOSQ_ERR_SUCCESS);
	CHECK(im_pg__locked(im_pg(&a), carl) && im_pg__locked(im_pg(&a), dora));
	m = msg("carl", "u/dora", "cd-1", "hi dora");
	CHECK_EQ(a.ops->append(&a, dora, carl, &m, &d), MOSQ_ERR_SUCCESS);
	m = msg("dora", "u/carl", "dc-2", "how are you");
	CHECK_EQ(a.ops->append(&a, carl, dora, &m, &d2), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 2 && d.own_seq == 2 && d2.seq == 3 && d2.own_seq == 3);
	CHECK_EQ(sql_int("SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl JOIN messages o ON o.seq = m.peer_seq"
				" AND o.peer_seq = m.seq AND o.sender = m.sender AND o.cmid = m.cmid AND o.copy <> m.copy"
				" WHERE t.name IN ('u/carl', 'u/dora')"), 6);
	/* dedup and lookup, on the other node. */
	CHECK_EQ(b.ops->dedup(&b, "dora", "dc-2", &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 3 && d.own_seq == 3 && !strcmp(d.timeline, "u/carl"));
	CHECK_EQ(b.ops->dedup(&b, "dora", "nope", &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate);
	CHECK_EQ(b.ops->lookup(&b, timeline(&b, "u/carl", false), 3, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && !strcmp(ref.sender, "dora") && ref.peer_seq == 3 && ref.copy == 0 && ref.flags == 0);
	CHECK_EQ(b.ops->lookup(&b, timeline(&b, "u/dora", false), 3, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(found && ref.copy == 1 && ref.peer_seq == 3);
	CHECK_EQ(b.ops->lookup(&b, timeline(&b, "u/carl", false), 99, &found, &ref), MOSQ_ERR_SUCCESS);
	CHECK(!found);

	/* An edit: the new body, flagged edited (compressed cleared); its
	 * event row names the message (ref_seq), read back by range. */
	sql_int("UPDATE messages SET flags = 2 WHERE tl = %lld AND seq = 3", (long long)carl->id);
	CHECK_EQ(amend(&b, "u/carl", 3, "how are you?", 16), MOSQ_ERR_SUCCESS);
	CHECK_EQ(sql_int("SELECT flags FROM messages WHERE tl = %lld AND seq = 3", (long long)carl->id), 16);
	m = msg("dora", "u/carl", "dc-2e", "how are you?");
	m.flags = 4;
	m.ref_seq = 3;
	m.own_ref_seq = 3;
	CHECK_EQ(append(&b, timeline(&b, "u/carl", false), timeline(&b, "u/dora", false), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.seq == 4 && d.own_seq == 4);
	CHECK_EQ(sql_int("SELECT ref_seq FROM messages WHERE tl = %lld AND seq = 4", (long long)dora->id), 3);
	CHECK_EQ(a.ops->range(&a, timeline(&a, "u/carl", false), 2, 10, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK(c.n == 2 && !strcmp(c.bodies[0], "how are you?") && !strcmp(c.bodies[1], "how are you?"));
	/* A recall erases the body and its edits' bodies. */
	CHECK_EQ(amend(&a, "u/carl", 3, NULL, 32), MOSQ_ERR_SUCCESS);
	CHECK_EQ(sql_int("SELECT count(*) FROM messages WHERE tl = %lld AND seq IN (3, 4) AND length(body) = 0 AND (flags & 32) <> 0",
				(long long)carl->id), 2);
	CHECK_EQ(sql_int("SELECT length(body) FROM messages WHERE tl = %lld AND seq = 1", (long long)carl->id), 10);

	/* note_last from both nodes: unread adds up, last only moves forward. */
	CHECK_EQ(note(&a, "carl", "dora", 1, 1000, "dora", "hello carl", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&b, "carl", "dora", 3, 3000, "dora", "how are you", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&a, "carl", "dora", 2, 2000, "carl", "late", 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&b, "dora", "carl", 2, 2000, "carl", NULL, 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&a, NULL, "room", 3, 2500, "bob", "in the room", 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&b, NULL, "room", 2, 2400, "bob", "older", 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread("carl", "dora"), 2);
	CHECK_EQ(sql_int("SELECT last_seq FROM convs WHERE owner = 'carl' AND peer = 'dora'"), 3);
	CHECK_EQ(sql_int("SELECT last_ts FROM convs WHERE owner = 'carl' AND peer = 'dora'"), 3000);
	CHECK_EQ(sql_int("SELECT last_seq FROM group_last WHERE grp = 'room'"), 3);
	CHECK_EQ(b.ops->has_conv(&b, "carl", "dora", &yes), MOSQ_ERR_SUCCESS);
	CHECK(yes);
	CHECK_EQ(b.ops->has_conv(&b, "carl", "zoe", &yes), MOSQ_ERR_SUCCESS);
	CHECK(!yes);

	/* Read marks: up only; in the own inbox the peers' messages now read
	 * leave unread (dora's at seqs 1 and 3 of u/carl; 2 is carl's copy). */
	CHECK_EQ(read_mark(&b, "u/carl", "carl", 1, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 0 && after == 1 && peers.n == 1 && !strcmp(peers.v[0], "dora"));
	CHECK_EQ(unread("carl", "dora"), 1);
	peers.n = 0;
	CHECK_EQ(read_mark(&a, "u/carl", "carl", 1, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 1 && after == 1 && peers.n == 0);
	CHECK_EQ(read_mark(&a, "u/carl", "carl", 4, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 1 && after == 4 && peers.n == 1);
	CHECK_EQ(unread("carl", "dora"), 0); /* 3 (the recalled one) and 4 (its edit) counted, never below 0 */
	peers.n = 0;
	CHECK_EQ(read_mark(&b, "u/carl", "dora", 2, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 0 && after == 2 && peers.n == 0); /* not dora's inbox: no counts */
	CHECK_EQ(read_mark(&b, "u/dora", "dora", 4, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread("dora", "carl"), 0);
	CHECK_EQ(a.ops->reads_of(&a, timeline(&a, "u/carl", false), NULL, mark_row, &k), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 2 && !strcmp(k.user[0], "carl") && k.seq[0] == 4 && !strcmp(k.user[1], "dora") && k.seq[1] == 2);
	k.n = 0;
	CHECK_EQ(a.ops->reads_of(&a, timeline(&a, "u/carl", false), "dora", mark_row, &k), MOSQ_ERR_SUCCESS);
	CHECK(k.n == 1 && k.seq[0] == 2);

	/* The list: carl's conversation with dora and the group room (carl a
	 * member), latest first, paged strictly before a (ts, timeline). */
	sql_int("INSERT INTO groups(name, owner, created_ms) VALUES('room', 'bob', 0) ON CONFLICT DO NOTHING");
	sql_int("INSERT INTO members(grp, usr, joined_ms) VALUES('room', 'carl', 0) ON CONFLICT DO NOTHING");
	CHECK(timeline(&a, "g/room", true) != NULL);
	CHECK_EQ(note(&a, "carl", "eli", 9, 2500, "eli", "same ts", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->conversations(&b, "carl", 10, 0, NULL, conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK_EQ(cv.n, 3);
	CHECK_STR(cv.name[0], "u/dora");
	CHECK(cv.last_seq[0] == 3 && cv.unread[0] == 0 && cv.peer_read[0] == 4 && !strcmp(cv.preview[0], "how are you"));
	CHECK_STR(cv.name[1], "u/eli");   /* ts 2500 both: "u/eli" > "g/room" */
	CHECK_EQ(cv.peer_read[1], 0);
	CHECK_STR(cv.name[2], "g/room");
	CHECK(cv.last_seq[2] == 3 && cv.unread[2] == 3 && !strcmp(cv.preview[2], "in the room"));
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(b.ops->conversations(&b, "carl", 1, 2500, "u/eli", conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK(cv.n == 1 && !strcmp(cv.name[0], "g/room"));
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(b.ops->conversations(&b, "carl", 2, 0, NULL, conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK_EQ(cv.n, 2);
	CHECK_EQ(read_mark(&b, "g/room", "carl", 2, &before, &after, &peers), MOSQ_ERR_SUCCESS);
	memset(&cv, 0, sizeof(cv));
	CHECK_EQ(a.ops->conversations(&a, "carl", 10, 2500, "u/eli", conv_row, &cv), MOSQ_ERR_SUCCESS);
	CHECK(cv.n == 1 && cv.unread[0] == 1);
	for(i = 0; i < 2; i++) CHECK(gap_free(names[i]));
}

/* Two devices of one user acknowledge on two nodes at once: node a has
 * moved the mark (open transaction), node b's move waits for it and then
 * counts only what a did not: unread is exact, not decremented twice. */
struct reader { struct im__store *st; uint64_t seq, before, after; int rc; struct names peers; };

static void *second_read(void *arg)
{
	struct reader *r = arg;

	r->rc = read_mark(r->st, "u/fay", "fay", r->seq, &r->before, &r->after, &r->peers);
	return NULL;
}

static void read_race(void)
{
	struct im__tl *fay = timeline(&a, "u/fay", true), *t;
	struct reader r = {.st = &b, .seq = 5};
	struct names peers = {0};
	struct im__appended d;
	struct pid_wait w;
	struct im__msg m;
	uint64_t before, after;
	pthread_t th;
	int i;

	for(i = 0; i < 6; i++){
		m = msg(i % 2 ? "gus" : "hal", "u/fay", NULL, "x");
		CHECK_EQ(append(&a, fay, NULL, &m, &d), MOSQ_ERR_SUCCESS);
		CHECK_EQ(note(&a, "fay", m.sender, d.seq, m.ts_ms, m.sender, "x", 1), MOSQ_ERR_SUCCESS);
	}
	CHECK(unread("fay", "hal") == 3 && unread("fay", "gus") == 3);
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	t = timeline(&a, "u/fay", false);
	CHECK_EQ(a.ops->read_mark(&a, t, "fay", 3, &before, &after, name_row, &peers), MOSQ_ERR_SUCCESS);
	CHECK(before == 0 && after == 3);
	w.pid = backend_pid(&b);
	pthread_create(&th, NULL, second_read, &r);
	CHECK(pgh_wait(pid_waits_on_lock, &w, 10000));
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	pthread_join(th, NULL);
	CHECK_EQ(r.rc, MOSQ_ERR_SUCCESS);
	CHECK(r.before == 3 && r.after == 5);
	CHECK_EQ(unread("fay", "hal"), 0);  /* seqs 1, 3, 5 */
	CHECK_EQ(unread("fay", "gus"), 1);  /* seq 6 still unread */
}

/* ---- opposite lock orders: with and without prelock ---- */

/* Batch "b" of two messages, to `first` then `second`, on node b. */
struct opposite { struct im__store *st; const char *first, *second; bool prelock; int rc; bool deadlock; };

static int two_appends(struct im__store *st, const char *first, const char *second, bool prelock, bool *deadlock,
		void (*between)(void))
{
	const char *names[2] = {strcmp(first, second) < 0 ? first : second, strcmp(first, second) < 0 ? second : first};
	const bool create[2] = {true, true};
	struct im__appended d;
	struct im__msg m;
	int rc = st->ops->begin(st);

	if(rc == MOSQ_ERR_SUCCESS && prelock) rc = st->ops->prelock(st, names, create, 2);
	m = msg("ivy", first, NULL, "one");
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->append(st, timeline(st, first, true), NULL, &m, &d);
	if(between) between();
	m = msg("ivy", second, NULL, "two");
	if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->append(st, timeline(st, second, true), NULL, &m, &d);
	if(rc != MOSQ_ERR_SUCCESS) *deadlock = stub_log_has("40P01");
	if(rc == MOSQ_ERR_SUCCESS) return st->ops->commit(st, 0);
	st->ops->rollback(st);
	return rc;
}

static void *opposite_batch(void *arg)
{
	struct opposite *o = arg;

	o->rc = two_appends(o->st, o->first, o->second, o->prelock, &o->deadlock, NULL);
	return NULL;
}

static struct pid_wait opposite_wait;
static struct opposite *opposite_b;
static pthread_t opposite_th;

/* Between a's two appends: b's batch starts, and runs until it waits. */
static void start_b(void)
{
	pthread_create(&opposite_th, NULL, opposite_batch, opposite_b);
	CHECK(pgh_wait(pid_waits_on_lock, &opposite_wait, 10000));
}

/* Node a's batch writes X then Y; node b's, started once a holds X,
 * writes Y then X. Without prelock, b takes Y, waits for X, and a's
 * append to Y closes the cycle: PostgreSQL fails one batch (40P01) after
 * deadlock_timeout. With prelock both lock {X, Y} in name order first: b
 * waits for a's commit, and both commit. */
static void opposite_batches(bool prelock)
{
	struct opposite o = {.st = &b, .first = prelock ? "u/opp-y2" : "u/opp-y1", .second = prelock ? "u/opp-x2" : "u/opp-x1",
		.prelock = prelock};
	long long stat0 = sql_int("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()");
	bool a_deadlock = false;
	int rc_a, deadlocks;

	CHECK(timeline(&a, o.first, true) && timeline(&a, o.second, true));
	opposite_wait.pid = backend_pid(&b);
	opposite_b = &o;
	stub_last_log[0] = '\0';
	/* a: X (b's second), then, once b waits, Y (b's first). */
	rc_a = two_appends(&a, o.second, o.first, prelock, &a_deadlock, start_b);
	pthread_join(opposite_th, NULL);
	deadlocks = (rc_a != MOSQ_ERR_SUCCESS) + (o.rc != MOSQ_ERR_SUCCESS);
	printf("# opposite-order batches on two nodes, %s: %d of 2 failed (%s), pg_stat_database.deadlocks +%lld so far\n",
			prelock ? "prelocked" : "not prelocked", deadlocks, a_deadlock || o.deadlock ? "deadlock detected" : "no deadlock",
			sql_int("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") - stat0);
	if(prelock){
		CHECK_EQ(deadlocks, 0);
		CHECK(gap_free(o.first) && gap_free(o.second));
		CHECK_EQ(count_tl(o.first, ""), 2);
	}else{
		CHECK_EQ(deadlocks, 1);
		CHECK(a_deadlock || o.deadlock);
	}
}

static void killed_connection(void)
{
	struct im__tl *t;
	struct im__msg m1 = msg("kim", "u/kill", NULL, "k1"), m2 = msg("kim", "u/kill", "k2", "k2");
	struct im__appended d;
	struct collect c = {0};
	int pid = 0, attempts = 0, rc;
	int64_t cursor = 0;
	bool more, done;

	t = timeline(&a, "u/kill", true);
	/* Killed in the middle of a batch: that operation fails, the next
	 * begin connects again, the retried batch stores each message once. */
	for(;;){
		attempts++;
		rc = a.ops->begin(&a);
		if(rc == MOSQ_ERR_SUCCESS) rc = a.ops->append(&a, t, NULL, &m1, &d);
		if(rc == MOSQ_ERR_SUCCESS && attempts == 1){
			pid = backend_pid(&a);
			kill_backend(pid);
		}
		if(rc == MOSQ_ERR_SUCCESS){
			rc = a.ops->append(&a, t, NULL, &m2, &d);
			if(attempts == 1) CHECK(rc != MOSQ_ERR_SUCCESS);
		}
		if(rc == MOSQ_ERR_SUCCESS) rc = a.ops->commit(&a, 0);
		else a.ops->rollback(&a);
		if(rc == MOSQ_ERR_SUCCESS || attempts > 3) break;
	}
	CHECK_EQ(rc, MOSQ_ERR_SUCCESS);
	CHECK_EQ(attempts, 2);
	CHECK(backend_pid(&a) != pid);
	CHECK(!d.duplicate && d.seq == 2);
	CHECK_EQ(a.ops->range(&a, timeline(&a, "u/kill", false), 0, 10, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK_STR(c.bodies[0], "k1");
	CHECK_STR(c.bodies[1], "k2");
	CHECK(gap_free("u/kill"));
	/* Killed while idle: begin notices and connects again by itself. */
	kill_backend(backend_pid(&a));
	m1 = msg("kim", "u/kill", NULL, "k3");
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	t = timeline(&a, "u/kill", false);
	CHECK(t != NULL);
	CHECK_EQ(a.ops->append(&a, t, NULL, &m1, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 3);
	/* The connection that makes timelines, killed while idle: the next
	 * timeline is made on a new one, in the same call. */
	pid = (int)sql_int("SELECT pid FROM pg_stat_activity WHERE application_name = 'mosquitto-im a' AND pid <> %d",
			backend_pid(&a));
	CHECK(pid > 0);
	kill_backend(pid);
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK(timeline(&a, "u/kill2", true) != NULL);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	/* Reads outside a batch fail once; retention connects again itself. */
	kill_backend(backend_pid(&a));
	CHECK(timeline(&a, "u/nothing", false) == NULL);
	CHECK(a.ops->trim_step(&a, 0, 0, 10, &cursor, &done) >= 0);
	CHECK(timeline(&a, "u/kill", false) != NULL);
}

/* The connection lost around COMMIT: before it was sent (it did not take:
 * the batch fails and its retry stores it once), or after the server
 * committed but before the answer arrived (pg_commit asks the node's
 * commit_no after reconnecting: it took, and commit reports success). */
static bool lose_before, lose_after;
static int hook_pid;

static bool committed(void *ctx)
{
	(void)ctx;
	return sql_int("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'idle'", hook_pid) == 1;
}

static void commit_hook(PGconn *conn, bool sent)
{
	if((sent && lose_after) || (!sent && lose_before)){
		int dead = socket(AF_INET, SOCK_STREAM, 0);
		if(sent) CHECK(pgh_wait(committed, NULL, 10000)); /* the server has answered */
		/* An unconnected socket in its place: the connection (and an
		 * answer waiting in it) is gone, libpq's next read or write fails. */
		dup2(dead, PQsocket(conn));
		close(dead);
		lose_before = lose_after = false;
	}
}

static void lost_commit(void)
{
	struct im__tl *t;
	struct im__msg m;
	struct im__appended d;
	int attempts, rc, i;
	const char *bodies[] = {"c1", "c2"};

	im_pg__commit_hook = commit_hook;
	for(i = 0; i < 2; i++){
		m = msg("lou", "u/lost", NULL, bodies[i]);
		for(attempts = 1; attempts < 5; attempts++){
			rc = a.ops->begin(&a);
			t = rc == MOSQ_ERR_SUCCESS ? timeline(&a, "u/lost", true) : NULL;
			rc = t ? a.ops->append(&a, t, NULL, &m, &d) : MOSQ_ERR_UNKNOWN;
			if(rc == MOSQ_ERR_SUCCESS){
				if(attempts == 1){
					hook_pid = backend_pid(&a);
					lose_before = i == 0;
					lose_after = i == 1;
				}
				rc = a.ops->commit(&a, 1000 + (uint64_t)i);
			}else{
				a.ops->rollback(&a);
			}
			if(rc == MOSQ_ERR_SUCCESS) break;
		}
		CHECK_EQ(rc, MOSQ_ERR_SUCCESS);
		CHECK_EQ(attempts, i == 0 ? 2 : 1);  /* lost before: retried; lost after: it took */
		CHECK(backend_pid(&a) != hook_pid);  /* a new connection either way */
		CHECK_EQ(d.seq, i + 1);
		CHECK_EQ(a.applied_lsn, 1000 + i);
	}
	im_pg__commit_hook = NULL;
	CHECK(gap_free("u/lost"));
	CHECK_EQ(sql_int("SELECT count(*) FROM messages m JOIN timelines t ON t.id = m.tl WHERE t.name = 'u/lost'"), 2);
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'a'"), 1001);
	/* The next batch carries on. */
	m = msg("lou", "u/lost", NULL, "c3");
	CHECK_EQ(append(&a, timeline(&a, "u/lost", false), NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 3);
}

static void migrations(void)
{
	struct im__store st;
	long long rows = sql_int("SELECT count(*) FROM messages");

	/* Re-running every migration leaves the same schema and data. */
	sql_int("UPDATE im_schema_version SET version = 0");
	CHECK_EQ(open_node(&st, "m"), MOSQ_ERR_SUCCESS);
	CHECK_EQ(sql_int("SELECT version FROM im_schema_version"), SCHEMA_VERSION);
	CHECK_EQ(sql_int("SELECT count(*) FROM messages"), rows);
	CHECK_EQ(st.store_id, b.store_id);
	st.ops->close(&st);
	/* A schema from a newer plugin is refused, not touched. */
	sql_int("UPDATE im_schema_version SET version = 999");
	CHECK(open_node(&st, "m") != MOSQ_ERR_SUCCESS);
	sql_int("UPDATE im_schema_version SET version = %d", SCHEMA_VERSION);
}

struct opener { struct im__store st; char node[8]; int rc; };

static void *open_one(void *arg)
{
	struct opener *o = arg;

	o->rc = open_node(&o->st, o->node);
	return NULL;
}

/* A fresh database, three nodes starting at once: one schema, one id. */
static void concurrent_open(void)
{
	struct opener o[3];
	pthread_t t[3];
	char saved[256];
	int i;

	snprintf(saved, sizeof(saved), "%s", uri);
	sql_int("CREATE DATABASE fresh");
	snprintf(uri, sizeof(uri), "postgresql://postgres@127.0.0.1:%d/fresh", primary.port);
	for(i = 0; i < 3; i++){
		snprintf(o[i].node, sizeof(o[i].node), "n%d", i);
		pthread_create(&t[i], NULL, open_one, &o[i]);
	}
	for(i = 0; i < 3; i++) pthread_join(t[i], NULL);
	for(i = 0; i < 3; i++) CHECK_EQ(o[i].rc, MOSQ_ERR_SUCCESS);
	if(o[0].rc == 0 && o[1].rc == 0 && o[2].rc == 0){
		CHECK_EQ(o[0].st.store_id, o[1].st.store_id);
		CHECK_EQ(o[1].st.store_id, o[2].st.store_id);
		CHECK(memcmp(o[0].st.frame_key, o[2].st.frame_key, 16) == 0);
		CHECK_EQ(o[0].st.created + o[1].st.created + o[2].st.created, 1);
	}
	for(i = 0; i < 3; i++) im_store__close(&o[i].st);
	snprintf(uri, sizeof(uri), "%s", saved);
}

/* Several hosts: the first refuses, the second is the primary. */
static void several_hosts(void)
{
	struct im__store st;
	char saved[256];
	int dead = pgh_free_port();

	snprintf(saved, sizeof(saved), "%s", uri);
	snprintf(uri, sizeof(uri), "postgresql://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?target_session_attrs=read-write&connect_timeout=3",
			dead, primary.port);
	CHECK_EQ(open_node(&st, "h"), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st.store_id, b.store_id);
	im_store__close(&st);
	snprintf(uri, sizeof(uri), "%s", saved);
}

struct caught_up { struct pg_server *standby; };

static bool standby_caught_up(void *ctx)
{
	(void)ctx;
	return sql_int("SELECT count(*) FROM pg_stat_replication WHERE replay_lsn = pg_current_wal_lsn()") == 1;
}

struct fo_batch { struct im__store *st; struct im__msg *m; struct im__appended *d; int attempts, rc; };

/* One attempt of the batch the failover test retries. */
static bool failover_batch(void *ctx)
{
	struct fo_batch *fb = ctx;
	struct im__tl *t;
	int rc;

	fb->attempts++;
	rc = fb->st->ops->begin(fb->st);
	t = rc == MOSQ_ERR_SUCCESS ? timeline(fb->st, "u/fail", true) : NULL;
	rc = t ? fb->st->ops->append(fb->st, t, NULL, fb->m, fb->d) : MOSQ_ERR_UNKNOWN;
	if(rc == MOSQ_ERR_SUCCESS) rc = fb->st->ops->commit(fb->st, 5);
	else fb->st->ops->rollback(fb->st);
	fb->rc = rc;
	return rc == MOSQ_ERR_SUCCESS;
}

/* A standby promoted when the primary stops: the store, given both hosts
 * with target_session_attrs=read-write, carries on with the new primary. */
static void failover(void)
{
	struct pg_server standby;
	struct im__store st;
	struct im__tl *t;
	struct im__msg m;
	struct im__appended d;
	struct fo_batch fb = {0};
	char saved[256];
	int rc = MOSQ_ERR_UNKNOWN, attempts = 0;

	if(!pgh_standby(&standby, &primary, "standby")){
		CHECK(!"the standby started");
		return;
	}
	snprintf(saved, sizeof(saved), "%s", uri);
	snprintf(uri, sizeof(uri), "postgresql://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?target_session_attrs=read-write&connect_timeout=3",
			standby.port, primary.port);
	CHECK_EQ(open_node(&st, "f"), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st.store_id, b.store_id);
	t = timeline(&st, "u/fail", true);
	m = msg("fay", "u/fail", "f1", "before");
	CHECK_EQ(append(&st, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(d.seq, 1);
	CHECK(pgh_wait(standby_caught_up, NULL, 20000));
	PQfinish(admin);
	admin = NULL;
	pgh_stop(&primary, "fast");
	CHECK(pgh_promote(&standby));
	/* The batch is retried, as the worker does, until the reconnect finds
	 * the new primary (within a deadline). */
	m = msg("fay", "u/fail", "f2", "after");
	fb.st = &st;
	fb.m = &m;
	fb.d = &d;
	CHECK(pgh_wait(failover_batch, &fb, 30000));
	attempts = fb.attempts;
	rc = fb.rc;
	printf("# failover: the batch committed at attempt %d\n", attempts);
	CHECK_EQ(rc, MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate);
	CHECK_EQ(d.seq, 2);
	CHECK_EQ(PQport(im_pg(&st)->conn) ? atoi(PQport(im_pg(&st)->conn)) : 0, standby.port);
	admin = PQconnectdb(uri);
	CHECK(gap_free("u/fail"));
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'f'"), 5);
	st.ops->close(&st);
	pgh_stop(&standby, "immediate");
	snprintf(uri, sizeof(uri), "%s", saved);
}

/* ---- appends per second ---- */

static double bench(struct im__store *st, int batch, int total, bool dm)
{
	char to[32], own[32], cmid[48], body[120];
	struct im__appended d;
	struct im__msg m;
	struct im__tl *t, *o;
	long long t0 = pgh_now_ms();
	int done = 0, i, rc;
	static int run;

	run++;
	memset(body, 'x', sizeof(body) - 1);
	body[sizeof(body) - 1] = '\0';
	while(done < total){
		rc = st->ops->begin(st);
		for(i = 0; i < batch && rc == MOSQ_ERR_SUCCESS; i++, done++){
			/* As the worker does: both timelines looked up, then the append. */
			snprintf(to, sizeof(to), dm ? "u/b%d" : "g/bench%d", done % 50);
			snprintf(own, sizeof(own), "u/s%d", done % 37);
			snprintf(cmid, sizeof(cmid), "bench-%d-%d-%d", run, batch, done);
			t = timeline(st, to, true);
			o = dm ? timeline(st, own, true) : NULL;
			m = msg(own + 2, to, cmid, body);
			rc = t ? st->ops->append(st, t, o, &m, &d) : MOSQ_ERR_UNKNOWN;
		}
		if(rc == MOSQ_ERR_SUCCESS) rc = st->ops->commit(st, (uint64_t)done);
		else st->ops->rollback(st);
		if(rc != MOSQ_ERR_SUCCESS){
			fprintf(stderr, "bench: a batch failed\n");
			return 0;
		}
	}
	return total * 1000.0 / (double)(pgh_now_ms() - t0 + 1);
}

static void run_bench(void)
{
	struct im__store st;
	const int sizes[] = {1, 16, 256};
	size_t i;

	CHECK_EQ(open_node(&st, "bench"), MOSQ_ERR_SUCCESS);
	printf("synchronous_commit = on, fsync on, loopback; messages/s through the seam (timeline x2 + append per DM)\n");
	for(i = 0; i < 3; i++){
		int n = sizes[i] == 1 ? 2000 : sizes[i] == 16 ? 8000 : 20480;
		double dm = bench(&st, sizes[i], n, true);
		double grp = bench(&st, sizes[i], n, false);
		printf("batch %3d: %8.0f DMs/s (%.0f rows/s), %8.0f group messages/s\n", sizes[i], dm, 2 * dm, grp);
	}
	st.ops->close(&st);
}

/* ---- main ---- */

static void cleanup(void)
{
	if(admin) PQfinish(admin);
	admin = NULL;
	pgh_stop(&primary, "immediate");
	pgh_remove_root();
}

static void on_signal(int sig)
{
	cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

int main(int argc, char **argv)
{
	bool do_bench = argc > 1 && !strcmp(argv[1], "--bench");

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
		setenv("IM_PG_KEEP", "1", 1);
		return 1;
	}
	pgh_uri(&primary, uri, sizeof(uri));
	if(getenv("IM_URI_SUFFIX")) strncat(uri, getenv("IM_URI_SUFFIX"), sizeof(uri) - strlen(uri) - 1);
	admin = PQconnectdb(uri);
	if(PQstatus(admin) != CONNECTION_OK){
		fprintf(stderr, "admin connection: %s", PQerrorMessage(admin));
		return 1;
	}
	if(do_bench){
		run_bench();
		return TAP_DONE();
	}
	two_nodes();
	append_and_dedup();
	reopen_and_range();
	cursors();
	retention();
	encryption();
	groups();
	contacts();
	applied_lsn();
	conversation_ops();
	read_race();
	concurrent_writers("", RACE_BATCHES, false, false);
	concurrent_writers("-x", getenv("IM_RACE_N") ? atoi(getenv("IM_RACE_N")) : 12, true, false);
	concurrent_writers("-p", getenv("IM_RACE_N") ? atoi(getenv("IM_RACE_N")) : 12, true, true);
	opposite_batches(false);
	opposite_batches(true);
	dedup_race(false, true);
	dedup_race(false, false);
	dedup_race(true, true);
	killed_connection();
	lost_commit();
	migrations();
	concurrent_open();
	several_hosts();
	im_store__close(&a);
	im_store__close(&b);
	failover();
	return TAP_DONE();
}
