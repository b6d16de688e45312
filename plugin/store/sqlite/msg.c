/*
 * Timelines and messages (SQLite backend): the timeline cache, append with
 * dedup by (sender, cmid), and range reads for sync.
 *
 * The cache is the only place sequencing reads heads from, so appending
 * reads nothing from disk but the cmid index. Heads move inside the open
 * transaction (a batch appends many messages to one timeline); a rollback
 * marks the touched entries stale and they are reloaded on next use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

/* ---- timeline cache: open addressing, im_map__hash, grows at 50% load ----
 * Not an im_map: one allocation per timeline with the name inline and an
 * 8-byte slot keeps a cached head at about 170 bytes of resident memory; the
 * generic map (separate key copy, 32-byte slots) measured 249 (bench/memory.sh). */

struct im__tl *im_sqlite__cache_find(struct im__tl_cache *c, const char *name, size_t len)
{
	uint32_t h = im_map__hash(name, len);
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
		ns = calloc(ncap, sizeof(*ns));
		if(ns == NULL) return MOSQ_ERR_NOMEM;
		for(i = 0; i < c->cap; i++){
			if(c->slots[i]){
				size_t j = c->slots[i]->hash & (ncap - 1);
				while(ns[j]) j = (j + 1) & (ncap - 1);
				ns[j] = c->slots[i];
			}
		}
		free(c->slots);
		c->slots = ns;
		c->cap = ncap;
	}
	for(i = t->hash & (c->cap - 1); c->slots[i]; i = (i + 1) & (c->cap - 1));
	c->slots[i] = t;
	c->count++;
	return MOSQ_ERR_SUCCESS;
}

void im_sqlite__cache_free(struct im__tl_cache *c)
{
	size_t i;

	for(i = 0; i < c->cap; i++) free(c->slots[i]);
	free(c->slots);
	memset(c, 0, sizeof(*c));
}

