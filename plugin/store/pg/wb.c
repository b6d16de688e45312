/*
 * The batch's write-behind buffer (PostgreSQL backend; wb.h). append
 * (msg.c) and the conversation notes (conv.c) fill it; flush sends it all
 * in one round trip: every row in one INSERT ... SELECT FROM unnest(...),
 * the moved heads in one UPDATE (each checked against the head read under
 * the lock: any other count fails the batch rather than leave a gap), the
 * folded direct conversations in one upsert.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/pg/internal.h"
ptrdiff_t im_pg__wb_put(struct im__pg *s, const void *p, size_t len, bool nul)
{
	struct im__pg_wb *wb = &s->wb;
	ptrdiff_t off = (ptrdiff_t)wb->used;

	if(p == NULL) return -1;
	if(im_buf__reserve(&wb->arena, wb->used + len + 1) != MOSQ_ERR_SUCCESS) return -2;
	if(len) memcpy(wb->arena.data + wb->used, p, len);
	wb->used += len;
	if(nul) wb->arena.data[wb->used++] = '\0';
	return off;
}

void *im_pg__wb_at(struct im__pg *s, ptrdiff_t off)
{
	return off < 0 ? NULL : s->wb.arena.data + off;
}

static ptrdiff_t put_str(struct im__pg *s, const char *str, bool *nomem)
{
	ptrdiff_t off = str ? im_pg__wb_put(s, str, strlen(str), true) : -1;

	if(off == -2) *nomem = true;
	return off;
}

void im_pg__wb_drop(struct im__pg *s)
{
	struct im__pg_wb *wb = &s->wb;

	wb->used = 0;
	wb->n = 0;
	wb->nn = 0;
	wb->ntl = 0;
	wb->ns = 0;
	im_map__clear(&wb->by_conv);
	im_map__clear(&wb->by_cmid);
}

void im_pg__wb_free(struct im__pg *s)
{
	struct im__pg_wb *wb = &s->wb;
	size_t i;

	im_buf__free(&wb->arena);
	free(wb->rows);
	free(wb->notes);
	free(wb->tls);
	free(wb->seen);
	im_map__free(&wb->by_conv, NULL);
	im_map__free(&wb->by_cmid, NULL);
	for(i = 0; i < sizeof(wb->col) / sizeof(wb->col[0]); i++) im_pgarr__free(&wb->col[i]);
	memset(wb, 0, sizeof(*wb));
}

struct im__pg_row *im_pg__wb_find(struct im__pg *s, int64_t tl, uint64_t seq)
{
	size_t i;

	/* Rare (edits and recalls of a message of the same batch): a scan. */
	for(i = s->wb.n; i-- > 0;){
		if(s->wb.rows[i].tl == tl && s->wb.rows[i].seq == seq) return &s->wb.rows[i];
	}
	return NULL;
}

/* Notes that t's head moved in the buffer (once per transaction). */
int im_pg__wb_moved(struct im__pg *s, struct im__tl *t)
{
	struct im__pg_wb *wb = &s->wb;
	struct im__tl **v;

	if(im_pg__tle(t)->wb_gen == s->gen) return MOSQ_ERR_SUCCESS;
	if(wb->ntl == wb->tlcap){
		size_t cap = wb->tlcap ? wb->tlcap * 2 : 16;
		if((v = realloc(wb->tls, cap * sizeof(*v))) == NULL) return MOSQ_ERR_NOMEM;
		wb->tls = v;
		wb->tlcap = cap;
	}
	wb->tls[wb->ntl++] = t;
	im_pg__tle(t)->wb_gen = s->gen;
	return MOSQ_ERR_SUCCESS;
}

