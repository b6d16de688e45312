/*
 * Timelines, append, range and cursors (PostgreSQL backend).
 *
 * Seqs: an append takes the next seq of a timeline with UPDATE ... SET
 * head = head + 1 RETURNING head, in the batch's transaction. The row lock
 * that takes is held until the batch ends, so the brokers writing one
 * timeline take turns and seqs stay gap-free; a rolled-back batch gives its
 * seqs back with everything else. A direct message's two rows take their
 * two locks in timeline id order, so two brokers appending alice->bob and
 * bob->alice at once do not deadlock. Two batches of several messages can
 * still take locks in opposite orders: PostgreSQL then fails one of them
 * after deadlock_timeout (1 s by default) and the worker retries it; a
 * lower deadlock_timeout (superuser) or a lock_timeout (conninfo
 * options=-c lock_timeout=...) makes that cheaper.
 *
 * Dedup: (sender, cmid) is looked up in the same statement that takes the
 * seq. If another broker stores the same (sender, cmid) concurrently, the
 * unique index makes one insert wait for the other's transaction and then
 * skip (ON CONFLICT DO NOTHING, no error, no savepoint); the skipped append
 * gives back the seqs it took (it still holds their locks) and answers
 * "duplicate" with the original's values.
 *
 * Heads in the cache are hints (other brokers move them): see store/store.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/pg/internal.h"

/* ---- the timeline cache ---- */

struct im__tl *im_pg__cache_find(struct im__pg *s, const char *name, size_t len)
{
	return im_map__get(&s->tls, name, len);
}

void im_pg__cache_free(struct im__pg *s)
{
	size_t i;

	for(i = 0; i < s->tls.cap; i++){
		if(s->tls.slots[i].key) free(im_pg__tle(s->tls.slots[i].val));
	}
	im_map__free(&s->tls, NULL);
}

/* Reads (or creates) t's row. 1 found, 0 absent, -1 error. */
static int tl_read(struct im__pg *s, struct im__tl *t, bool create)
{
	struct im__pgq q = {0};
	PGresult *r;
	int found;

	/* Made and committed apart from the batch: the next statement's
	 * snapshot sees it, also if another node made it meanwhile. */
	if(create && im_pg__create_timeline(s, t->name, t->name_len) != MOSQ_ERR_SUCCESS) return -1;
	im_pgq__text(&q, t->name, t->name_len);
	r = im_pg__run(s, PG_TL_GET, &q, "loading a timeline");
	if(r == NULL) return -1;
	found = PQntuples(r) == 1;
	if(found){
		t->id = im_pg__int(r, 0, 0);
		t->head = (uint64_t)im_pg__int(r, 0, 1);
		t->first = (uint64_t)im_pg__int(r, 0, 2);
	}
	PQclear(r);
	if(!found && create){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: timeline %s was made but cannot be read.", t->name);
		return -1;
	}
	return found;
}

/* A new entry for name, not yet in the cache (its row not read). */
static struct im__tl *entry_new(const char *name, size_t len)
{
	struct im__pg_tle *e;
	struct im__tl *t;

	if(len > IM_TL_MAX || (e = calloc(1, sizeof(*e) + sizeof(*t) + len + 1)) == NULL) return NULL;
	t = (struct im__tl *)(void *)(e + 1);
	t->hash = im_map__hash(name, len);
	t->name_len = (uint16_t)len;
	memcpy(t->name, name, len);
	return t;
}

/* Each call reads the row again (heads move on other nodes), unless this
 * transaction holds its lock: then the cached values are exact. */
struct im__tl *im_pg__timeline(struct im__store *st, const char *name, size_t len, bool create, bool *err)
{
	struct im__pg *s = im_pg(st);
	struct im__tl *t = im_pg__cache_find(s, name, len);
	int r;

	*err = false;
	if(t && im_pg__locked(s, t)) return t;
	if(t){
		r = tl_read(s, t, false);
		if(r == 0 && create) r = tl_read(s, t, true);
		*err = r < 0;
		if(r <= 0) return NULL;
		t->stale = false;
		return t;
	}
	if(len > IM_TL_MAX) return NULL;
	if((t = entry_new(name, len)) == NULL){
		*err = true;
		return NULL;
	}
	r = tl_read(s, t, false);
	if(r == 0 && create) r = tl_read(s, t, true);
	if(r <= 0 || im_map__put(&s->tls, name, len, t) != MOSQ_ERR_SUCCESS){
		*err = r != 0;
		free(im_pg__tle(t));
		return NULL;
	}
	return t;
}