int im_sqlite__prepare_msg(struct im__sqlite *s)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		/* The head is not written per message (one UPDATE and one page
		 * less per commit): it is the larger of the persisted head_seq
		 * (kept by retention) and the newest row. */
		{&s->tl_get, "SELECT id, max(head_seq, coalesce((SELECT max(seq) FROM messages WHERE tl = timelines.id), 0)),"
			" first_seq FROM timelines WHERE name = ?1"},
		{&s->tl_insert, "INSERT INTO timelines(name, created_ms) VALUES(?1, ?2)"},
		{&s->tl_set_first, "UPDATE timelines SET first_seq = ?2, head_seq = max(head_seq, ?3) WHERE id = ?1"},
		{&s->msg_insert, "INSERT INTO messages(tl, seq, ts_ms, sender, cmid, peer, ctype, flags, expires_ms, copy, body, key_id, raw_len, ref_seq, peer_seq)"
			" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"},
		/* The original (copy 0) names the timeline that holds it: a repeat
		 * is answered with that timeline, whatever the repeat addressed. */
		{&s->msg_dedup, "SELECT m.copy, m.seq, m.ts_ms, t.name FROM messages m JOIN timelines t ON t.id = m.tl"
			" WHERE m.sender = ?1 AND m.cmid = ?2 AND m.cmid IS NOT NULL"},
		{&s->msg_range, "SELECT seq, ts_ms, sender, cmid, peer, ctype, flags, expires_ms, body, key_id, raw_len, ref_seq, peer_seq FROM messages"
			" WHERE tl = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"},
		{&s->cursor_get, "SELECT seq FROM cursors WHERE tl = ?1 AND user = ?2 AND client_id = ?3"},
		{&s->cursor_set, "INSERT INTO cursors(tl, user, client_id, seq, updated_ms) VALUES(?1, ?2, ?3, ?4, ?5)"
			" ON CONFLICT(tl, user, client_id) DO UPDATE SET seq = max(seq, excluded.seq), updated_ms = excluded.updated_ms"
			" RETURNING seq"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(im_sqlite__prepare(s, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

/* ---- timelines ---- */

/* Reads the timeline row into t. Returns 1 found, 0 absent, -1 error. */
static int tl_load(struct im__sqlite *s, struct im__tl *t)
{
	int rc;

	sqlite3_bind_text(s->tl_get, 1, t->name, t->name_len, SQLITE_STATIC);
	rc = sqlite3_step(s->tl_get);
	if(rc == SQLITE_ROW){
		t->id = sqlite3_column_int64(s->tl_get, 0);
		t->head = (uint64_t)sqlite3_column_int64(s->tl_get, 1);
		t->first = (uint64_t)sqlite3_column_int64(s->tl_get, 2);
	}
	sqlite3_reset(s->tl_get);
	if(rc == SQLITE_ROW) return 1;
	if(rc == SQLITE_DONE) return 0;
	im_sqlite__fail(s, "loading a timeline");
	return -1;
}

static int tl_create(struct im__sqlite *s, struct im__tl *t)
{
	sqlite3_bind_text(s->tl_insert, 1, t->name, t->name_len, SQLITE_STATIC);
	sqlite3_bind_int64(s->tl_insert, 2, im_now_ms());
	if(im_sqlite__step(s, s->tl_insert, "creating a timeline") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	t->id = sqlite3_last_insert_rowid(s->db);
	t->head = 0;
	t->first = 1;
	/* The row is part of the open transaction, or of none. */
	if(!sqlite3_get_autocommit(s->db)) im_sqlite__touch(s, t);
	return MOSQ_ERR_SUCCESS;
}

/* Loads (or creates) the row of a cached entry that is new or stale.
 * Returns 1 usable, 0 absent, -1 error. */
static int tl_refresh(struct im__sqlite *s, struct im__tl *t, bool create)
{
	int found = tl_load(s, t);

	if(found < 0) return -1;
	if(found == 0){
		if(!create) return 0;
		if(tl_create(s, t) != MOSQ_ERR_SUCCESS) return -1;
	}
	t->stale = false;
	return 1;
}

struct im__tl *im_sqlite__timeline(struct im__store *st, const char *name, size_t len, bool create, bool *err)
{
	struct im__sqlite *s = im_sqlite(st);
	struct im__tl *t = im_sqlite__cache_find(&s->tls, name, len);
	int r;

	*err = false;
	/* A reader's heads move with the writer's commits: read each time,
	 * as of the reader's transaction. */
	if(s->reader) create = false;
	if(t && !t->stale && !s->reader) return t;
	if(t){
		r = tl_refresh(s, t, create);
		*err = r < 0;
		return r > 0 ? t : NULL;
	}
	if(len > IM_TL_MAX) return NULL;
	t = calloc(1, sizeof(*t) + len + 1);
	if(t == NULL){
		*err = true;
		return NULL;
	}
	t->hash = im_map__hash(name, len);
	t->name_len = (uint16_t)len;
	memcpy(t->name, name, len);
	r = tl_refresh(s, t, create);
	if(r <= 0 || cache_put(&s->tls, t) != MOSQ_ERR_SUCCESS){
		*err = r != 0;
		/* A row created in this transaction may sit in the touched list:
		 * keep the entry alive (stale) rather than free it under it. */
		if(r > 0){
			t->stale = true;
			return NULL;
		}
		free(t);
		return NULL;
	}
	return t;
}

/* ---- append ---- */

int im_sqlite__insert_msg(struct im__store *st, struct im__tl *t, uint64_t seq, const struct im__msg *m, int copy,
		uint64_t ref_seq, uint64_t peer_seq)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->msg_insert;
	const void *body = m->body_len ? m->body : "";
	size_t body_len = m->body_len;
	uint16_t key_id = 0;
	int rc;

	if(st->crypt && im_crypt__seal(st->crypt, t->name, seq, m->body, m->body_len, &body, &body_len, &key_id) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot encrypt a message for %s.", t->name);
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_bind_int64(q, 1, t->id);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)seq);
	sqlite3_bind_int64(q, 3, m->ts_ms);
	sqlite3_bind_text(q, 4, m->sender, -1, SQLITE_STATIC);
	if(m->cmid) sqlite3_bind_text(q, 5, m->cmid, -1, SQLITE_STATIC);
	else sqlite3_bind_null(q, 5);
	sqlite3_bind_text(q, 6, m->to, -1, SQLITE_STATIC);
	if(m->content_type) sqlite3_bind_text(q, 7, m->content_type, -1, SQLITE_STATIC);
	else sqlite3_bind_null(q, 7);
	sqlite3_bind_int64(q, 8, m->flags);
	sqlite3_bind_int64(q, 9, m->expires_ms);
	sqlite3_bind_int(q, 10, copy);
	/* An empty body is stored as an empty blob, not NULL. */
	sqlite3_bind_blob(q, 11, body, (int)body_len, SQLITE_STATIC);
	sqlite3_bind_int(q, 12, key_id);
	sqlite3_bind_int64(q, 13, m->raw_len);
	sqlite3_bind_int64(q, 14, (sqlite3_int64)ref_seq);
	sqlite3_bind_int64(q, 15, (sqlite3_int64)peer_seq);
	rc = im_sqlite__step(s, q, "inserting a message");
	sqlite3_clear_bindings(q);
	if(rc == MOSQ_ERR_SUCCESS){
		t->head = seq;
		im_sqlite__touch(s, t);
	}
	return rc;
}

/* Looks (sender, cmid) up. Returns 1 if seen (out filled), 0 if not, -1 on
 * error. */
static int dedup_find(struct im__sqlite *s, const struct im__msg *m, struct im__appended *out)
{
	sqlite3_stmt *q = s->msg_dedup;
	int rc;

	sqlite3_bind_text(q, 1, m->sender, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, m->cmid, -1, SQLITE_STATIC);
	memset(out, 0, sizeof(*out));
	while((rc = sqlite3_step(q)) == SQLITE_ROW){
		if(sqlite3_column_int(q, 0)){
			out->own_seq = (uint64_t)sqlite3_column_int64(q, 1);
		}else{
			out->seq = (uint64_t)sqlite3_column_int64(q, 1);
			out->ts_ms = sqlite3_column_int64(q, 2);
			snprintf(out->timeline, sizeof(out->timeline), "%s", im_sqlite__text(q, 3));
			out->duplicate = true;
		}
	}
	sqlite3_reset(q);
	if(rc != SQLITE_DONE){
		im_sqlite__fail(s, "dedup lookup");
		return -1;
	}
	return out->duplicate ? 1 : 0;
}

int im_sqlite__dedup(struct im__store *st, const char *sender, const char *cmid, struct im__appended *out)
{
	struct im__msg m = {0};

	m.sender = sender;
	m.cmid = cmid;
	return dedup_find(im_sqlite(st), &m, out) < 0 ? MOSQ_ERR_UNKNOWN : MOSQ_ERR_SUCCESS;
}

int im_sqlite__append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m,
		struct im__appended *out)
{
	struct im__sqlite *s = im_sqlite(st);
	int rc;

	/* Inside the batch's transaction: a repeat in the same batch sees the
	 * first copy, and two processes sharing the file cannot both store it. */
	if(m->cmid){
		rc = dedup_find(s, m, out);
		if(rc != 0) return rc > 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
	}
	memset(out, 0, sizeof(*out));
	out->ts_ms = m->ts_ms;
	snprintf(out->timeline, sizeof(out->timeline), "%s", to->name);
	out->seq = to->head + 1;
	if(own && own != to) out->own_seq = own->head + 1;
	/* An edit or recall names the changed message in each timeline by its
	 * seq there: m->ref_seq in `to`, m->own_ref_seq in own. */
	rc = im_sqlite__insert_msg(st, to, out->seq, m, 0, m->ref_seq, out->own_seq);
	if(rc == MOSQ_ERR_SUCCESS && out->own_seq){
		rc = im_sqlite__insert_msg(st, own, out->own_seq, m, 1, m->own_ref_seq, out->seq);
	}
	return rc;
}

/* ---- reads ---- */

int im_sqlite__range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit, int64_t now_ms,
		im_store__row_fn fn, void *ctx, bool *more)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->msg_range;
	struct im__msg m;
	uint32_t n = 0;
	enum im_row r = IM_ROW_NEXT;
	int rc, out = MOSQ_ERR_SUCCESS;

	*more = false;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)after);
	sqlite3_bind_int64(q, 3, (sqlite3_int64)limit + 1);
	/* Expired rows count against limit: a batch may hold fewer frames than
	 * asked for, with has_more still true, but never scans unbounded. */
	while((rc = sqlite3_step(q)) == SQLITE_ROW){
		if(++n > limit){
			*more = true;
			break;
		}
		memset(&m, 0, sizeof(m));
		m.seq = (uint64_t)sqlite3_column_int64(q, 0);
		m.ts_ms = sqlite3_column_int64(q, 1);
		m.sender = im_sqlite__text(q, 2);
		m.cmid = im_sqlite__text(q, 3);
		m.to = im_sqlite__text(q, 4);
		m.content_type = im_sqlite__text(q, 5);
		m.flags = (uint32_t)sqlite3_column_int64(q, 6);
		m.expires_ms = sqlite3_column_int64(q, 7);
		m.raw_len = (uint32_t)sqlite3_column_int64(q, 10);
		m.ref_seq = (uint64_t)sqlite3_column_int64(q, 11);
		m.peer_seq = (uint64_t)sqlite3_column_int64(q, 12);
		m.body = sqlite3_column_blob(q, 8);
		m.body_len = (size_t)sqlite3_column_bytes(q, 8);
		if(m.expires_ms && m.expires_ms <= now_ms) continue;
		if(sqlite3_column_int(q, 9) != 0 && m.body_len && (st->crypt == NULL
					|| im_crypt__open(st->crypt, (uint16_t)sqlite3_column_int(q, 9), tl->name, m.seq,
						m.body, m.body_len, &m.body, &m.body_len) != MOSQ_ERR_SUCCESS)){
			im_log(MOSQ_LOG_ERR, "im: store: cannot decrypt %s seq %llu (key %d missing from plugin_opt_store_key_file, or the row was altered).",
					tl->name, (unsigned long long)m.seq, sqlite3_column_int(q, 9));
			out = MOSQ_ERR_UNKNOWN;
			break;
		}
		r = fn(ctx, &m);
		if(r == IM_ROW_STOP) *more = true;
		if(r != IM_ROW_NEXT) break;
	}
	sqlite3_reset(q);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "reading a timeline");
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	return out;
}
