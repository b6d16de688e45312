/*
 * Timelines, append (into the batch's write-behind buffer, wb.c), range and
 * cursors (PostgreSQL backend).
 *
 * Seqs: a timeline's row is locked (SELECT ... FOR NO KEY UPDATE: the
 * worker's prelock at the batch's start, or the first append to it) and
 * the lock is held until the batch ends, so the brokers writing one
 * timeline take turns and seqs stay gap-free; the head read with the lock
 * is exact. An append then gives the next seqs from that head in memory
 * and keeps the rows in the write-behind buffer (struct im__pg_wb); the
 * commit sends the whole batch in one round trip (pipeline mode): one
 * INSERT of every row (unnest of arrays), one UPDATE of the heads it moved,
 * one upsert of its direct conversations (conv.c folds them per owner and
 * peer), then the node's position, then COMMIT. A rolled-back batch drops
 * the buffer and gives its seqs back with everything else (the entries are
 * re-read: struct im__tl). A direct message's two rows take their two
 * locks in timeline id order, so two brokers appending alice->bob and
 * bob->alice at once do not deadlock. Two batches of several messages can
 * still take locks in opposite orders: PostgreSQL then fails one of them
 * after deadlock_timeout (1 s by default) and the worker retries it; a
 * lower deadlock_timeout (superuser) or a lock_timeout (conninfo
 * options=-c lock_timeout=...) makes that cheaper. The worker's prelock
 * takes them all up front, in name order.
 *
 * Statements that read what the buffer holds (range here; read marks,
 * the list and the conversation rows in conv.c) send it first
 * (im_pg__flush), so each sees the batch as if every write had gone at
 * once: a batch of messages costs a few statements, a batch that mixes
 * reads in one more round trip per read.
 *
 * Dedup: a message with a cmid claims it in one statement at append time
 * (PG_CLAIM: its original row inserted unless this sender stored that
 * cmid already; the sender's copy waits in the buffer). If another broker
 * stores the same (sender, cmid) concurrently, the unique index makes one
 * insert wait for the other's transaction and then skip (ON CONFLICT DO
 * NOTHING, no error, no savepoint); the skipped append took no seq yet and
 * answers "duplicate" with the original's values. A message without a
 * cmid costs no statement until the commit.
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
		/* Held already (by an append of this transaction): its head may be
		 * ahead of the database's, in the buffer. */
		if(im_pg__locked(s, t)) continue;
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