/* Locks the rows of names[i] for which want(i) (those that exist), in
 * name order, in one statement; their entries come out current and
 * locked. */
static int lock_names(struct im__pg *s, const char *const *names, const bool *create, size_t n, bool second)
{
	struct im__pgq q = {0};
	struct im__buf list = {0};
	struct im__tl *t;
	PGresult *r;
	size_t i, len, used = 0;
	int rc = MOSQ_ERR_SUCCESS, row;

	for(i = 0; i < n; i++){
		len = strlen(names[i]);
		/* The second round: only the rows just made. */
		if(second && (!create[i] || ((t = im_pg__cache_find(s, names[i], len)) && im_pg__locked(s, t)))) continue;
		if(im_buf__reserve(&list, used + len + 1) != MOSQ_ERR_SUCCESS){
			im_buf__free(&list);
			return MOSQ_ERR_NOMEM;
		}
		if(used) list.data[used++] = '\n';
		memcpy(list.data + used, names[i], len);
		used += len;
	}
	if(used == 0) return MOSQ_ERR_SUCCESS;
	im_pgq__text(&q, (const char *)list.data, (int)used);
	r = im_pg__run(s, PG_PRELOCK, &q, "locking the batch's timelines");
	im_buf__free(&list);
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(row = 0; row < PQntuples(r) && rc == MOSQ_ERR_SUCCESS; row++){
		const char *name = im_pg__text(r, row, 3);

		len = strlen(name);
		if((t = im_pg__cache_find(s, name, len)) == NULL){
			if((t = entry_new(name, len)) == NULL || im_map__put(&s->tls, name, len, t) != MOSQ_ERR_SUCCESS){
				if(t) free(im_pg__tle(t));
				rc = MOSQ_ERR_NOMEM;
				break;
			}
		}
		t->id = im_pg__int(r, row, 0);
		t->head = (uint64_t)im_pg__int(r, row, 1);
		t->first = (uint64_t)im_pg__int(r, row, 2);
		t->stale = false;
		im_pg__touch(s, t);
	}
	PQclear(r);
	return rc;
}

/* The batch's timelines locked up front, in name order, in one statement:
 * two nodes' batches that write the same timelines then wait for each
 * other instead of each holding what the other needs next (a deadlock,
 * which PostgreSQL breaks after deadlock_timeout by failing one batch).
 * The rows that create asks for and that are missing are then made (apart
 * from the batch, as timeline() does) and locked in a second statement:
 * only the first use of a timeline. The entries come out locked:
 * timeline() then answers from the cache. */
int im_pg__prelock(struct im__store *st, const char *const *names, const bool *create, size_t n)
{
	struct im__pg *s = im_pg(st);
	struct im__tl *t;
	size_t i, len;
	bool missing = false;
	int rc;

	if(n == 0) return MOSQ_ERR_SUCCESS;
	rc = lock_names(s, names, create, n, false);
	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		len = strlen(names[i]);
		if(!create[i] || ((t = im_pg__cache_find(s, names[i], len)) && im_pg__locked(s, t))) continue;
		rc = im_pg__create_timeline(s, names[i], len);
		missing = true;
	}
	if(rc == MOSQ_ERR_SUCCESS && missing) rc = lock_names(s, names, create, n, true);
	return rc;
}

/* ---- append ---- */

enum put { PUT_OK, PUT_DUP, PUT_CONFLICT, PUT_ERR };

static void q_msg_tail(struct im__pgq *q, const struct im__msg *m, int copy, const void *body, size_t body_len,
		uint16_t key_id)
{
	im_pgq__text(q, m->sender, -1);
	im_pgq__text(q, m->cmid, -1);
	im_pgq__text(q, m->to, -1);
	im_pgq__text(q, m->content_type, -1);
	im_pgq__i64(q, m->flags);
	im_pgq__i64(q, m->expires_ms);
	im_pgq__i64(q, copy);
	im_pgq__bytes(q, body, body_len);
	im_pgq__i64(q, key_id);
	im_pgq__i64(q, m->raw_len);
}