/* Keeps one row for the commit; body as stored (sealed if it is). */
int im_pg__wb_row(struct im__pg *s, int64_t tl, uint64_t seq, const struct im__msg *m, int copy, const void *body,
		size_t body_len, int key_id, uint64_t ref, uint64_t peer)
{
	struct im__pg_wb *wb = &s->wb;
	struct im__pg_row *r;
	bool nomem = false;

	if(wb->n == wb->cap){
		size_t cap = wb->cap ? wb->cap * 2 : 64;
		struct im__pg_row *v = realloc(wb->rows, cap * sizeof(*v));
		if(v == NULL) return MOSQ_ERR_NOMEM;
		wb->rows = v;
		wb->cap = cap;
	}
	r = &wb->rows[wb->n];
	memset(r, 0, sizeof(*r));
	r->tl = tl;
	r->seq = seq;
	r->ts_ms = m->ts_ms;
	r->flags = m->flags;
	r->expires_ms = m->expires_ms;
	r->copy = copy;
	r->key_id = key_id;
	r->raw_len = m->raw_len;
	r->ref_seq = ref;
	r->peer_seq = peer;
	r->sender = put_str(s, m->sender, &nomem);
	r->cmid = put_str(s, m->cmid, &nomem);
	r->peer = put_str(s, m->to, &nomem);
	r->ctype = put_str(s, m->content_type, &nomem);
	r->body = im_pg__wb_put(s, body_len ? body : "", body_len, false);
	r->body_len = body_len;
	if(nomem || r->body == -2) return MOSQ_ERR_NOMEM;
	wb->n++;
	return MOSQ_ERR_SUCCESS;
}

static void arr_str(struct im__pgarr *c, const char *arena, ptrdiff_t off)
{
	im_pgarr__bytes(c, off < 0 ? NULL : arena + off, off < 0 ? -1 : (ptrdiff_t)strlen(arena + off));
}

/* The parameters of a flush's statements: the rows, the heads they moved,
 * the conversations. *n_heads: how many heads (the UPDATE must change
 * exactly that many rows). */
static int wb_params(struct im__pg *s, struct im__pgq *rows, struct im__pgq *heads, struct im__pgq *convs,
		long *n_heads)
{
	static const unsigned types[27] = {
		20, 20, 20, 25, 25, 25, 25, 20, 20, 20, 17, 20, 20, 20, 20,     /* rows */
		20, 20, 20,                                                     /* heads */
		25, 25, 20, 20, 25, 20, 25, 20, 20};                            /* conversations */
	struct im__pg_wb *wb = &s->wb;
	struct im__pgarr *c = wb->col;
	const char *a = (const char *)wb->arena.data;
	struct im__tl *t;
	size_t i;
	int j, rc = MOSQ_ERR_SUCCESS;

	*n_heads = 0;
	for(j = 0; j < 27; j++) im_pgarr__start(&c[j], types[j]);
	for(i = 0; i < wb->n; i++){
		const struct im__pg_row *r = &wb->rows[i];
		im_pgarr__i64(&c[0], r->tl);
		im_pgarr__i64(&c[1], (int64_t)r->seq);
		im_pgarr__i64(&c[2], r->ts_ms);
		arr_str(&c[3], a, r->sender);
		arr_str(&c[4], a, r->cmid);
		arr_str(&c[5], a, r->peer);
		arr_str(&c[6], a, r->ctype);
		im_pgarr__i64(&c[7], r->flags);
		im_pgarr__i64(&c[8], r->expires_ms);
		im_pgarr__i64(&c[9], r->copy);
		im_pgarr__bytes(&c[10], a + r->body, (ptrdiff_t)r->body_len);
		im_pgarr__i64(&c[11], r->key_id);
		im_pgarr__i64(&c[12], r->raw_len);
		im_pgarr__i64(&c[13], (int64_t)r->ref_seq);
		im_pgarr__i64(&c[14], (int64_t)r->peer_seq);
	}
	for(i = 0; i < wb->ntl; i++){
		t = wb->tls[i];
		if(t->head == im_pg__tle(t)->db_head) continue;
		im_pgarr__i64(&c[15], t->id);
		im_pgarr__i64(&c[16], (int64_t)t->head);
		im_pgarr__i64(&c[17], (int64_t)im_pg__tle(t)->db_head);
		(*n_heads)++;
	}
	for(i = 0; i < wb->nn; i++){
		const struct im__pg_note *n = &wb->notes[i];
		arr_str(&c[18], a, n->owner);
		arr_str(&c[19], a, n->peer);
		im_pgarr__i64(&c[20], (int64_t)n->seq);
		im_pgarr__i64(&c[21], n->ts);
		arr_str(&c[22], a, n->sender);
		im_pgarr__i64(&c[23], n->flags);
		arr_str(&c[24], a, n->preview);
		im_pgarr__i64(&c[25], n->unread);
		im_pgarr__i64(&c[26], (int64_t)n->sent_seq);
	}
	for(j = 0; j < 15 && rc == MOSQ_ERR_SUCCESS; j++) rc = im_pgarr__param(&c[j], rows);
	for(; j < 18 && rc == MOSQ_ERR_SUCCESS; j++) rc = im_pgarr__param(&c[j], heads);
	for(; j < 27 && rc == MOSQ_ERR_SUCCESS; j++) rc = im_pgarr__param(&c[j], convs);
	return rc;
}