static int lock_for_append(struct im__pg *s, struct im__tl *to, struct im__tl *own)
{
	struct im__tl *need[2];
	struct im__pgq q = {0};
	PGresult *r;
	int n = 0, i, k, rows;

	if(!im_pg__locked(s, to)) need[n++] = to;
	if(own && own != to && !im_pg__locked(s, own)) need[n++] = own;
	if(n == 0) return MOSQ_ERR_SUCCESS;
	for(i = 0; i < n; i++) im_pgq__i64(&q, need[i]->id);
	r = n == 1 ? im_pg__run(s, PG_TL_LOCK, &q, "locking a timeline")
		: im_pg__run(s, PG_TL_LOCK_TWO, &q, "locking a message's timelines");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	rows = PQntuples(r);
	for(k = 0; k < rows; k++){
		int64_t id = n == 1 ? need[0]->id : im_pg__int(r, k, 0);
		int col = n == 1 ? 0 : 1;
		for(i = 0; i < n; i++){
			if(need[i]->id != id) continue;
			need[i]->head = (uint64_t)im_pg__int(r, k, col);
			need[i]->first = (uint64_t)im_pg__int(r, k, col + 1);
			need[i]->stale = false;
			im_pg__touch(s, need[i]);
		}
	}
	PQclear(r);
	for(i = 0; i < n; i++){
		if(!im_pg__locked(s, need[i])){
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: timeline %s vanished (its row is gone).", need[i]->name);
			return MOSQ_ERR_UNKNOWN;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* ---- a batch's cmids, looked up at once ---- */

static int cmid_key(char *key, size_t cap, const char *sender, const char *cmid)
{
	int n = snprintf(key, cap, "%s\n%s", sender, cmid);

	return n > 0 && (size_t)n < cap ? n : -1;
}

/* What dedup_batch knows of (sender, cmid); NULL: it was not asked. */
static struct im__pg_seen *seen_get(struct im__pg *s, const char *sender, const char *cmid)
{
	char key[IM_NAME_MAX + IM_CMID_MAX + 2];
	int n = cmid_key(key, sizeof(key), sender, cmid);
	uintptr_t at;

	if(n < 0 || s->wb.by_cmid.count == 0) return NULL;
	at = (uintptr_t)im_map__get(&s->wb.by_cmid, key, (size_t)n);
	return at ? &s->wb.seen[at - 1] : NULL;
}

static struct im__pg_seen *seen_put(struct im__pg *s, const char *sender, const char *cmid)
{
	struct im__pg_wb *wb = &s->wb;
	char key[IM_NAME_MAX + IM_CMID_MAX + 2];
	int n = cmid_key(key, sizeof(key), sender, cmid);
	struct im__pg_seen *v;

	if(n < 0) return NULL;  /* too long to be valid: asked one by one */
	if((v = seen_get(s, sender, cmid)) != NULL) return v;
	if(wb->ns == wb->scap){
		size_t cap = wb->scap ? wb->scap * 2 : 64;
		if((v = realloc(wb->seen, cap * sizeof(*v))) == NULL) return NULL;
		wb->seen = v;
		wb->scap = cap;
	}
	if(im_map__put(&wb->by_cmid, key, (size_t)n, (void *)(uintptr_t)(wb->ns + 1)) != MOSQ_ERR_SUCCESS) return NULL;
	v = &wb->seen[wb->ns++];
	memset(v, 0, sizeof(*v));
	v->timeline = -1;
	return v;
}

static void seen_out(struct im__pg *s, const struct im__pg_seen *v, struct im__appended *out)
{
	memset(out, 0, sizeof(*out));
	out->duplicate = true;
	out->seq = v->seq;
	out->own_seq = v->own_seq;
	out->ts_ms = v->ts_ms;
	snprintf(out->timeline, sizeof(out->timeline), "%s", (const char *)im_pg__wb_at(s, v->timeline));
}

/* One statement for the batch's pairs; those it does not find are known
 * new until this batch stores them. Without memory for one, that pair is
 * simply asked again when its message comes. */
int im_pg__dedup_batch(struct im__store *st, const char *const *senders, const char *const *cmids, size_t n)
{
	struct im__pg *s = im_pg(st);
	struct im__pgarr *c = s->wb.col;   /* free until the flush */
	struct im__pgq q = {0};
	struct im__pg_seen *v;
	PGresult *r;
	size_t i;
	int k;

	if(n == 0) return MOSQ_ERR_SUCCESS;
	im_pgarr__start(&c[0], 25);
	im_pgarr__start(&c[1], 25);
	for(i = 0; i < n; i++){
		im_pgarr__bytes(&c[0], senders[i], (ptrdiff_t)strlen(senders[i]));
		im_pgarr__bytes(&c[1], cmids[i], (ptrdiff_t)strlen(cmids[i]));
	}
	if(im_pgarr__param(&c[0], &q) != MOSQ_ERR_SUCCESS || im_pgarr__param(&c[1], &q) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_SUCCESS;
	r = im_pg__run(s, PG_DEDUP_MANY, &q, "dedup lookup of a batch");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	/* Answers first, then the pairs not found: a pair the map cannot take
	 * is left out (asked again at its append), never taken as new. */
	for(k = 0; k < PQntuples(r); k++){
		const char *tl = im_pg__text(r, k, 5);
		if((v = seen_put(s, im_pg__text(r, k, 0), im_pg__text(r, k, 1))) == NULL) continue;
		v->stored = true;
		if(im_pg__int(r, k, 2)){
			v->own_seq = (uint64_t)im_pg__int(r, k, 3);
		}else{
			v->seq = (uint64_t)im_pg__int(r, k, 3);
			v->ts_ms = im_pg__int(r, k, 4);
			v->timeline = im_pg__wb_put(s, tl, strlen(tl), true);
		}
	}
	PQclear(r);
	for(i = 0; i < s->wb.ns; i++){
		if(s->wb.seen[i].stored && s->wb.seen[i].timeline < 0){
			/* A copy without its original (retention, or a stored row
			 * the map could not take): ask again at the append. */
			s->wb.seen[i].stored = false;
			s->wb.seen[i].timeline = -2;
		}
	}
	for(i = 0; i < n; i++) seen_put(s, senders[i], cmids[i]);
	return MOSQ_ERR_SUCCESS;
}

/* Looks (sender, cmid) up: in the database (this transaction's claims
 * included), then the buffer (a sender's copy waits there). 1 if seen
 * (out filled), 0 if not, -1 error. */
static int dedup_find(struct im__pg *s, const char *sender, const char *cmid, struct im__appended *out)
{
	struct im__pgq q = {0};
	const char *a = (const char *)s->wb.arena.data;
	PGresult *r;
	size_t i;
	int k;

	memset(out, 0, sizeof(*out));
	im_pgq__text(&q, sender, -1);
	im_pgq__text(&q, cmid, -1);
	r = im_pg__run(s, PG_DEDUP, &q, "dedup lookup");
	if(r == NULL) return -1;
	for(k = 0; k < PQntuples(r); k++){
		if(im_pg__int(r, k, 0)){
			out->own_seq = (uint64_t)im_pg__int(r, k, 1);
		}else{
			out->seq = (uint64_t)im_pg__int(r, k, 1);
			out->ts_ms = im_pg__int(r, k, 2);
			snprintf(out->timeline, sizeof(out->timeline), "%s", im_pg__text(r, k, 3));
			out->duplicate = true;
		}
	}
	PQclear(r);
	/* The original of a cmid is never buffered (append claims it), but
	 * its copy is until the commit. */
	for(i = 0; out->duplicate && i < s->wb.n; i++){
		const struct im__pg_row *w = &s->wb.rows[i];
		if(w->copy && w->cmid >= 0 && !strcmp(a + w->cmid, cmid) && !strcmp(a + w->sender, sender)) out->own_seq = w->seq;
	}
	return out->duplicate ? 1 : 0;
}

int im_pg__dedup(struct im__store *st, const char *sender, const char *cmid, struct im__appended *out)
{
	struct im__pg *s = im_pg(st);
	struct im__pg_seen *v = seen_get(s, sender, cmid);

	if(v && v->timeline != -2){
		if(v->stored) seen_out(s, v, out);
		else memset(out, 0, sizeof(*out));
		return MOSQ_ERR_SUCCESS;
	}
	return dedup_find(s, sender, cmid, out) < 0 ? MOSQ_ERR_UNKNOWN : MOSQ_ERR_SUCCESS;
}

/* The body of m as stored in (t, seq): sealed for it with encryption at
 * rest. */
static int seal(struct im__store *st, struct im__tl *t, uint64_t seq, const struct im__msg *m, const void **body,
		size_t *len, uint16_t *key_id)
{
	*body = m->body_len ? m->body : "";
	*len = m->body_len;
	*key_id = 0;
	if(st->crypt == NULL) return MOSQ_ERR_SUCCESS;
	if(im_crypt__seal(st->crypt, t->name, seq, m->body, m->body_len, body, len, key_id) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot encrypt a message for %s.", t->name);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

/* The original row of a message with a cmid, inserted now: 1 stored, 0
 * (sender, cmid) was there already, -1 error. */
static int claim(struct im__store *st, struct im__tl *t, uint64_t seq, const struct im__msg *m, uint64_t ref,
		uint64_t peer)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	const void *body;
	size_t len;
	uint16_t key_id;
	PGresult *r;
	int stored;

	if(seal(st, t, seq, m, &body, &len, &key_id) != MOSQ_ERR_SUCCESS) return -1;
	im_pgq__i64(&q, t->id);
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__i64(&q, m->ts_ms);
	im_pgq__text(&q, m->sender, -1);
	im_pgq__text(&q, m->cmid, -1);
	im_pgq__text(&q, m->to, -1);
	im_pgq__text(&q, m->content_type, -1);
	im_pgq__i64(&q, m->flags);
	im_pgq__i64(&q, m->expires_ms);
	im_pgq__bytes(&q, body, len);
	im_pgq__i64(&q, key_id);
	im_pgq__i64(&q, m->raw_len);
	im_pgq__i64(&q, (int64_t)ref);
	im_pgq__i64(&q, (int64_t)peer);
	r = im_pg__run(s, PG_CLAIM, &q, "appending a message");
	if(r == NULL) return -1;
	stored = PQntuples(r) == 1;
	PQclear(r);
	return stored;
}

/* Buffers one row of m at seq of t. */
static int buffer_row(struct im__store *st, struct im__tl *t, uint64_t seq, const struct im__msg *m, int copy,
		uint64_t ref, uint64_t peer)
{
	const void *body;
	size_t len;
	uint16_t key_id;

	if(seal(st, t, seq, m, &body, &len, &key_id) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if(im_pg__wb_row(im_pg(st), t->id, seq, m, copy, body, len, key_id, ref, peer) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: out of memory buffering a message.");
		return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}

int im_pg__append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m,
		struct im__appended *out)
{
	struct im__pg *s = im_pg(st);
	struct im__pg_seen *v;
	uint64_t seq, own_seq = 0;
	int c;

	if(own == to) own = NULL;
	if(lock_for_append(s, to, own) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if(im_pg__wb_moved(s, to) != MOSQ_ERR_SUCCESS || (own && im_pg__wb_moved(s, own) != MOSQ_ERR_SUCCESS)){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: out of memory buffering a message.");
		return MOSQ_ERR_NOMEM;
	}
	s->wrote = true;
	/* Both timelines are locked: their next seqs are known, and each row
	 * names the other's. */
	seq = to->head + 1;
	if(own) own_seq = own->head + 1;
	if(m->cmid && (v = seen_get(s, m->sender, m->cmid)) != NULL && v->timeline != -2){
		/* Looked up with the batch's others (dedup_batch). */
		if(v->stored){
			seen_out(s, v, out);
			return MOSQ_ERR_SUCCESS;
		}
		if(buffer_row(st, to, seq, m, 0, m->ref_seq, own_seq) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		v->stored = true;
		v->seq = seq;
		v->own_seq = own_seq;
		v->ts_ms = m->ts_ms;
		if((v->timeline = im_pg__wb_put(s, to->name, to->name_len, true)) < 0){
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: out of memory buffering a message.");
			return MOSQ_ERR_NOMEM;
		}
	}else if(m->cmid){
		c = claim(st, to, seq, m, m->ref_seq, own_seq);
		if(c < 0) return MOSQ_ERR_UNKNOWN;
		if(c == 0){
			/* (sender, cmid) is another append's, committed (or this
			 * batch's): this one leaves no trace. */
			switch(dedup_find(s, m->sender, m->cmid, out)){
				case 1: return MOSQ_ERR_SUCCESS;
				case 0:
					/* Seen, then gone: retention removed the original in
					 * between. The retry decides afresh. */
					im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: the original of (%s, %s) was not found.", m->sender, m->cmid);
					return MOSQ_ERR_UNKNOWN;
				default: return MOSQ_ERR_UNKNOWN;
			}
		}
	}else if(buffer_row(st, to, seq, m, 0, m->ref_seq, own_seq) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	to->head = seq;
	if(own){
		if(buffer_row(st, own, own_seq, m, 1, m->own_ref_seq, seq) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		own->head = own_seq;
	}
	memset(out, 0, sizeof(*out));
	out->seq = seq;
	out->own_seq = own_seq;
	out->ts_ms = m->ts_ms;
	snprintf(out->timeline, sizeof(out->timeline), "%s", to->name);
	/* A very large batch (batch_max, large bodies) is sent in parts: the
	 * memory and the statement stay bounded, and what the batch sees is
	 * the same. */
	if(s->wb.used > WB_MAX_BYTES || s->wb.n > WB_MAX_ROWS) return im_pg__flush(s);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__append_one(struct im__store *st, struct im__tl *t, const struct im__msg *m, uint64_t *seq)
{
	struct im__appended a;

	if(im_pg__append(st, t, NULL, m, &a) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if(a.duplicate){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: cannot append to %s (the message's cmid is taken).", t->name);
		return MOSQ_ERR_UNKNOWN;
	}
	*seq = a.seq;
	return MOSQ_ERR_SUCCESS;
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
	if(im_pg__flush(s) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
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