/* Stores one copy of m at the next seq of t, naming ref (the seq an edit
 * or recall changes, in t) and peer (a direct message's seq in the other
 * inbox). check: look (sender, cmid) up first (the first copy of an
 * append). PUT_OK: stored at *seq.
 * PUT_DUP: (sender, cmid) was there, nothing changed. PUT_CONFLICT:
 * another transaction stored it meanwhile; *seq was taken and must be
 * given back. */
static enum put put_copy(struct im__store *st, struct im__tl *t, const struct im__msg *m, int copy, bool check,
		uint64_t ref, uint64_t peer, uint64_t *seq)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	const char *check_cmid = check ? m->cmid : NULL;
	const void *body = m->body_len ? m->body : "";
	size_t body_len = m->body_len;
	uint16_t key_id = 0;
	PGresult *r;
	bool stored;

	if(st->crypt == NULL){
		im_pgq__i64(&q, t->id);
		im_pgq__i64(&q, m->ts_ms);
		q_msg_tail(&q, m, copy, body, body_len, 0);
		im_pgq__text(&q, check_cmid, -1);
		im_pgq__i64(&q, (int64_t)ref);
		im_pgq__i64(&q, (int64_t)peer);
		r = im_pg__run(s, PG_PUT, &q, "appending a message");
		if(r == NULL) return PUT_ERR;
		if(PQgetisnull(r, 0, 0)){
			PQclear(r);
			return PUT_DUP;
		}
		*seq = (uint64_t)im_pg__int(r, 0, 0);
		stored = !PQgetisnull(r, 0, 1);
		PQclear(r);
		t->head = *seq;
		im_pg__touch(s, t);
		return stored ? PUT_OK : PUT_CONFLICT;
	}
	/* Sealed bodies are bound to (timeline, seq): take the seq first. */
	im_pgq__i64(&q, t->id);
	im_pgq__text(&q, m->sender, -1);
	im_pgq__text(&q, check_cmid, -1);
	r = im_pg__run(s, PG_TAKE, &q, "taking a seq");
	if(r == NULL) return PUT_ERR;
	if(PQntuples(r) == 0){
		PQclear(r);
		return PUT_DUP;
	}
	*seq = (uint64_t)im_pg__int(r, 0, 0);
	PQclear(r);
	t->head = *seq;
	im_pg__touch(s, t);
	if(im_crypt__seal(st->crypt, t->name, *seq, m->body, m->body_len, &body, &body_len, &key_id) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot encrypt a message for %s.", t->name);
		return PUT_ERR;
	}
	memset(&q, 0, sizeof(q));
	im_pgq__i64(&q, t->id);
	im_pgq__i64(&q, (int64_t)*seq);
	im_pgq__i64(&q, m->ts_ms);
	q_msg_tail(&q, m, copy, body, body_len, key_id);
	im_pgq__i64(&q, (int64_t)ref);
	im_pgq__i64(&q, (int64_t)peer);
	r = im_pg__run(s, PG_INSERT, &q, "inserting a message");
	if(r == NULL) return PUT_ERR;
	stored = PQntuples(r) == 1;
	PQclear(r);
	return stored ? PUT_OK : PUT_CONFLICT;
}

