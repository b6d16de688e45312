/*
 * The SQLite backend: one database in WAL mode, statements prepared once,
 * schema migrations by PRAGMA user_version, and the store's identity (meta
 * table). Worker thread only (the init thread before the worker starts).
 *
 * Policy: the worker applies journal records in batches, one transaction
 * each, and records the last applied journal position in that same
 * transaction, so a crash anywhere applies every record exactly once.
 * Every SQLite failure is logged here, once, with sqlite3_errmsg, and
 * reported upwards as MOSQ_ERR_UNKNOWN.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/rand.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "store/sqlite/internal.h"

extern const char *const im_schema_migrations[];

#define READER_CACHE_MAX 4096       /* timelines a reader keeps entries for */

/* ---- open, migrate, prepare ---- */

static int exec(struct im__sqlite *s, const char *sql)
{
	char *err = NULL;

	if(sqlite3_exec(s->db, sql, NULL, NULL, &err) != SQLITE_OK){
		im_log(MOSQ_LOG_ERR, "im: store: %s", err ? err : sqlite3_errmsg(s->db));
		sqlite3_free(err);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

/* Migrates to the newest schema; *before is the version found. */
static int migrate(struct im__sqlite *s, int *before)
{
	sqlite3_stmt *q;
	int version = 0, target = 0, rc = MOSQ_ERR_SUCCESS;
	char sql[64];

	if(sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &q, NULL) != SQLITE_OK){
		return im_sqlite__fail(s, "reading user_version");
	}
	if(sqlite3_step(q) == SQLITE_ROW) version = sqlite3_column_int(q, 0);
	sqlite3_finalize(q);
	*before = version;

	while(im_schema_migrations[target]) target++;
	if(version > target){
		im_log(MOSQ_LOG_ERR, "im: store: database schema version %d is newer than this plugin's (%d); refusing to open it.",
				version, target);
		return MOSQ_ERR_UNKNOWN;
	}
	for(; version < target && rc == MOSQ_ERR_SUCCESS; version++){
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version + 1);
		rc = exec(s, "BEGIN IMMEDIATE");
		if(rc == MOSQ_ERR_SUCCESS) rc = exec(s, im_schema_migrations[version]);
		if(rc == MOSQ_ERR_SUCCESS) rc = exec(s, sql);
		if(rc == MOSQ_ERR_SUCCESS) rc = exec(s, "COMMIT");
		if(rc != MOSQ_ERR_SUCCESS){
			exec(s, "ROLLBACK");
		}else{
			im_log(MOSQ_LOG_INFO, "im: store: schema migrated to version %d.", version + 1);
		}
	}
	return rc;
}

