/* The PostgreSQL store against a real server: the store suite
 * (store_suite.c), then what only several brokers (nodes) sharing one
 * database have: what one node stored, seen and continued by another
 * (dedup, heads, ranges, cursors, retention, groups, contacts, the
 * conversation counters), prelock, applied_lsn and the node claims, two
 * nodes writing the same timelines at once, the dedup and read-mark races
 * between nodes, prelock against the deadlock of opposite-order batches,
 * a killed connection, a lost COMMIT, migrations under the advisory lock,
 * several hosts, a failover to a promoted standby, the conninfo as logged.
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
#include "store_suite.h"
#include "tap.h"
#include "pg_harness.h"

extern char stub_last_log[1024]; /* stubs.c: the last line logged */
int stub_log_has(const char *needle); /* stubs.c: ... contains needle, safely across threads */

#define SCHEMA_VERSION 8   /* schema/pg/NNN_*.sql: the last NNN */

static struct pg_server primary;
static char uri[256];
static PGconn *admin;

/* A node of the races. Their batches append without prelock (the worker
 * always prelocks), so a batch can wait, through the connection that
 * makes new timelines apart from the batch, on the other node's batch
 * while that one waits on it: a wait across two connections of one
 * client, which PostgreSQL's deadlock detector cannot see. lock_timeout
 * (msg.c names it as the knob) fails such a batch, and it is retried. */