/* Gives seq of t back (and deletes its row if it was stored). */
static int undo(struct im__pg *s, struct im__tl *t, uint64_t seq, bool stored)
{
	struct im__pgq q = {0};
	PGresult *r;
	bool ok;

	im_pgq__i64(&q, t->id);
	im_pgq__i64(&q, (int64_t)seq);
	if(stored && im_pg__exec(s, PG_UNPUT, &q, "undoing an append") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	r = im_pg__run(s, PG_UNTAKE, &q, "giving a seq back");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	ok = strcmp(PQcmdTuples(r), "1") == 0;
	PQclear(r);
	if(!ok){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %s moved while this transaction held it.", t->name);
		return MOSQ_ERR_UNKNOWN;
	}
	t->head = seq - 1;
	return MOSQ_ERR_SUCCESS;
}

/* Looks (sender, cmid) up. 1 if seen (out filled), 0 if not, -1 error. */
static int dedup_find(struct im__pg *s, const char *sender, const char *cmid, struct im__appended *out)
{
	struct im__pgq q = {0};
	PGresult *r;
	int i;

	memset(out, 0, sizeof(*out));
	im_pgq__text(&q, sender, -1);
	im_pgq__text(&q, cmid, -1);
	r = im_pg__run(s, PG_DEDUP, &q, "dedup lookup");
	if(r == NULL) return -1;
	for(i = 0; i < PQntuples(r); i++){
		if(im_pg__int(r, i, 0)){
			out->own_seq = (uint64_t)im_pg__int(r, i, 1);
		}else{
			out->seq = (uint64_t)im_pg__int(r, i, 1);
			out->ts_ms = im_pg__int(r, i, 2);
			snprintf(out->timeline, sizeof(out->timeline), "%s", im_pg__text(r, i, 3));
			out->duplicate = true;
		}
	}
	PQclear(r);
	return out->duplicate ? 1 : 0;
}

int im_pg__dedup(struct im__store *st, const char *sender, const char *cmid, struct im__appended *out)
{
	return dedup_find(im_pg(st), sender, cmid, out) < 0 ? MOSQ_ERR_UNKNOWN : MOSQ_ERR_SUCCESS;
}

int im_pg__append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m,
		struct im__appended *out)
{
	struct im__pg *s = im_pg(st);
	struct im__tl *tl[2] = {to, own};
	int copy[2] = {0, 1}, n = 1, i, j;
	uint64_t seq[2] = {0, 0}, ref[2] = {m->ref_seq, m->own_ref_seq}, peer[2] = {0, 0};
	enum put r = PUT_ERR;
	struct im__pgq q = {0};

