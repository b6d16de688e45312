/* The SQLite store against a real file: the store suite (store_suite.c),
 * then what only SQLite has: the file's migrations, pragmas, the
 * checkpoint thread, scrubbing the WAL, an unusable path. */
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/defs.h"
#include "store/sqlite/internal.h"
#include "store/sqlite/open.h"
#include "store/store.h"
#include "store_suite.h"
#include "tap.h"

#define SCHEMA_VERSION 8   /* schema/NNN_*.sql: the last NNN */

static char path[256];

static int store_open(struct im__store *st, const char *p, bool ckpt)
{
	struct im__store_options o = {.path = p, .synchronous = 1, .busy_timeout_ms = 100, .page_size = 1024,
		.checkpoint_thread = ckpt};

	return im_store__open_sqlite(st, &o);
}

/* ---- the suite's view ---- */

static int sqlite_open(struct im__store *st)
{
	return store_open(st, path, true);
}

static void remove_files(void)
{
	char p[300];

	unlink(path);
	snprintf(p, sizeof(p), "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", path);
	unlink(p);
}

/* On the store's own connection: outside a batch nothing else writes. */
static long long sqlite_sql(struct im__store *st, const char *query)
{
	sqlite3_stmt *s = NULL;
	long long v = -1;
	int rc = sqlite3_prepare_v2(im_sqlite(st)->db, query, -1, &s, NULL);

	if(rc == SQLITE_OK) rc = sqlite3_step(s);
	if(rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) v = sqlite3_column_int64(s, 0);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) fprintf(stderr, "sql: %s: %s\n", query, sqlite3_errmsg(im_sqlite(st)->db));
	sqlite3_finalize(s);
	return v;
}

static const struct store_backend sqlite_backend = {
	.name = "sqlite",
	.open = sqlite_open,
	.fresh = remove_files,
	.sql = sqlite_sql,
	.body_find = "instr(body, ?)",
};

/* ---- SQLite only ---- */

static int pragma(sqlite3 *db, const char *q)
{
	sqlite3_stmt *s;
	int v = -1;

	sqlite3_prepare_v2(db, q, -1, &s, NULL);
	if(sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	return v;
}

static void migrations(void)
{
	struct im__store st;
	sqlite3 *db;

	remove_files();
	CHECK_EQ(sqlite_open(&st), MOSQ_ERR_SUCCESS);
	im_store__close(&st);
	CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
	CHECK_EQ(pragma(db, "PRAGMA user_version"), SCHEMA_VERSION);
	/* A database from a newer plugin is refused, not damaged. */
	sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK(sqlite_open(&st) != MOSQ_ERR_SUCCESS);
	im_store__close(&st);
	CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
	CHECK_EQ(pragma(db, "PRAGMA user_version"), 999);
	sqlite3_close(db);
}

/* page_size takes on a new file only; WAL and secure_delete on every open. */
static void pragmas(void)
{
	struct im__store st;
	sqlite3 *db;

	remove_files();
	CHECK_EQ(sqlite_open(&st), MOSQ_ERR_SUCCESS);
	if(st.ops == NULL) return;
	db = im_sqlite(&st)->db;
	CHECK_EQ(pragma(db, "PRAGMA page_size"), 1024);
	CHECK_EQ(pragma(db, "PRAGMA secure_delete"), 1);
	CHECK_EQ(sqlite_sql(&st, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
	im_store__close(&st);
}

static off_t wal_size(void)
{
	char p[300];
	struct stat sb;

	snprintf(p, sizeof(p), "%s-wal", path);
	return stat(p, &sb) == 0 ? sb.st_size : 0;
}

static long checkpoints(struct im__ckpt *c, int *last_rc)
{
	long n;

	pthread_mutex_lock(&c->mu);
	n = c->checkpoints;
	*last_rc = c->last_rc;
	pthread_mutex_unlock(&c->mu);
	return n;
}

/* Checkpoints run on their own thread, not in a COMMIT; closing leaves
 * the WAL empty for the next start. */
static void checkpoint_thread(void)
{
	struct im__store st;
	struct im__ckpt *c;
	struct im__appended d;
	struct im__msg m = msg("alice", "u/bob", NULL, "to be checkpointed");
	struct timespec nap = {0, 10 * 1000000L};
	int i, last_rc = -1;

	remove_files();
	CHECK_EQ(sqlite_open(&st), MOSQ_ERR_SUCCESS);
	if(st.ops == NULL) return;
	c = &im_sqlite(&st)->ckpt;
	CHECK(c->running);
	CHECK_EQ(pragma(im_sqlite(&st)->db, "PRAGMA wal_autocheckpoint"), 0);
	CHECK_EQ(append(&st, timeline(&st, "u/bob", true), NULL, &m, &d), MOSQ_ERR_SUCCESS);
	for(i = 0; i < 500 && checkpoints(c, &last_rc) == 0; i++) nanosleep(&nap, NULL);
	CHECK(checkpoints(c, &last_rc) > 0);
	CHECK_EQ(last_rc, SQLITE_OK);
	im_store__close(&st);
	CHECK_EQ(wal_size(), 0);
}

/* After a recall, scrub copies the WAL into the file and truncates it:
 * the erased body's old page images go too. */
static void scrub(void)
{
	struct im__store st;
	struct im__tl *t;
	struct im__appended d;
	struct im__msg m = msg("alice", "u/bob", NULL, "RECALL-ME");

	remove_files();
	CHECK_EQ(store_open(&st, path, false), MOSQ_ERR_SUCCESS);
	if(st.ops == NULL) return;
	t = timeline(&st, "u/bob", true);
	CHECK_EQ(append(&st, t, NULL, &m, &d), MOSQ_ERR_SUCCESS);
	CHECK(wal_size() > 0);
	st.ops->scrub(&st); /* nothing erased: nothing to do */
	CHECK(wal_size() > 0);
	CHECK_EQ(st.ops->begin(&st), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st.ops->amend(&st, t, d.seq, NULL, 0, 0, 32), MOSQ_ERR_SUCCESS);
	CHECK_EQ(st.ops->commit(&st, 0), MOSQ_ERR_SUCCESS);
	st.ops->scrub(&st);
	CHECK_EQ(wal_size(), 0);
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
	store_suite(&sqlite_backend, &tap_checks, &tap_failed);
	migrations();
	pragmas();
	checkpoint_thread();
	scrub();
	unwritable();
	remove_files();
	return TAP_DONE();
}
