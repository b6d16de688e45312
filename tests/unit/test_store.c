/* The store against a real SQLite file: seq allocation, the sender's copy,
 * dedup, reopen continuity, ranges, cursors, migrations. */
#include <stdlib.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/crypt.h"
#include "base/defs.h"
#include "base/util.h"
#include "store/sqlite/internal.h"
#include "store/sqlite/open.h"
#include "store/store.h"
#include "tap.h"

static char path[256];

static struct im__msg msg(const char *cmid, const char *body)
{
	struct im__msg m = {0};

	m.ts_ms = im_now_ms();
	m.sender = "alice";
	m.cmid = cmid;
	m.to = "u/bob";
	m.body = body;
	m.body_len = strlen(body);
	return m;
}

static int store_open(struct im__store *st, const char *p, bool ckpt)
{
	struct im__store_options o = {.path = p, .synchronous = 1, .busy_timeout_ms = 100, .page_size = 1024,
		.checkpoint_thread = ckpt};

	return im_store__open_sqlite(st, &o);
}

static void open_store(struct im__store *st)
{
	CHECK_EQ(store_open(st, path, true), MOSQ_ERR_SUCCESS);
}

/* The seam, one call each, as the worker uses it (a transaction around
 * every write). */
static struct im__tl *timeline(struct im__store *st, const char *name, bool create)
{
	bool err;

	return st->ops->timeline(st, name, strlen(name), create, &err);
}

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

#define im_store__timeline(st, name, len, create) timeline(st, name, create)
#define im_store__append append
#define im_store__range(st, ...) (st)->ops->range(st, __VA_ARGS__)
#define im_store__cursor_get(st, ...) (st)->ops->cursor_get(st, __VA_ARGS__)
#define im_store__cursor_set cursor_set
#define im_store__trim_step(st, ...) (st)->ops->trim_step(st, __VA_ARGS__)
#define im_store__now_ms im_now_ms

struct collect { uint64_t seqs[64]; char bodies[64][14]; int n; int stop_after; };

static enum im_row collect_row(void *ctx, const struct im__msg *m)
{
	struct collect *c = ctx;

	if(c->stop_after && c->n == c->stop_after) return IM_ROW_STOP;
	c->seqs[c->n] = m->seq;
	snprintf(c->bodies[c->n], sizeof(c->bodies[0]), "%.*s", (int)m->body_len, (const char *)m->body);
	c->n++;
	return IM_ROW_NEXT;
}