static int prepare_base(struct im__sqlite *s)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		/* A reader's transaction takes no lock: WAL readers see the
		 * last commit and never wait for the writer. */
		{&s->begin, s->reader ? "BEGIN" : "BEGIN IMMEDIATE"},
		{&s->commit, "COMMIT"},
		{&s->rollback, "ROLLBACK"},
		{&s->meta_set, "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(im_sqlite__prepare(s, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

static int meta_put(struct im__sqlite *s, const char *key, const void *v, int len, int64_t iv)
{
	sqlite3_bind_text(s->meta_set, 1, key, -1, SQLITE_STATIC);
	if(v) sqlite3_bind_blob(s->meta_set, 2, v, len, SQLITE_STATIC);
	else sqlite3_bind_int64(s->meta_set, 2, iv);
	return im_sqlite__step(s, s->meta_set, "writing meta");
}

static void be64(uint8_t *out, uint64_t v)
{
	int i;

	for(i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* Reads store_id, frame_key and applied_lsn, making the first two if the
 * database has none yet (a new database). */
static int meta_load(struct im__store *st, struct im__sqlite *s)
{
	sqlite3_stmt *q;
	bool have_id = false, have_key = false;
	uint8_t idb[8];
	int rc, i;

	if(sqlite3_prepare_v2(s->db, "SELECT key, value FROM meta", -1, &q, NULL) != SQLITE_OK){
		return im_sqlite__fail(s, "reading meta");
	}
	while((rc = sqlite3_step(q)) == SQLITE_ROW){
		const char *k = im_sqlite__text(q, 0);
		const uint8_t *v = sqlite3_column_blob(q, 1);
		int n = sqlite3_column_bytes(q, 1);

		if(!strcmp(k, "store_id") && n == 8){
			for(st->store_id = 0, i = 0; i < 8; i++) st->store_id = (st->store_id << 8) | v[i];
			have_id = true;
		}else if(!strcmp(k, "frame_key") && n == 16){
			memcpy(st->frame_key, v, 16);
			have_key = true;
		}else if(!strcmp(k, "applied_lsn")){
			st->applied_lsn = (uint64_t)sqlite3_column_int64(q, 1);
		}
	}
	sqlite3_finalize(q);
	if(rc != SQLITE_DONE) return im_sqlite__fail(s, "reading meta");
	if(have_id && have_key) return MOSQ_ERR_SUCCESS;
	if(!have_id){
		if(RAND_bytes(idb, sizeof(idb)) != 1) return MOSQ_ERR_UNKNOWN;
		for(st->store_id = 0, i = 0; i < 8; i++) st->store_id = (st->store_id << 8) | idb[i];
		if(st->store_id == 0) st->store_id = 1;
		be64(idb, st->store_id);
	}
	if(!have_key && RAND_bytes(st->frame_key, sizeof(st->frame_key)) != 1) return MOSQ_ERR_UNKNOWN;
	if(exec(s, "BEGIN IMMEDIATE") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if((!have_id && meta_put(s, "store_id", idb, 8, 0) != MOSQ_ERR_SUCCESS)
			|| (!have_key && meta_put(s, "frame_key", st->frame_key, 16, 0) != MOSQ_ERR_SUCCESS)
			|| exec(s, "COMMIT") != MOSQ_ERR_SUCCESS){
		exec(s, "ROLLBACK");
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

static int sqlite_renew_id(struct im__store *st)
{
	uint8_t idb[8];
	int i;

	if(RAND_bytes(idb, sizeof(idb)) != 1) return MOSQ_ERR_UNKNOWN;
	for(st->store_id = 0, i = 0; i < 8; i++) st->store_id = (st->store_id << 8) | idb[i];
	if(st->store_id == 0) st->store_id = 1;
	im_sqlite(st)->id_dirty = true;
	return MOSQ_ERR_SUCCESS;
}

static off_t file_size(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* Why a database could not be used, in words that point at the cause. */
static void explain(struct im__sqlite *s, const char *path)
{
	int code = s->db ? sqlite3_extended_errcode(s->db) & 0xff : SQLITE_CANTOPEN;

	if(code == SQLITE_NOTADB || code == SQLITE_CORRUPT){
		im_log(MOSQ_LOG_ERR, "im: store: \"%s\" is damaged or not an SQLite database; move it aside and restore a backup (docs/OPERATIONS.md, \"Restore\").", path);
	}else if(code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM || code == SQLITE_AUTH){
		im_log(MOSQ_LOG_ERR, "im: store: cannot write \"%s\" or its folder (is it writable by the broker's user?).", path);
	}else if(code == SQLITE_FULL){
		im_log(MOSQ_LOG_ERR, "im: store: the disk holding \"%s\" is full.", path);
	}else{
		im_log(MOSQ_LOG_ERR, "im: store: cannot use \"%s\".", path);
	}
}

static void sqlite_close(struct im__store *st);

static const struct im__store_ops sqlite_ops;

static int prepare_all(struct im__sqlite *s)
{
	if(prepare_base(s) != MOSQ_ERR_SUCCESS
			|| im_sqlite__prepare_msg(s) != MOSQ_ERR_SUCCESS
			|| im_sqlite__prepare_group(s) != MOSQ_ERR_SUCCESS
			|| im_sqlite__prepare_trim(s) != MOSQ_ERR_SUCCESS
			|| im_sqlite__prepare_conv(s) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

/* A reader's connection to the database the writer made and migrated.
 * query_only: a bug that would write through it fails instead. */
static int open_reader(struct im__store *st, struct im__sqlite *s, const struct im__store_options *o)
{
	s->reader = true;
	if(sqlite3_open_v2(o->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK){
		im_log(MOSQ_LOG_ERR, "im: store: cannot open \"%s\" for a reader: %s", o->path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
		sqlite_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_busy_timeout(s->db, o->busy_timeout_ms);
	if(exec(s, "PRAGMA query_only = 1") != MOSQ_ERR_SUCCESS || prepare_all(s) != MOSQ_ERR_SUCCESS
			|| meta_load(st, s) != MOSQ_ERR_SUCCESS){
		explain(s, o->path);
		sqlite_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int im_store__open_sqlite(struct im__store *st, const struct im__store_options *o)
{
	struct im__sqlite *s;
	char sql[64], pgsql[64], wal[4096];
	off_t db_size, wal_size;
	int before = 0;

	memset(st, 0, sizeof(*st));
	st->ops = &sqlite_ops;
	s = calloc(1, sizeof(*s));
	if(s == NULL) return MOSQ_ERR_NOMEM;
	st->be = s;
	db_size = file_size(o->path);
	snprintf(wal, sizeof(wal), "%s-wal", o->path);
	wal_size = file_size(wal);
	if(db_size <= 0 && wal_size > 0){
		im_log(MOSQ_LOG_WARNING, "im: store: \"%s\" is missing or empty but its write-ahead log is not: the database was deleted or truncated. A new store is made; clients see a new store id and start over.",
				o->path);
	}
	if(o->reader) return open_reader(st, s, o);
	/* NOMUTEX: one thread uses this connection (the worker; the
	 * checkpointer has its own), so SQLite's locking is pure cost. */
	if(sqlite3_open_v2(o->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK){
		im_log(MOSQ_LOG_ERR, "im: store: cannot open \"%s\": %s", o->path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
		explain(s, o->path);
		sqlite_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_busy_timeout(s->db, o->busy_timeout_ms);
	snprintf(sql, sizeof(sql), "PRAGMA synchronous = %d", o->synchronous);
	/* page_size only takes on a new database (before WAL and the first
	 * table). Small pages: a commit writes each dirty page whole to the
	 * WAL; 1 KiB pages measured +7..30% messages/s over 4 KiB. */
	snprintf(pgsql, sizeof(pgsql), "PRAGMA page_size = %d", o->page_size);
	/* journal_mode answers with a row; exec ignores it. A database that
	 * cannot switch to WAL fails here, at start, not on the first message. */
	if(exec(s, pgsql) != MOSQ_ERR_SUCCESS || exec(s, "PRAGMA journal_mode = WAL") != MOSQ_ERR_SUCCESS
			|| exec(s, sql) != MOSQ_ERR_SUCCESS
			|| (o->checkpoint_thread && exec(s, "PRAGMA wal_autocheckpoint = 0") != MOSQ_ERR_SUCCESS)
			|| exec(s, "PRAGMA journal_size_limit = 67108864") != MOSQ_ERR_SUCCESS
			|| exec(s, "PRAGMA foreign_keys = OFF") != MOSQ_ERR_SUCCESS
			/* A recalled body, or a message retention removed, is
			 * overwritten with zeros in the file, not just unlinked. */
			|| exec(s, "PRAGMA secure_delete = ON") != MOSQ_ERR_SUCCESS
			|| migrate(s, &before) != MOSQ_ERR_SUCCESS
			|| prepare_all(s) != MOSQ_ERR_SUCCESS
			|| meta_load(st, s) != MOSQ_ERR_SUCCESS){
		explain(s, o->path);
		sqlite_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	st->created = (before == 0);
	if(sqlite3_db_readonly(s->db, "main") == 1){
		im_log(MOSQ_LOG_ERR, "im: store: \"%s\" is read-only for the broker's user.", o->path);
		sqlite_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(o->checkpoint_thread && im_ckpt__start(&s->ckpt, o->path) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot start the checkpoint thread for \"%s\".", o->path);
		sqlite_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(o->checkpoint_thread) im_ckpt__watch(&s->ckpt, s->db);
	return MOSQ_ERR_SUCCESS;
}

static void sqlite_close(struct im__store *st)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q;

	if(s == NULL) return;
	im_ckpt__stop(&s->ckpt);
	if(s->db){
		/* Finalize every statement, including those we did not keep. */
		while((q = sqlite3_next_stmt(s->db, NULL)) != NULL) sqlite3_finalize(q);
		sqlite3_close(s->db);
	}
	im_sqlite__cache_free(&s->tls);
	im_sqlite__group_close(s);
	im_cache__touched_free(&s->touched);
	free(s);
	st->be = NULL;
	st->ops = NULL;
}

/* ---- transactions ---- */

static int sqlite_begin(struct im__store *st)
{
	struct im__sqlite *s = im_sqlite(st);

	s->touched.n = 0;
	s->groups_dirty = false;
	/* A reader re-reads every head it uses, so its cache is only the
	 * entries' memory: kept small. */
	if(s->reader && s->tls.count > READER_CACHE_MAX) im_sqlite__cache_free(&s->tls);
	return im_sqlite__step(s, s->begin, "BEGIN");
}

static void sqlite_rollback(struct im__store *st)
{
	struct im__sqlite *s = im_sqlite(st);

	/* COMMIT may fail (SQLITE_FULL, SQLITE_IOERR) and leave the
	 * transaction open: roll back so the next one starts clean. */
	if(!sqlite3_get_autocommit(s->db)) im_sqlite__step(s, s->rollback, "ROLLBACK");
	/* Heads moved inside the transaction: reload them on next use. */
	im_cache__touched_stale(&s->touched);
	if(s->groups_dirty) im_sqlite__group_forget(s);
	s->groups_dirty = false;
}

static int sqlite_commit(struct im__store *st, uint64_t applied_lsn)
{
	struct im__sqlite *s = im_sqlite(st);
	uint8_t idb[8];
	int rc = MOSQ_ERR_SUCCESS;

	if(applied_lsn) rc = meta_put(s, "applied_lsn", NULL, 0, (int64_t)applied_lsn);
	if(rc == MOSQ_ERR_SUCCESS && s->id_dirty){
		be64(idb, st->store_id);
		rc = meta_put(s, "store_id", idb, 8, 0);
	}
	if(rc == MOSQ_ERR_SUCCESS) rc = im_sqlite__step(s, s->commit, "COMMIT");
	if(rc != MOSQ_ERR_SUCCESS){
		sqlite_rollback(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(applied_lsn) st->applied_lsn = applied_lsn;
	s->id_dirty = false;
	s->touched.n = 0;
	s->groups_dirty = false;
	return MOSQ_ERR_SUCCESS;
}

static size_t sqlite_cached(struct im__store *st, size_t *groups)
{
	struct im__sqlite *s = im_sqlite(st);

	*groups = s->groups.count;
	return s->tls.count;
}

static void sqlite_forget_group(struct im__store *st, const char *name, size_t len)
{
	struct im__sqlite *s = im_sqlite(st);

	if(name == NULL) im_cache__group_forget_all(&s->groups);
	else im_cache__group_forget(&s->groups, name, len);
}

static const struct im__store_ops sqlite_ops = {
	.name = "sqlite",
	.close = sqlite_close,
	.begin = sqlite_begin,
	.commit = sqlite_commit,
	.rollback = sqlite_rollback,
	.timeline = im_sqlite__timeline,
	.append = im_sqlite__append,
	.range = im_sqlite__range,
	.cursor_get = im_sqlite__cursor_get,
	.cursor_set = im_sqlite__cursor_set,
	.group = im_sqlite__group,
	.group_change = im_sqlite__group_change,
	.groups_of = im_sqlite__groups_of,
	.group_counts = im_sqlite__group_counts,
	.each_group = im_sqlite__each_group,
	.wrote = im_sqlite__wrote,
	.each_wrote = im_sqlite__each_wrote,
	.trim_step = im_sqlite__trim_step,
	.cached = sqlite_cached,
	.scrub = im_sqlite__scrub,
	.dedup = im_sqlite__dedup,
	.lookup = im_sqlite__lookup,
	.amend = im_sqlite__amend,
	.note_last = im_sqlite__note_last,
	.read_mark = im_sqlite__read_mark,
	.reads_of = im_sqlite__reads_of,
	.has_conv = im_sqlite__has_conv,
	.conversations = im_sqlite__conversations,
	.renew_id = sqlite_renew_id,
	.forget_group = sqlite_forget_group,
};
