/*
 * The store: one SQLite database in WAL mode, statements prepared once,
 * schema migrations by PRAGMA user_version, and an in-memory cache of
 * timeline heads so that sequencing a message reads nothing from disk.
 *
 * Policy: a message is committed before the broker acknowledges it. Every
 * SQLite failure is logged here, once, with sqlite3_errmsg, and reported
 * upwards as MOSQ_ERR_UNKNOWN; callers decide what the client sees.
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "im.h"

extern const char *const im_schema_migrations[];

static int fail(struct im__store *st, const char *what)
{
	mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: %s: %s", what, sqlite3_errmsg(st->db));
	return MOSQ_ERR_UNKNOWN;
}

int64_t im_store__mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t im_store__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- timeline cache: open addressing, im_map__hash, grows at 50% load ----
 * Not an im_map: one allocation per timeline with the name inline and an
 * 8-byte slot keeps a cached head at 170 bytes of resident memory; the
 * generic map (separate key copy, 32-byte slots) measured 249 (bench/memory.sh). */

static struct im__tl *cache_find(struct im__tl_cache *c, const char *name, size_t len, uint32_t h)
{
	size_t i;
	struct im__tl *t;

	if(c->cap == 0) return NULL;
	for(i = h & (c->cap - 1); (t = c->slots[i]) != NULL; i = (i + 1) & (c->cap - 1)){
		if(t->hash == h && t->name_len == len && !memcmp(t->name, name, len)) return t;
	}
	return NULL;
}

static int cache_put(struct im__tl_cache *c, struct im__tl *t)
{
	size_t i, ncap;
	struct im__tl **ns;

	if((c->count + 1) * 2 > c->cap){
		ncap = c->cap ? c->cap * 2 : 64;
		ns = mosquitto_calloc(ncap, sizeof(*ns));
		if(ns == NULL) return MOSQ_ERR_NOMEM;
		for(i = 0; i < c->cap; i++){
			if(c->slots[i]){
				size_t j = c->slots[i]->hash & (ncap - 1);
				while(ns[j]) j = (j + 1) & (ncap - 1);
				ns[j] = c->slots[i];
			}
		}
		mosquitto_free(c->slots);
		c->slots = ns;
		c->cap = ncap;
	}
	for(i = t->hash & (c->cap - 1); c->slots[i]; i = (i + 1) & (c->cap - 1));
	c->slots[i] = t;
	c->count++;
	return MOSQ_ERR_SUCCESS;
}

static void cache_free(struct im__tl_cache *c)
{
	size_t i;

	for(i = 0; i < c->cap; i++) mosquitto_free(c->slots[i]);
	mosquitto_free(c->slots);
	memset(c, 0, sizeof(*c));
}

/* ---- open, migrate, prepare ---- */

static int exec(struct im__store *st, const char *sql)
{
	char *err = NULL;

	if(sqlite3_exec(st->db, sql, NULL, NULL, &err) != SQLITE_OK){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: %s", err ? err : sqlite3_errmsg(st->db));
		sqlite3_free(err);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

static int migrate(struct im__store *st)
{
	sqlite3_stmt *s;
	int version = 0, target = 0, rc = MOSQ_ERR_SUCCESS;
	char sql[64];

	if(sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK){
		return fail(st, "reading user_version");
	}
	if(sqlite3_step(s) == SQLITE_ROW) version = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);

	while(im_schema_migrations[target]) target++;
	if(version > target){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: database schema version %d is newer than this plugin's (%d); refusing to open it.",
				version, target);
		return MOSQ_ERR_UNKNOWN;
	}
	for(; version < target && rc == MOSQ_ERR_SUCCESS; version++){
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version + 1);
		rc = exec(st, "BEGIN IMMEDIATE");
		if(rc == MOSQ_ERR_SUCCESS) rc = exec(st, im_schema_migrations[version]);
		if(rc == MOSQ_ERR_SUCCESS) rc = exec(st, sql);
		if(rc == MOSQ_ERR_SUCCESS) rc = exec(st, "COMMIT");
		if(rc != MOSQ_ERR_SUCCESS){
			exec(st, "ROLLBACK");
		}else{
			mosquitto_log_printf(MOSQ_LOG_INFO, "im: store: schema migrated to version %d.", version + 1);
		}
	}
	return rc;
}