/* Sends what the buffer holds and then tail (if not NULL: the commit's
 * own statement), in one round trip, and empties the buffer. *tail_rows:
 * the rows tail changed. On failure the transaction is aborted: the
 * caller fails the batch. */
int im_pg__flush_then(struct im__pg *s, enum im_pg_stmt tail, const struct im__pgq *tq, long *tail_rows)
{
	struct im__pg_wb *wb = &s->wb;
	struct im__pgq q[3];
	const struct im__pgq *qs[4];
	enum im_pg_stmt ids[4];
	long rows[4] = {0, 0, 0, 0}, n_heads = 0;
	int n = 0, i_heads = -1;
	size_t i;

	memset(q, 0, sizeof(q));
	if((wb->n || wb->nn || wb->ntl) && wb_params(s, &q[0], &q[1], &q[2], &n_heads) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: out of memory sending a batch.");
		return MOSQ_ERR_NOMEM;
	}
	if(wb->n){
		ids[n] = PG_WB_ROWS;
		qs[n++] = &q[0];
	}
	if(n_heads){
		i_heads = n;
		ids[n] = PG_WB_HEADS;
		qs[n++] = &q[1];
	}
	if(wb->nn){
		ids[n] = PG_WB_CONVS;
		qs[n++] = &q[2];
	}
	if(tq){
		ids[n] = tail;
		qs[n++] = tq;
	}
	if(n == 1){
		/* One statement alone goes as usual (no pipeline to set up). */
		PGresult *r = im_pg__run(s, ids[0], qs[0], "storing a batch");
		if(r == NULL) return MOSQ_ERR_UNKNOWN;
		rows[0] = atol(PQcmdTuples(r));
		PQclear(r);
	}else if(n > 1 && im_pg__run_many(s, ids, qs, n, rows, "storing a batch") != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	if(tq) *tail_rows = rows[n - 1];
	if(i_heads >= 0 && rows[i_heads] != n_heads){
		/* The row locks say this cannot be: rather fail than store a gap. */
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %ld of %ld timeline heads moved while this transaction held them.",
				n_heads - rows[i_heads], n_heads);
		return MOSQ_ERR_UNKNOWN;
	}
	for(i = 0; i < wb->ntl; i++){
		im_pg__tle(wb->tls[i])->db_head = wb->tls[i]->head;
		im_pg__tle(wb->tls[i])->wb_gen = 0;
	}
	im_pg__wb_drop(s);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__flush(struct im__pg *s)
{
	return im_pg__flush_then(s, PG_NSTMT, NULL, NULL);
}

/* ---- append ---- */

/* Locks the rows of the timelines (one or two) this transaction does not
 * hold yet, in id order, and reads their heads. */