static void append_and_dedup(void)
{
	struct im__store st;
	struct im__tl *bob, *alice;
	struct im__msg m;
	struct im__appended a;
	int i;

	open_store(&st);
	bob = im_store__timeline(&st, "u/bob", 5, true);
	alice = im_store__timeline(&st, "u/alice", 7, true);
	CHECK(bob && alice && bob != alice);
	CHECK(im_store__timeline(&st, "u/bob", 5, false) == bob); /* cached */
	CHECK(im_store__timeline(&st, "u/nobody", 8, false) == NULL);

	for(i = 1; i <= 3; i++){
		char body[8];
		snprintf(body, sizeof(body), "m%d", i);
		m = msg(NULL, body);
		CHECK_EQ(im_store__append(&st, bob, alice, &m, &a), MOSQ_ERR_SUCCESS);
		CHECK_EQ(a.seq, i);
		CHECK_EQ(a.own_seq, i);
		CHECK(!a.duplicate);
	}
	m = msg("c1", "with cmid");
	CHECK_EQ(im_store__append(&st, bob, alice, &m, &a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.seq, 4);
	CHECK(!a.duplicate);
	m = msg("c1", "again");
	CHECK_EQ(im_store__append(&st, bob, alice, &m, &a), MOSQ_ERR_SUCCESS);
	CHECK(a.duplicate);
	CHECK_EQ(a.seq, 4);
	CHECK_EQ(a.own_seq, 4);
	CHECK_EQ(bob->head, 4); /* the repeat took no seq */
	/* Another sender may reuse the same cmid: it is per sender. */
	m = msg("c1", "from carol");
	m.sender = "carol";
	CHECK_EQ(im_store__append(&st, bob, NULL, &m, &a), MOSQ_ERR_SUCCESS);
	CHECK(!a.duplicate);
	CHECK_EQ(a.seq, 5);
	CHECK_EQ(alice->head, 4);
	im_store__close(&st);
}

static void reopen_and_range(void)
{
	struct im__store st;
	struct im__tl *bob;
	struct collect c = {0};
	struct im__msg m;
	struct im__appended a;
	bool more;

	open_store(&st);
	bob = im_store__timeline(&st, "u/bob", 5, false);
	CHECK(bob != NULL);
	if(bob == NULL) return;
	CHECK_EQ(bob->head, 5); /* survives a reopen */
	m = msg(NULL, "after reopen");
	CHECK_EQ(im_store__append(&st, bob, NULL, &m, &a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.seq, 6);

	CHECK_EQ(im_store__range(&st, bob, 2, 2, im_store__now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK_EQ(c.seqs[0], 3);
	CHECK_EQ(c.seqs[1], 4);
	CHECK_STR(c.bodies[1], "with cmid");
	CHECK(more);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(im_store__range(&st, bob, 4, 100, im_store__now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 2);
	CHECK(!more);
	/* A callback that stops early (byte budget) reports more. */
	memset(&c, 0, sizeof(c));
	c.stop_after = 1;
	CHECK_EQ(im_store__range(&st, bob, 0, 100, im_store__now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK(more);

	/* Expired rows are skipped. */
	m = msg(NULL, "expiring");
	m.expires_ms = m.ts_ms + 1000;
	CHECK_EQ(im_store__append(&st, bob, NULL, &m, &a), MOSQ_ERR_SUCCESS);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(im_store__range(&st, bob, 6, 100, m.ts_ms, collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	memset(&c, 0, sizeof(c));
	CHECK_EQ(im_store__range(&st, bob, 6, 100, m.ts_ms + 1000, collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
	im_store__close(&st);
}

static void cursors(void)
{
	struct im__store st;
	struct im__tl *bob;
	uint64_t v = 99;

	open_store(&st);
	bob = im_store__timeline(&st, "u/bob", 5, false);
	CHECK_EQ(im_store__cursor_get(&st, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 0);
	CHECK_EQ(im_store__cursor_set(&st, bob, "bob", "phone", 3, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3);
	CHECK_EQ(im_store__cursor_set(&st, bob, "bob", "phone", 2, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3); /* never moves back */
	CHECK_EQ(im_store__cursor_set(&st, bob, "bob", "laptop", 1, &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 1);
	CHECK_EQ(im_store__cursor_get(&st, bob, "bob", "phone", &v), MOSQ_ERR_SUCCESS);
	CHECK_EQ(v, 3); /* devices are independent */
	im_store__close(&st);
}

static void retention(void)
{
	struct im__store st;
	struct im__tl *t;
	struct im__msg m;
	struct im__appended a;
	struct collect c = {0};
	int64_t cursor = 0;
	bool done = false, more;
	int i, rows, total = 0, steps = 0;

	open_store(&st);
	t = im_store__timeline(&st, "u/ret", 5, true);
	for(i = 0; i < 30; i++){
		m = msg(NULL, "r");
		m.ts_ms = 1000 + i; /* ancient */
		CHECK_EQ(im_store__append(&st, t, NULL, &m, &a), MOSQ_ERR_SUCCESS);
	}
	/* Count limit: keep 10, 7 rows per step at most. */
	do{
		rows = im_store__trim_step(&st, 0, 10, 7, &cursor, &done);
		CHECK(rows >= 0 && rows <= 7);
		total += rows;
	}while(!done && ++steps < 50);
	CHECK_EQ(total, 20);
	CHECK_EQ(t->first, 21);
	CHECK_EQ(t->head, 30);
	CHECK_EQ(im_store__range(&st, t, 0, 100, im_store__now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 10);
	CHECK_EQ(c.seqs[0], 21);
	/* Age limit: everything is older than the cutoff; head stays. */
	cursor = 0;
	total = steps = 0;
	do{
		rows = im_store__trim_step(&st, 5000, 0, 1000, &cursor, &done);
		total += rows;
	}while(!done && ++steps < 50);
	CHECK_EQ(total, 10);
	CHECK_EQ(t->first, 31);
	m = msg(NULL, "after trim");
	CHECK_EQ(im_store__append(&st, t, NULL, &m, &a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(a.seq, 31); /* the sequence never restarts */
	im_store__close(&st);
	/* first_seq persists. */
	open_store(&st);
	t = im_store__timeline(&st, "u/ret", 5, false);
	CHECK(t && t->first == 31 && t->head == 31);
	im_store__close(&st);
}

static void encryption(void)
{
	struct im__store st;
	struct im__crypt crypt;
	struct im__tl *t;
	struct im__msg m;
	struct im__appended a;
	struct collect c = {0};
	char keypath[300];
	FILE *f;
	sqlite3_stmt *s;
	bool more;
	int plain_hits = -1;

	snprintf(keypath, sizeof(keypath), "%s.keys", path);
	f = fopen(keypath, "w");
	fprintf(f, "# old key\n1 %s\n2 %s  # current\n",
			"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
			"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100");
	fclose(f);
	CHECK_EQ(im_crypt__load(&crypt, keypath), MOSQ_ERR_SUCCESS);
	CHECK_EQ(crypt.n, 2);
	open_store(&st);
	st.crypt = &crypt;
	t = im_store__timeline(&st, "u/sec", 5, true);
	m = msg(NULL, "TOP-SECRET-BODY");
	CHECK_EQ(im_store__append(&st, t, NULL, &m, &a), MOSQ_ERR_SUCCESS);
	CHECK_EQ(im_store__range(&st, t, 0, 10, im_store__now_ms(), collect_row, &c, &more), MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 1);
	CHECK_STR(c.bodies[0], "TOP-SECRET-BO"); /* collect keeps 15 chars */
	/* On disk: sealed with key 2, no plaintext. */
	sqlite3_prepare_v2(im_sqlite(&st)->db, "SELECT key_id, instr(body, 'TOP-SECRET') FROM messages WHERE tl = ?1", -1, &s, NULL);
	sqlite3_bind_int64(s, 1, t->id);
	if(sqlite3_step(s) == SQLITE_ROW){
		CHECK_EQ(sqlite3_column_int(s, 0), 2);
		plain_hits = sqlite3_column_int(s, 1);
	}
	sqlite3_finalize(s);
	CHECK_EQ(plain_hits, 0);
	/* A row moved to another seq no longer opens. */
	sqlite3_exec(im_sqlite(&st)->db, "UPDATE messages SET seq = 7 WHERE seq = 1 AND key_id = 2", NULL, NULL, NULL);
	memset(&c, 0, sizeof(c));
	CHECK(im_store__range(&st, t, 0, 10, im_store__now_ms(), collect_row, &c, &more) != MOSQ_ERR_SUCCESS);
	CHECK_EQ(c.n, 0);
	im_store__close(&st);
	im_crypt__free(&crypt);
	/* Bad key files are refused. */
	f = fopen(keypath, "w");
	fprintf(f, "1 not-hex\n");
	fclose(f);
	CHECK(im_crypt__load(&crypt, keypath) != MOSQ_ERR_SUCCESS);
	unlink(keypath);
}

static void migrations(void)
{
	struct im__store st;
	sqlite3 *db;
	sqlite3_stmt *s;
	int version = -1;

	CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL);
	if(sqlite3_step(s) == SQLITE_ROW) version = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	CHECK(version >= 1);
	/* A database from a newer plugin is refused, not damaged. */
	sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK(store_open(&st, path, true) != MOSQ_ERR_SUCCESS);
	im_store__close(&st);
}

static void unwritable(void)
{
	struct im__store st;

	/* A folder that does not exist cannot hold the store. */
	CHECK(store_open(&st, "/nonexistent-dir/im.db", false) != MOSQ_ERR_SUCCESS);
	im_store__close(&st);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	snprintf(path, sizeof(path), "%s/im-test-store-%d.db", tmp, (int)getpid());
	append_and_dedup();
	reopen_and_range();
	cursors();
	retention();
	encryption();
	migrations();
	unwritable();
	unlink(path);
	{
		char p2[300];
		snprintf(p2, sizeof(p2), "%s-wal", path); unlink(p2);
		snprintf(p2, sizeof(p2), "%s-shm", path); unlink(p2);
	}
	return TAP_DONE();
}