static int prepare(struct im__store *st, sqlite3_stmt **s, const char *sql)
{
	if(sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL) != SQLITE_OK){
		return fail(st, sql);
	}
	return MOSQ_ERR_SUCCESS;
}

static int prepare_all(struct im__store *st)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		{&st->begin, "BEGIN IMMEDIATE"},
		{&st->commit, "COMMIT"},
		{&st->rollback, "ROLLBACK"},
		/* The head is not written per message (one UPDATE and one page
		 * less per commit): it is the larger of the persisted head_seq
		 * (kept by retention) and the newest row. */
		{&st->tl_get, "SELECT id, max(head_seq, coalesce((SELECT max(seq) FROM messages WHERE tl = timelines.id), 0)),"
			" first_seq FROM timelines WHERE name = ?1"},
		{&st->tl_insert, "INSERT INTO timelines(name, created_ms) VALUES(?1, ?2)"},
		{&st->tl_set_first, "UPDATE timelines SET first_seq = ?2, head_seq = max(head_seq, ?3) WHERE id = ?1"},
		{&st->msg_insert, "INSERT INTO messages(tl, seq, ts_ms, sender, cmid, peer, ctype, flags, expires_ms, copy, body, key_id, raw_len)"
			" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"},
		{&st->msg_dedup, "SELECT copy, seq, ts_ms FROM messages WHERE sender = ?1 AND cmid = ?2 AND cmid IS NOT NULL"},
		{&st->msg_range, "SELECT seq, ts_ms, sender, cmid, peer, ctype, flags, expires_ms, body, key_id, raw_len FROM messages"
			" WHERE tl = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"},
		{&st->cursor_get, "SELECT seq FROM cursors WHERE tl = ?1 AND user = ?2 AND client_id = ?3"},
		{&st->cursor_set, "INSERT INTO cursors(tl, user, client_id, seq, updated_ms) VALUES(?1, ?2, ?3, ?4, ?5)"
			" ON CONFLICT(tl, user, client_id) DO UPDATE SET seq = max(seq, excluded.seq), updated_ms = excluded.updated_ms"
			" RETURNING seq"},
		{&st->trim_list, "SELECT id, name, max(head_seq, coalesce((SELECT max(seq) FROM messages WHERE tl = timelines.id), 0)),"
			" first_seq FROM timelines WHERE id > ?1 ORDER BY id LIMIT 64"},
		{&st->trim_age_first, "SELECT seq FROM messages WHERE tl = ?1 AND seq >= ?2 AND ts_ms >= ?3 ORDER BY seq LIMIT 1"},
		{&st->trim_delete, "DELETE FROM messages WHERE tl = ?1 AND seq < ?2"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(prepare(st, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int im_store__open(struct im__store *st, const char *path, int synchronous, int busy_timeout_ms, int page_size,
		bool checkpoint_thread)
{
	char sql[64], pgsql[64];

	memset(st, 0, sizeof(*st));
	/* NOMUTEX: this connection is only used on the broker's thread (the
	 * checkpointer has its own), so SQLite's locking is pure cost. */
	if(sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: cannot open \"%s\": %s", path,
				st->db ? sqlite3_errmsg(st->db) : "out of memory");
		im_store__close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_busy_timeout(st->db, busy_timeout_ms);
	snprintf(sql, sizeof(sql), "PRAGMA synchronous = %d", synchronous);
	/* journal_mode answers with a row; exec ignores it. A database that
	 * cannot switch to WAL (read-only file or folder) fails here, at
	 * start, rather than on the first message. */
	snprintf(pgsql, sizeof(pgsql), "PRAGMA page_size = %d", page_size);
	/* page_size only takes on a new database (before WAL and the first
	 * table). Small pages: a commit writes each dirty page whole to the
	 * WAL, and an IM commit dirties a few pages for a few hundred bytes;
	 * 1 KiB pages measured +7..30% messages/s over 4 KiB (PERFORMANCE.md). */
	if(exec(st, pgsql) != MOSQ_ERR_SUCCESS || exec(st, "PRAGMA journal_mode = WAL") != MOSQ_ERR_SUCCESS
			|| exec(st, sql) != MOSQ_ERR_SUCCESS
			/* Checkpoints run on the checkpointer's thread, never inside a
			 * commit on the broker's thread (a stall of every client). */
			|| (checkpoint_thread && exec(st, "PRAGMA wal_autocheckpoint = 0") != MOSQ_ERR_SUCCESS)
			|| exec(st, "PRAGMA journal_size_limit = 67108864") != MOSQ_ERR_SUCCESS
			|| exec(st, "PRAGMA foreign_keys = OFF") != MOSQ_ERR_SUCCESS
			|| migrate(st) != MOSQ_ERR_SUCCESS
			|| prepare_all(st) != MOSQ_ERR_SUCCESS
			|| im_store__group_prepare(st) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: cannot use \"%s\" (is it writable by the broker's user?).", path);
		im_store__close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(sqlite3_db_readonly(st->db, "main") == 1){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: \"%s\" is read-only for the broker's user.", path);
		im_store__close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(checkpoint_thread && im_ckpt__start(&st->ckpt, path) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: cannot start the checkpoint thread for \"%s\".", path);
		im_store__close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_store__close(struct im__store *st)
{
	sqlite3_stmt *s;

	im_ckpt__stop(&st->ckpt);
	if(st->db){
		/* Finalize every statement, including those we did not keep. */
		while((s = sqlite3_next_stmt(st->db, NULL)) != NULL) sqlite3_finalize(s);
		sqlite3_close(st->db);
	}
	cache_free(&st->tls);
	im_store__group_close(st);
	memset(st, 0, sizeof(*st));
}

/* ---- timelines ---- */

static struct im__tl *tl_new(const char *name, size_t len, uint32_t h)
{
	struct im__tl *t = mosquitto_calloc(1, sizeof(*t) + len + 1);

	if(t == NULL) return NULL;
	t->hash = h;
	t->name_len = (uint16_t)len;
	memcpy(t->name, name, len);
	return t;
}

/* Reads the timeline row into t. Returns 1 found, 0 absent, -1 error. */
static int tl_load(struct im__store *st, struct im__tl *t)
{
	int rc;

	sqlite3_bind_text(st->tl_get, 1, t->name, t->name_len, SQLITE_STATIC);
	rc = sqlite3_step(st->tl_get);
	if(rc == SQLITE_ROW){
		t->id = sqlite3_column_int64(st->tl_get, 0);
		t->head = (uint64_t)sqlite3_column_int64(st->tl_get, 1);
		t->first = (uint64_t)sqlite3_column_int64(st->tl_get, 2);
	}
	sqlite3_reset(st->tl_get);
	if(rc == SQLITE_ROW) return 1;
	if(rc == SQLITE_DONE) return 0;
	fail(st, "loading a timeline");
	return -1;
}

static int tl_create(struct im__store *st, struct im__tl *t)
{
	int rc;

	sqlite3_bind_text(st->tl_insert, 1, t->name, t->name_len, SQLITE_STATIC);
	sqlite3_bind_int64(st->tl_insert, 2, im_store__now_ms());
	rc = sqlite3_step(st->tl_insert);
	sqlite3_reset(st->tl_insert);
	if(rc != SQLITE_DONE) return fail(st, "creating a timeline");
	t->id = sqlite3_last_insert_rowid(st->db);
	t->head = 0;
	t->first = 1;
	return MOSQ_ERR_SUCCESS;
}

struct im__tl *im_store__timeline(struct im__store *st, const char *name, size_t len, bool create)
{
	uint32_t h = im_map__hash(name, len);
	struct im__tl *t = cache_find(&st->tls, name, len, h);
	int found;

	if(t) return t;
	if(len > IM_TL_MAX) return NULL;
	t = tl_new(name, len, h);
	if(t == NULL) return NULL;
	found = tl_load(st, t);
	if(found < 0 || (found == 0 && (!create || tl_create(st, t) != MOSQ_ERR_SUCCESS))
			|| cache_put(&st->tls, t) != MOSQ_ERR_SUCCESS){
		mosquitto_free(t);
		return NULL;
	}
	return t;
}

/* ---- append ---- */

static int step_done(struct im__store *st, sqlite3_stmt *s, const char *what)
{
	int rc = sqlite3_step(s);

	sqlite3_reset(s);
	return rc == SQLITE_DONE ? MOSQ_ERR_SUCCESS : fail(st, what);
}

int im_store__step(struct im__store *st, sqlite3_stmt *s, const char *what)
{
	return step_done(st, s, what);
}

int im_store__begin(struct im__store *st)
{
	return step_done(st, st->begin, "BEGIN");
}

void im_store__rollback(struct im__store *st)
{
	/* COMMIT may fail (SQLITE_FULL, SQLITE_IOERR) and leave the
	 * transaction open: roll back so the next one starts clean. */
	if(!sqlite3_get_autocommit(st->db)) step_done(st, st->rollback, "ROLLBACK");
}

int im_store__commit(struct im__store *st)
{
	if(step_done(st, st->commit, "COMMIT") == MOSQ_ERR_SUCCESS) return MOSQ_ERR_SUCCESS;
	im_store__rollback(st);
	return MOSQ_ERR_UNKNOWN;
}

/* Looks (sender, cmid) up. Returns 1 if seen (out filled), 0 if not, -1 on
 * error. */
static int dedup_find(struct im__store *st, const struct im__msg *m, struct im__appended *out)
{
	int rc;

	sqlite3_bind_text(st->msg_dedup, 1, m->sender, -1, SQLITE_STATIC);
	sqlite3_bind_text(st->msg_dedup, 2, m->cmid, -1, SQLITE_STATIC);
	memset(out, 0, sizeof(*out));
	while((rc = sqlite3_step(st->msg_dedup)) == SQLITE_ROW){
		if(sqlite3_column_int(st->msg_dedup, 0)){
			out->own_seq = (uint64_t)sqlite3_column_int64(st->msg_dedup, 1);
		}else{
			out->seq = (uint64_t)sqlite3_column_int64(st->msg_dedup, 1);
			out->ts_ms = sqlite3_column_int64(st->msg_dedup, 2);
			out->duplicate = true;
		}
	}
	sqlite3_reset(st->msg_dedup);
	if(rc != SQLITE_DONE){
		fail(st, "dedup lookup");
		return -1;
	}
	return out->duplicate ? 1 : 0;
}

int im_store__insert_msg(struct im__store *st, struct im__tl *t, uint64_t seq, const struct im__msg *m, int copy)
{
	sqlite3_stmt *s = st->msg_insert;
	const void *body = m->body_len ? m->body : "";
	size_t body_len = m->body_len;
	uint16_t key_id = 0;
	int rc;

	if(st->crypt && im_crypt__seal(st->crypt, t->name, seq, m->body, m->body_len, &body, &body_len, &key_id) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: cannot encrypt a message for %s.", t->name);
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_bind_int64(s, 1, t->id);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
	sqlite3_bind_int64(s, 3, m->ts_ms);
	sqlite3_bind_text(s, 4, m->sender, -1, SQLITE_STATIC);
	if(m->cmid) sqlite3_bind_text(s, 5, m->cmid, -1, SQLITE_STATIC);
	else sqlite3_bind_null(s, 5);
	sqlite3_bind_text(s, 6, m->to, -1, SQLITE_STATIC);
	if(m->content_type) sqlite3_bind_text(s, 7, m->content_type, -1, SQLITE_STATIC);
	else sqlite3_bind_null(s, 7);
	sqlite3_bind_int64(s, 8, m->flags);
	sqlite3_bind_int64(s, 9, m->expires_ms);
	sqlite3_bind_int(s, 10, copy);
	/* An empty body is stored as an empty blob, not NULL. */
	sqlite3_bind_blob(s, 11, body, (int)body_len, SQLITE_STATIC);
	sqlite3_bind_int(s, 12, key_id);
	sqlite3_bind_int64(s, 13, m->raw_len);
	rc = step_done(st, s, "inserting a message");
	sqlite3_clear_bindings(s);
	return rc;
}

int im_store__append(struct im__store *st, struct im__tl *to, struct im__tl *own,
		const struct im__msg *msg, struct im__appended *out)
{
	int rc;

	if(im_store__begin(st) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;

	/* Inside the transaction, so two brokers (or a tool) sharing the file
	 * cannot both store the same cmid. */
	if(msg->cmid){
		rc = dedup_find(st, msg, out);
		if(rc != 0){
			im_store__rollback(st);
			return rc > 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
		}
	}
	memset(out, 0, sizeof(*out));
	out->ts_ms = msg->ts_ms;
	out->seq = to->head + 1;
	rc = im_store__insert_msg(st, to, out->seq, msg, 0);
	if(rc == MOSQ_ERR_SUCCESS && own && own != to){
		out->own_seq = own->head + 1;
		rc = im_store__insert_msg(st, own, out->own_seq, msg, 1);
	}
	if(rc != MOSQ_ERR_SUCCESS){
		im_store__rollback(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(im_store__commit(st) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	to->head = out->seq;
	if(out->own_seq) own->head = out->own_seq;
	return MOSQ_ERR_SUCCESS;
}

/* ---- reads ---- */

static const char *col_text(sqlite3_stmt *s, int i)
{
	return (const char *)sqlite3_column_text(s, i);
}

int im_store__range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit,
		int64_t now_ms, im_store__row_fn fn, void *ctx, bool *more)
{
	sqlite3_stmt *s = st->msg_range;
	struct im__msg m;
	uint32_t n = 0;
	int rc, frc = 0;

	*more = false;
	sqlite3_bind_int64(s, 1, tl->id);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)after);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)limit + 1);
	/* Expired rows count against limit: a batch may hold fewer frames than
	 * asked for, with has_more still true, but never scans unbounded. */
	while((rc = sqlite3_step(s)) == SQLITE_ROW){
		if(++n > limit){
			*more = true;
			break;
		}
		memset(&m, 0, sizeof(m));
		m.seq = (uint64_t)sqlite3_column_int64(s, 0);
		m.ts_ms = sqlite3_column_int64(s, 1);
		m.sender = col_text(s, 2);
		m.cmid = col_text(s, 3);
		m.to = col_text(s, 4);
		m.content_type = col_text(s, 5);
		m.flags = (uint32_t)sqlite3_column_int64(s, 6);
		m.expires_ms = sqlite3_column_int64(s, 7);
		m.raw_len = (uint32_t)sqlite3_column_int64(s, 10);
		m.body = sqlite3_column_blob(s, 8);
		m.body_len = (size_t)sqlite3_column_bytes(s, 8);
		if(m.expires_ms && m.expires_ms <= now_ms) continue;
		if(sqlite3_column_int(s, 9) != 0 && (st->crypt == NULL
					|| im_crypt__open(st->crypt, (uint16_t)sqlite3_column_int(s, 9), tl->name, m.seq,
						m.body, m.body_len, &m.body, &m.body_len) != MOSQ_ERR_SUCCESS)){
			mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: cannot decrypt %s seq %llu (key %d missing from plugin_opt_store_key_file, or the row was altered).",
					tl->name, (unsigned long long)m.seq, sqlite3_column_int(s, 9));
			frc = MOSQ_ERR_UNKNOWN;
			break;
		}
		frc = fn(ctx, &m);
		if(frc == 1) *more = true;
		if(frc != 0) break;
	}
	sqlite3_reset(s);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(st, "reading a timeline");
	return frc > 1 ? frc : MOSQ_ERR_SUCCESS;
}

int im_store__cursor_get(struct im__store *st, struct im__tl *tl, const char *user,
		const char *client_id, uint64_t *seq)
{
	sqlite3_stmt *s = st->cursor_get;
	int rc;

	*seq = 0;
	sqlite3_bind_int64(s, 1, tl->id);
	sqlite3_bind_text(s, 2, user, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, client_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if(rc == SQLITE_ROW) *seq = (uint64_t)sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(st, "reading a cursor");
	return MOSQ_ERR_SUCCESS;
}

int im_store__cursor_set(struct im__store *st, struct im__tl *tl, const char *user,
		const char *client_id, uint64_t seq, uint64_t *now)
{
	sqlite3_stmt *s = st->cursor_set;
	int rc;

	sqlite3_bind_int64(s, 1, tl->id);
	sqlite3_bind_text(s, 2, user, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, client_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, (sqlite3_int64)seq);
	sqlite3_bind_int64(s, 5, im_store__now_ms());
	rc = sqlite3_step(s);
	if(rc == SQLITE_ROW) *now = (uint64_t)sqlite3_column_int64(s, 0);
	while(rc == SQLITE_ROW) rc = sqlite3_step(s);
	sqlite3_reset(s);
	if(rc != SQLITE_DONE) return fail(st, "moving a cursor");
	return MOSQ_ERR_SUCCESS;
}

/* ---- retention ---- */

struct trim_row {
	int64_t id;
	uint64_t head, first;
	char name[IM_TL_MAX + 1];
};

/* The first seq to keep in a timeline under the age and count limits. */
static int keep_from(struct im__store *st, const struct trim_row *t, int64_t cutoff_ms, int64_t keep, uint64_t *out)
{
	uint64_t first = t->first;
	int rc;

	if(keep > 0 && t->head > (uint64_t)keep && t->head - (uint64_t)keep + 1 > first){
		first = t->head - (uint64_t)keep + 1;
	}
	if(cutoff_ms > 0){
		sqlite3_bind_int64(st->trim_age_first, 1, t->id);
		sqlite3_bind_int64(st->trim_age_first, 2, (sqlite3_int64)first);
		sqlite3_bind_int64(st->trim_age_first, 3, cutoff_ms);
		rc = sqlite3_step(st->trim_age_first);
		if(rc == SQLITE_ROW) first = (uint64_t)sqlite3_column_int64(st->trim_age_first, 0);
		else if(rc == SQLITE_DONE) first = t->head + 1; /* everything is older */
		sqlite3_reset(st->trim_age_first);
		if(rc != SQLITE_ROW && rc != SQLITE_DONE) return fail(st, "retention scan");
	}
	*out = first;
	return MOSQ_ERR_SUCCESS;
}

static int trim_one(struct im__store *st, const struct trim_row *t, uint64_t new_first)
{
	struct im__tl *c;
	int n;

	if(step_done(st, st->begin, "BEGIN") != MOSQ_ERR_SUCCESS) return -1;
	sqlite3_bind_int64(st->trim_delete, 1, t->id);
	sqlite3_bind_int64(st->trim_delete, 2, (sqlite3_int64)new_first);
	sqlite3_bind_int64(st->tl_set_first, 1, t->id);
	sqlite3_bind_int64(st->tl_set_first, 2, (sqlite3_int64)new_first);
	sqlite3_bind_int64(st->tl_set_first, 3, (sqlite3_int64)t->head);
	if(step_done(st, st->trim_delete, "retention delete") != MOSQ_ERR_SUCCESS
			|| (n = sqlite3_changes(st->db), step_done(st, st->tl_set_first, "retention first_seq")) != MOSQ_ERR_SUCCESS
			|| step_done(st, st->commit, "COMMIT") != MOSQ_ERR_SUCCESS){
		if(!sqlite3_get_autocommit(st->db)) step_done(st, st->rollback, "ROLLBACK");
		return -1;
	}
	c = cache_find(&st->tls, t->name, strlen(t->name), im_map__hash(t->name, strlen(t->name)));
	if(c) c->first = new_first;
	return n;
}

int im_store__trim_step(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
		int64_t *cursor_id, bool *done)
{
	struct trim_row rows[64];
	int n = 0, i, rc, deleted = 0, d;
	uint64_t new_first;

	/* Read the list first: no statement stays open across the writes. */
	*done = false;
	sqlite3_bind_int64(st->trim_list, 1, *cursor_id);
	while(n < 64 && (rc = sqlite3_step(st->trim_list)) == SQLITE_ROW){
		rows[n].id = sqlite3_column_int64(st->trim_list, 0);
		snprintf(rows[n].name, sizeof(rows[n].name), "%s", col_text(st->trim_list, 1));
		rows[n].head = (uint64_t)sqlite3_column_int64(st->trim_list, 2);
		rows[n].first = (uint64_t)sqlite3_column_int64(st->trim_list, 3);
		n++;
	}
	sqlite3_reset(st->trim_list);
	for(i = 0; i < n; i++){
		if(keep_from(st, &rows[i], cutoff_ms, keep, &new_first) != MOSQ_ERR_SUCCESS) return -1;
		if(new_first > rows[i].first){
			if((uint32_t)deleted >= budget) return deleted; /* resume at this timeline */
			if(new_first - rows[i].first > budget - (uint32_t)deleted){
				new_first = rows[i].first + (budget - (uint32_t)deleted);
			}
			d = trim_one(st, &rows[i], new_first);
			if(d < 0) return -1;
			deleted += d;
			rows[i].first = new_first;
			if(keep_from(st, &rows[i], cutoff_ms, keep, &new_first) != MOSQ_ERR_SUCCESS) return -1;
			if(new_first > rows[i].first) return deleted; /* more to do here */
		}
		*cursor_id = rows[i].id;
	}
	if(n < 64){
		*cursor_id = 0;
		*done = true;
	}
	return deleted;
}