	s->wrote = true;
	if(own && own != to){
		n = 2;
		if(own->id < to->id){
			tl[0] = own;
			tl[1] = to;
			copy[0] = 1;
			copy[1] = 0;
			ref[0] = m->own_ref_seq;
			ref[1] = m->ref_seq;
		}
		/* Each row names the other's seq. The second timeline's next seq
		 * is known if this transaction holds its lock (prelock, or an
		 * earlier append); if not, the first row learns it afterwards. */
		if(im_pg__locked(s, tl[1])) peer[0] = tl[1]->head + 1;
	}
	for(i = 0; i < n; i++){
		if(i == 1) peer[1] = seq[0];
		r = put_copy(st, tl[i], m, copy[i], i == 0 && m->cmid, ref[i], peer[i], &seq[i]);
		if(r != PUT_OK) break;
	}
	if(i == n && n == 2 && peer[0] != seq[1]){
		im_pgq__i64(&q, tl[0]->id);
		im_pgq__i64(&q, (int64_t)seq[0]);
		im_pgq__i64(&q, (int64_t)seq[1]);
		if(im_pg__exec(s, PG_PEER_SET, &q, "linking a message's two rows") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	if(i == n){
		memset(out, 0, sizeof(*out));
		out->ts_ms = m->ts_ms;
		snprintf(out->timeline, sizeof(out->timeline), "%s", to->name);
		for(j = 0; j < n; j++){
			if(copy[j]) out->own_seq = seq[j];
			else out->seq = seq[j];
		}
		return MOSQ_ERR_SUCCESS;
	}
	if(r == PUT_ERR) return MOSQ_ERR_UNKNOWN;
	if(m->cmid == NULL){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: timeline %s vanished (its row is gone).", tl[i]->name);
		return MOSQ_ERR_UNKNOWN;
	}
	/* (sender, cmid) is another append's, committed: this one leaves no trace. */
	if(r == PUT_CONFLICT && undo(s, tl[i], seq[i], false) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	for(j = i - 1; j >= 0; j--){
		if(undo(s, tl[j], seq[j], true) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	switch(dedup_find(s, m->sender, m->cmid, out)){
		case 1: return MOSQ_ERR_SUCCESS;
		case 0:
			/* Seen, then gone: retention removed the original in between,
			 * or the timeline row is missing. The retry decides afresh. */
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: the original of (%s, %s) was not found.", m->sender, m->cmid);
			return MOSQ_ERR_UNKNOWN;
		default: return MOSQ_ERR_UNKNOWN;
	}
}

int im_pg__append_one(struct im__store *st, struct im__tl *t, const struct im__msg *m, uint64_t *seq)
{
	switch(put_copy(st, t, m, 0, false, 0, 0, seq)){
		case PUT_OK: return MOSQ_ERR_SUCCESS;
		case PUT_ERR: return MOSQ_ERR_UNKNOWN;
		default:
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: cannot append to %s (its row is gone, or the message's cmid is taken).", t->name);
			return MOSQ_ERR_UNKNOWN;
	}
}

/* ---- reads ---- */

int im_pg__range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit, int64_t now_ms,
		im_store__row_fn fn, void *ctx, bool *more)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	struct im__msg m;
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	uint32_t n = 0;
	int i, rows, key_id, out = MOSQ_ERR_SUCCESS;

	*more = false;
	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)after);
	im_pgq__i64(&q, (int64_t)limit + 1);
	r = im_pg__run(s, PG_RANGE, &q, "reading a timeline");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	rows = PQntuples(r);
	if(rows > 0){
		/* head and first as of the rows' snapshot: a sync's head_seq is
		 * never below a seq it returns. */
		tl->head = (uint64_t)im_pg__int(r, 0, 0);
		tl->first = (uint64_t)im_pg__int(r, 0, 1);
	}
	/* Expired rows count against limit, as in the SQLite backend. */
	for(i = 0; i < rows; i++){
		if(PQgetisnull(r, i, 2)) continue; /* no rows: the timeline alone */
		if(++n > limit){
			*more = true;
			break;
		}
		memset(&m, 0, sizeof(m));
		m.seq = (uint64_t)im_pg__int(r, i, 2);
		m.ts_ms = im_pg__int(r, i, 3);
		m.sender = im_pg__text(r, i, 4);
		m.cmid = im_pg__text(r, i, 5);
		m.to = im_pg__text(r, i, 6);
		m.content_type = im_pg__text(r, i, 7);
		m.flags = (uint32_t)im_pg__int(r, i, 8);
		m.expires_ms = im_pg__int(r, i, 9);
		m.body = PQgetvalue(r, i, 10);
		m.body_len = (size_t)PQgetlength(r, i, 10);
		key_id = (int)im_pg__int(r, i, 11);
		m.raw_len = (uint32_t)im_pg__int(r, i, 12);
		m.ref_seq = (uint64_t)im_pg__int(r, i, 13);
		m.peer_seq = (uint64_t)im_pg__int(r, i, 14);
		if(m.expires_ms && m.expires_ms <= now_ms) continue;
		if(key_id != 0 && (st->crypt == NULL
					|| im_crypt__open(st->crypt, (uint16_t)key_id, tl->name, m.seq, m.body, m.body_len,
						&m.body, &m.body_len) != MOSQ_ERR_SUCCESS)){
			im_log(MOSQ_LOG_ERR, "im: store: cannot decrypt %s seq %llu (key %d missing from plugin_opt_store_key_file, or the row was altered).",
					tl->name, (unsigned long long)m.seq, key_id);
			out = MOSQ_ERR_UNKNOWN;
			break;
		}
		row = fn(ctx, &m);
		if(row == IM_ROW_STOP) *more = true;
		if(row != IM_ROW_NEXT) break;
	}
	PQclear(r);
	if(row == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	return out;
}

/* ---- cursors: per (timeline, user, client id), never backwards ---- */

int im_pg__cursor_get(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id, uint64_t *seq)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	PGresult *r;

	*seq = 0;
	if(tl == NULL) return MOSQ_ERR_SUCCESS;
	im_pgq__i64(&q, tl->id);
	im_pgq__text(&q, user, -1);
	im_pgq__text(&q, client_id, -1);
	r = im_pg__run(s, PG_CURSOR_GET, &q, "reading a cursor");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	if(PQntuples(r) == 1) *seq = (uint64_t)im_pg__int(r, 0, 0);
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__cursor_set(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id,
		uint64_t seq, uint64_t *now)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	PGresult *r;

	s->wrote = true;
	im_pgq__i64(&q, tl->id);
	im_pgq__text(&q, user, -1);
	im_pgq__text(&q, client_id, -1);
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__i64(&q, im_now_ms());
	r = im_pg__run(s, PG_CURSOR_SET, &q, "moving a cursor");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	if(PQntuples(r) == 1) *now = (uint64_t)im_pg__int(r, 0, 0);
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}