static int open_node(struct im__store *st, const char *node)
{
	char conninfo[sizeof(uri) + 64];
	struct im__store_pg_options o = {.conninfo = conninfo, .node_id = node, .synchronous_commit = "on"};

	snprintf(conninfo, sizeof(conninfo), "%s%soptions=-c%%20lock_timeout%%3D3000", uri, strchr(uri, '?') ? "&" : "?");
	return im_store__open_pg(st, &o);
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

static long long unread(const char *owner, const char *peer)
{
	return sql_int("SELECT unread FROM convs WHERE owner = '%s' AND peer = '%s'", owner, peer);
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

/* ---- the suite's view: one node, "s" ---- */

static int suite_open(struct im__store *st)
{
	return open_node(st, "s");
}

/* Every table, the schema version and the nodes go with the schema (its
 * notice would list them all). */
static void suite_fresh(void)
{
	sql_int("SET client_min_messages = warning");
	sql_int("DROP SCHEMA public CASCADE");
	sql_int("CREATE SCHEMA public");
}

static long long suite_sql(struct im__store *st, const char *query)
{
	(void)st;
	return sql_int("%s", query);
}

static const struct store_backend pg_backend = {
	.name = "postgresql",
	.open = suite_open,
	.fresh = suite_fresh,
	.sql = suite_sql,
	.body_find = "position(?::bytea in body)",
	.tl_create_commits = true,
};

/* ---- two nodes on one database ---- */

static struct im__store a, b;     /* node "a" and node "b", open throughout */

static void two_nodes(void)
{
	suite_fresh();
	CHECK_EQ(open_node(&a, "a"), MOSQ_ERR_SUCCESS);
	CHECK(a.created);
	CHECK_EQ(open_node(&b, "b"), MOSQ_ERR_SUCCESS);
	CHECK(!b.created);
	CHECK(a.store_id != 0);
	CHECK_EQ(a.store_id, b.store_id);
	CHECK(memcmp(a.frame_key, b.frame_key, 16) == 0);
	CHECK_EQ(sql_int("SELECT version FROM im_schema_version"), SCHEMA_VERSION);
	CHECK_EQ(sql_int("SELECT count(*) FROM nodes"), 2);
}

/* What node a stored, node b dedups against, ranges and continues; each
 * node's cached head is a hint that its next timeline() or range()
 * corrects. */
static void shared_timelines(void)
{
	struct im__tl *bob = timeline(&a, "u/bob", true), *alice = timeline(&a, "u/alice", true), *bob_b;
	struct collect c = {0};
	struct im__appended d;
	struct im__msg m;
	bool more;

	CHECK(bob && alice);
	if(!bob || !alice) return;
	m = msg("alice", "u/bob", "c1", "with cmid");
	CHECK_EQ(append(&a, bob, alice, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 1 && d.own_seq == 1);
	bob_b = timeline(&b, "u/bob", false);
	CHECK(bob_b && bob_b->head == 1);
	if(bob_b == NULL) return;
	m = msg("alice", "u/bob", "c1", "again");
	CHECK_EQ(append(&b, bob_b, timeline(&b, "u/alice", true), &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate);
	CHECK_EQ(d.seq, 1);
	CHECK_EQ(d.own_seq, 1);
	CHECK_STR(d.timeline, "u/bob");
	m = msg("carol", "u/bob", "c1", "from carol");
	CHECK_EQ(append(&b, bob_b, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 2);
	CHECK_EQ(bob->head, 1);
	CHECK_EQ(timeline(&a, "u/bob", false)->head, 2);
	CHECK_EQ(timeline(&a, "u/alice", false)->head, 1);
	/* range refreshes head from its snapshot: node a wrote meanwhile. */
	m = msg("carol", "u/bob", NULL, "via a");
	CHECK_EQ(append(&a, bob, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK_EQ(bob_b->head, 2);
	CHECK_EQ(b.ops->range(&b, bob_b, 2, 100, im_now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK(c.n == 1 && !strcmp(c.bodies[0], "via a"));
	CHECK_EQ(bob_b->head, 3);
	CHECK(gap_free("u/bob") && gap_free("u/alice"));
}

static void shared_cursors(void)
{
	struct im__tl *bob = timeline(&a, "u/bob", false), *bob_b = timeline(&b, "u/bob", false);
	uint64_t v = 99;

	CHECK_EQ(cursor_set(&a, bob, "bob", "phone", 3, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3);
	CHECK_EQ(cursor_set(&b, bob_b, "bob", "phone", 2, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3); /* never moves back, whichever node */
	CHECK_EQ(cursor_set(&b, bob_b, "bob", "phone", 5, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5);
	CHECK_EQ(a.ops->cursor_get(&a, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 5);
}

/* Both nodes sweeping at once: each row deleted once. */
static void shared_retention(void)
{
	struct im__tl *t = timeline(&a, "u/ret", true), *tb;
	struct im__msg m;
	struct im__appended d;
	int64_t cursor = 0, cursor_b = 0;
	bool done = false, done_b = false;
	int i, rows, total = 0, steps = 0;

	for(i = 0; i < 30 && t; i++){
		m = msg("alice", "u/ret", NULL, "r");
		m.ts_ms = 1000 + i; /* ancient */
		CHECK_EQ(append(&a, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	}
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
	CHECK_EQ(total, 20);
	CHECK_EQ(timeline(&a, "u/ret", false)->first, 21);
	CHECK_EQ(timeline(&b, "u/ret", false)->first, 21);
	CHECK(tb == timeline(&b, "u/ret", false));
	CHECK_EQ(tb->head, 30);
	CHECK(gap_free("u/ret"));
}

/* Each node caches groups: a change on one leaves the other's stale until
 * forgotten (the cluster tells it); both write the same g/ timeline. */
static void shared_groups(void)
{
	char *add[] = {"bob", "carol"}, *rm[] = {"carol"}, *zed[] = {"zed"};
	struct im__group *g;
	uint64_t seq = 0;
	bool err;
	size_t groups_cached;

	CHECK_EQ(change(&a, IM_GROUP_CREATE, "room", "alice", add, 2, &seq), MOSQ_ERR_SUCCESS);
	g = b.ops->group(&b, "room", 4, &err);
	CHECK(g && g->members.count == 3);
	CHECK_EQ(change(&a, IM_GROUP_REMOVE, "room", "alice", rm, 1, &seq), MOSQ_ERR_SUCCESS);
	CHECK(a.ops->group(&a, "room", 4, &err)->members.count == 2);
	CHECK(b.ops->group(&b, "room", 4, &err)->members.count == 3);
	im_store__forget_group(&b, "room", 4);
	g = b.ops->group(&b, "room", 4, &err);
	CHECK(g && g->members.count == 2 && !im_map__get(&g->members, "carol", 5));
	CHECK_EQ(change(&b, IM_GROUP_LEAVE, "room", "bob", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK_EQ(seq, 3);
	CHECK(gap_free("g/room"));
	/* Another node made the group meanwhile: the batch fails, the
	 * rollback drops b's cache, and the retry sees the group. */
	CHECK(b.ops->group(&b, "room", 4, &err) != NULL);
	CHECK_EQ(change(&a, IM_GROUP_CREATE, "later", "zed", NULL, 0, &seq), MOSQ_ERR_SUCCESS);
	CHECK(change(&b, IM_GROUP_CREATE, "later", "yan", zed, 1, &seq) != MOSQ_ERR_SUCCESS);
	b.ops->cached(&b, &groups_cached);
	CHECK_EQ(groups_cached, 0);
	g = b.ops->group(&b, "later", 5, &err);
	CHECK(g && !strcmp(g->owner, "zed"));
	CHECK(gap_free("g/later"));
	CHECK_EQ(timeline(&b, "g/later", false)->head, 1);
	im_store__forget_group(&a, NULL, 0);
	a.ops->cached(&a, &groups_cached);
	CHECK_EQ(groups_cached, 0);
}

static enum im_row pair_count(void *ctx, const char *w, const char *r)
{
	(*(int *)ctx)++;
	return strcmp(w, "alice") || strcmp(r, "bob") ? IM_ROW_ERROR : IM_ROW_NEXT;
}

static void shared_contacts(void)
{
	bool first = false;
	int n = 0;

	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->wrote(&a, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(first);
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->begin(&b), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->wrote(&b, "alice", "bob", &first), MOSQ_ERR_SUCCESS);
	CHECK(!first); /* the other node noted it first */
	CHECK_EQ(b.ops->commit(&b, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->each_wrote(&b, pair_count, &n), MOSQ_ERR_SUCCESS);
	CHECK_EQ(n, 1);
}

/* A DM whose timelines are prelocked: both seqs are known before the
 * first row goes in; without, the first row learns the second's seq
 * after. Either way each row names the other. */
static void prelocked_dm(void)
{
	struct im__tl *carl = timeline(&a, "u/carl", true), *dora = timeline(&a, "u/dora", true);
	const char *names[] = {"u/carl", "u/dora"};
	const bool create[] = {true, true};
	struct im__appended d, d2;
	struct im__msg m;

	CHECK(carl && dora);
	if(!carl || !dora) return;
	m = msg("dora", "u/carl", "dc-1", "hello carl");
	CHECK_EQ(append(&a, carl, dora, &m, &d), MOSQ_ERR_SUCCESS);
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
	CHECK(gap_free("u/carl") && gap_free("u/dora"));
}

/* Two nodes note the same conversations, in any order: unread adds up,
 * the last message only moves forward. */
static void shared_notes(void)
{
	bool yes;

	CHECK_EQ(note(&a, "carl", "dora", 1, 1000, "dora", "hello carl", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&b, "carl", "dora", 3, 3000, "dora", "how are you", 1), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&a, "carl", "dora", 2, 2000, "carl", "late", 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&a, NULL, "room", 3, 2500, "bob", "in the room", 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(note(&b, NULL, "room", 2, 2400, "bob", "older", 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(unread("carl", "dora"), 2);
	CHECK_EQ(sql_int("SELECT last_seq FROM convs WHERE owner = 'carl' AND peer = 'dora'"), 3);
	CHECK_EQ(sql_int("SELECT last_ts FROM convs WHERE owner = 'carl' AND peer = 'dora'"), 3000);
	CHECK_EQ(sql_int("SELECT count(*) FROM convs WHERE owner = 'carl' AND peer = 'dora' AND preview = 'how are you'"), 1);
	CHECK_EQ(sql_int("SELECT last_seq FROM group_last WHERE grp = 'room'"), 3);
	CHECK_EQ(sql_int("SELECT count(*) FROM group_last WHERE grp = 'room' AND preview = 'in the room'"), 1);
	CHECK_EQ(b.ops->has_conv(&b, "carl", "dora", &yes), MOSQ_ERR_SUCCESS);
	CHECK(yes);
}

/* applied_lsn is per node; a node_id opened again is taken over. */
static void node_claims(void)
{
	struct im__store st;

	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->commit(&a, 100), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->begin(&b), MOSQ_ERR_SUCCESS);
	CHECK_EQ(b.ops->commit(&b, 200), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.applied_lsn, 100);
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'a'"), 100);
	CHECK_EQ(sql_int("SELECT applied_lsn FROM nodes WHERE node_id = 'b'"), 200);
	CHECK_EQ(open_node(&st, "b"), MOSQ_ERR_SUCCESS); /* b's position, read at open */
	CHECK_EQ(st.applied_lsn, 200);
	CHECK_EQ(st.store_id, b.store_id);
	/* The store id renewed by one node is every node's from its next commit. */
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

/* The conninfo as logged: where, never a password. */
static void describe(void)
{
	char out[256];

	im_store__pg_describe("postgresql://im:s3cret@db1:5433,db2/chat?target_session_attrs=read-write&sslmode=require",
			out, sizeof(out));
	CHECK(strstr(out, "s3cret") == NULL);
	CHECK(strstr(out, "host=db1,db2") && strstr(out, "port=5433") && strstr(out, "dbname=chat") && strstr(out, "user=im"));
	CHECK(strstr(out, "target_session_attrs=read-write") && !strstr(out, "sslmode"));
	im_store__pg_describe("host=h password=s3cret", out, sizeof(out));
	CHECK_STR(out, "host=h");
	im_store__pg_describe("", out, sizeof(out));
	CHECK_STR(out, "libpq defaults");
	im_store__pg_describe("host='unterminated", out, sizeof(out));
	CHECK_STR(out, "unparsable");
	im_store__pg_describe("host=a-long-host-name", out, 8);
	CHECK_EQ(strlen(out), 7);
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

/* A batch's cmids looked up at once (dedup_batch) say "new"; another node
 * stores one of them (to another timeline: no lock in common) before this
 * batch commits. The unique index fails the commit, nothing of the batch
 * stays, and the retry, looking again, answers "duplicate" with the other
 * node's values: still once per (sender, cmid). */
static void dedup_batch_race(void)
{
	const char *senders[] = {"uma"}, *cmids[] = {"dup"};
	struct im__appended d;
	struct im__tl *t1 = timeline(&a, "g/batch-one", true), *t2 = timeline(&b, "g/batch-two", true);
	struct im__msg m;

	CHECK(t1 && t2);
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->dedup_batch(&a, senders, cmids, 1), MOSQ_ERR_SUCCESS);
	m = msg("uma", "g/batch-one", "dup", "from a");
	CHECK_EQ(a.ops->append(&a, t1, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 1);
	/* b stores the same (sender, cmid) and commits first. */
	m = msg("uma", "g/batch-two", "dup", "from b");
	CHECK_EQ(append(&b, t2, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(!d.duplicate && d.seq == 1);
	CHECK(a.ops->commit(&a, 0) != MOSQ_ERR_SUCCESS);
	CHECK(stub_log_has("23505"));
	/* The worker's retry. */
	CHECK_EQ(a.ops->begin(&a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.ops->dedup_batch(&a, senders, cmids, 1), MOSQ_ERR_SUCCESS);
	t1 = timeline(&a, "g/batch-one", false);
	m = msg("uma", "g/batch-one", "dup", "from a");
	CHECK_EQ(a.ops->append(&a, t1, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(d.duplicate && d.seq == 1);
	CHECK_STR(d.timeline, "g/batch-two");
	CHECK_EQ(a.ops->commit(&a, 0), MOSQ_ERR_SUCCESS);
	CHECK_EQ(sql_int("SELECT count(*) FROM messages WHERE sender = 'uma' AND cmid = 'dup'"), 1);
	CHECK_EQ(count_tl("g/batch-one", ""), 0);
	CHECK(gap_free("g/batch-one") && gap_free("g/batch-two"));
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

	CHECK_EQ(sql_int("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('reads', 'convs', 'group_last')"), 3);
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
	store_suite(&pg_backend, &tap_checks, &tap_failed);
	two_nodes();
	shared_timelines();
	shared_cursors();
	shared_retention();
	shared_groups();
	shared_contacts();
	prelocked_dm();
	shared_notes();
	node_claims();
	read_race();
	concurrent_writers("", RACE_BATCHES, false, false);
	concurrent_writers("-x", getenv("IM_RACE_N") ? atoi(getenv("IM_RACE_N")) : 12, true, false);
	concurrent_writers("-p", getenv("IM_RACE_N") ? atoi(getenv("IM_RACE_N")) : 12, true, true);
	opposite_batches(false);
	opposite_batches(true);
	dedup_race(false, true);
	dedup_race(false, false);
	dedup_race(true, true);
	dedup_batch_race();
	killed_connection();
	lost_commit();
	migrations();
	concurrent_open();
	several_hosts();
	describe();
	im_store__close(&a);
	im_store__close(&b);
	failover();
	return TAP_DONE();
}
