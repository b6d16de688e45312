/*
 * The batch's write-behind buffer (PostgreSQL backend, wb.c): the rows
 * and conversation notes a transaction stored but has not sent yet, sent
 * in one pipelined round trip before a read that must see them and at the
 * commit (msg.c says why). Part of store/pg/internal.h, which includes it
 * after the statement and parameter types it uses; worker thread only.
 */
#ifndef IM_STORE_PG_WB_H
#define IM_STORE_PG_WB_H

/* A batch larger than this is sent in parts (memory and statement stay
 * bounded; what the batch sees is the same). */
#define WB_MAX_BYTES (16u << 20)
#define WB_MAX_ROWS 8192

struct im__pg;

/* A message row the open transaction stored but has not sent yet. Its
 * strings and body live in the buffer's arena (offsets: the arena moves as
 * it grows; -1: NULL). */
struct im__pg_row {
	int64_t tl;
	uint64_t seq, ref_seq, peer_seq;
	int64_t ts_ms, expires_ms;
	uint32_t flags, raw_len;
	int key_id, copy;
	ptrdiff_t sender, cmid, peer, ctype, body;
	size_t body_len;
};

/* A direct conversation's notes of the open transaction, folded into one
 * (owner, peer) row: the latest message, the unread added, where the
 * peer's last message is. */
struct im__pg_note {
	ptrdiff_t owner, peer, sender, preview;
	uint64_t seq, sent_seq;
	int64_t ts, unread;
	uint32_t flags;
};

/* What dedup_batch found of one (sender, cmid), and what this batch
 * stored under it since. */
struct im__pg_seen {
	bool stored;
	uint64_t seq, own_seq;
	int64_t ts_ms;
	ptrdiff_t timeline;     /* arena offset */
};

/* The open transaction's writes that wait for its commit (or for a read
 * that must see them): msg.c and conv.c fill it, im_pg__flush sends it.
 * Dropped on rollback: the worker retries a batch from its jobs. */
struct im__pg_wb {
	struct im__buf arena;
	size_t used;
	struct im__pg_row *rows;
	size_t n, cap;
	struct im__pg_note *notes;
	size_t nn, ncap;
	struct im__map by_conv;     /* "owner\npeer" -> note index + 1 */
	struct im__pg_seen *seen;   /* (sender, cmid) looked up by dedup_batch */
	size_t ns, scap;
	struct im__map by_cmid;     /* "sender\ncmid" -> seen index + 1 */
	struct im__tl **tls;        /* timelines whose head moved in the buffer */
	size_t ntl, tlcap;
	struct im__pgarr col[15 + 3 + 9];   /* the flush's array parameters: rows, heads, conversations */
};

/* flush: sends what the buffer holds (before a statement that must see
 * it, and at commit); wb_find: the buffered row (tl, seq) or NULL;
 * wb_put/wb_at: bytes into the arena, an offset back (-1: NULL, -2: no
 * memory); wb_drop: forgets it all (a rollback); wb_free: close. */
int im_pg__flush(struct im__pg *s);
/* The same, with one more statement after the buffer's in the same round
 * trip (the commit's record of the node's position): *tail_rows, the rows
 * it changed. */
int im_pg__flush_then(struct im__pg *s, enum im_pg_stmt tail, const struct im__pgq *tq, long *tail_rows);
struct im__pg_row *im_pg__wb_find(struct im__pg *s, int64_t tl, uint64_t seq);
void *im_pg__wb_at(struct im__pg *s, ptrdiff_t off);
ptrdiff_t im_pg__wb_put(struct im__pg *s, const void *p, size_t len, bool nul);
void im_pg__wb_drop(struct im__pg *s);
void im_pg__wb_free(struct im__pg *s);
/* t's head moved in the buffer (noted once per transaction). */
int im_pg__wb_moved(struct im__pg *s, struct im__tl *t);
/* Keeps one row for the commit; body as stored (sealed if it is). */
int im_pg__wb_row(struct im__pg *s, int64_t tl, uint64_t seq, const struct im__msg *m, int copy, const void *body,
		size_t body_len, int key_id, uint64_t ref, uint64_t peer);

#endif
