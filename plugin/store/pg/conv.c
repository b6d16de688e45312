/*
 * Conversations (PostgreSQL backend): edits and recalls of stored
 * messages, read marks, and the conversation list. The same meaning as
 * store/sqlite/conv.c; what differs is that several brokers (nodes) do
 * this at once, so every counter moves by one atomic statement, and that
 * a batch's direct-conversation notes and the messages it stored wait in
 * the write-behind buffer (msg.c) until its commit, or until a statement
 * here reads what they change (read marks, reads_of, has_conv, the
 * list: each sends the buffer first); edits and recalls change a message
 * of the same batch where it waits:
 *
 * - unread: +1 per message (note_last's upsert adds to the row it finds),
 *   -n per read (one UPDATE lowering it by the messages now read), never
 *   below 0. Both happen while the batch holds the owner's inbox row lock
 *   (an append takes it; read_mark takes it too), so the writers of one
 *   owner's conversation rows take turns and never deadlock on them. How
 *   far the owner read each peer (read_seq) moves in that same UPDATE.
 * - a group's rows (group_last, its members' last_ts) are written under
 *   the group's timeline row lock, which its messages and membership
 *   changes take before them.
 * - a read mark only goes up, and the one being moved is locked first
 *   (read_lock), so two devices acknowledging on two nodes count each
 *   message read once: the second sees the first's mark as "before".
 * - a conversation's last message only moves to a higher seq.
 *
 * A recalled body is gone from the table at commit; the dead row version
 * keeps its bytes until (auto)vacuum reclaims the space (scrub is a no-op
 * here: docs/OPERATIONS.md, "PostgreSQL store").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/pg/internal.h"

int im_pg__lookup(struct im__store *st, struct im__tl *tl, uint64_t seq, bool *found, struct im__msg_ref *out)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	struct im__pg_row *w;
	PGresult *r;

	memset(out, 0, sizeof(*out));
	*found = false;
	/* A message of this batch is still in the buffer. */
	if((w = im_pg__wb_find(s, tl->id, seq)) != NULL){
		*found = true;
		snprintf(out->sender, sizeof(out->sender), "%s", (const char *)im_pg__wb_at(s, w->sender));
		out->flags = w->flags;
		out->peer_seq = w->peer_seq;
		out->copy = w->copy;
		return MOSQ_ERR_SUCCESS;
	}
	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)seq);
	r = im_pg__run(s, PG_MSG_LOOKUP, &q, "looking a message up");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	if(PQntuples(r) == 1){
		*found = true;
		snprintf(out->sender, sizeof(out->sender), "%s", im_pg__text(r, 0, 0));
		out->flags = (uint32_t)im_pg__int(r, 0, 1);
		out->peer_seq = (uint64_t)im_pg__int(r, 0, 2);
		out->copy = (int)im_pg__int(r, 0, 3);
	}
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__amend(struct im__store *st, struct im__tl *tl, uint64_t seq, const void *body, size_t len,
		uint32_t raw_len, uint32_t flags)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	const void *b = body ? body : "";
	size_t n = body ? len : 0, i;
	uint16_t key_id = 0;
	struct im__pg_row *w;
	ptrdiff_t off;

	/* An edit is sealed for its (timeline, seq) like any body. */
	if(body && st->crypt && im_crypt__seal(st->crypt, tl->name, seq, body, len, &b, &n, &key_id) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot encrypt an edit for %s.", tl->name);
		return MOSQ_ERR_UNKNOWN;
	}
	s->wrote = true;
	if((w = im_pg__wb_find(s, tl->id, seq)) != NULL){
		/* Changed where it waits: the buffer (the old body stays in the
		 * arena, unsent). */
		if((off = im_pg__wb_put(s, b, n, false)) == -2){
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: out of memory changing a message.");
			return MOSQ_ERR_NOMEM;
		}
		w->body = off;
		w->body_len = n;
		w->key_id = key_id;
		w->raw_len = body ? raw_len : 0;
		w->flags = (w->flags & ~2u) | flags;
	}else{
		im_pgq__i64(&q, tl->id);
		im_pgq__i64(&q, (int64_t)seq);
		im_pgq__bytes(&q, b, n);
		im_pgq__i64(&q, key_id);
		im_pgq__i64(&q, body ? raw_len : 0);
		im_pgq__i64(&q, flags);
		if(im_pg__exec(s, PG_MSG_AMEND, &q, "changing a message") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	if(body) return MOSQ_ERR_SUCCESS;
	/* A recall: its edits, in the buffer and (with a cmid, claimed) in
	 * the table. */
	for(i = 0; i < s->wb.n; i++){
		w = &s->wb.rows[i];
		if(w->tl != tl->id || w->ref_seq != seq || (w->flags & 4) == 0) continue;
		w->body_len = 0;
		w->key_id = 0;
		w->raw_len = 0;
		w->flags = (w->flags & ~2u) | 32;
	}
	memset(&q, 0, sizeof(q));
	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)seq);
	return im_pg__exec(s, PG_ERASE_EDITS, &q, "erasing edits");
}

/* A direct conversation's note, folded into the batch's row for (owner,
 * peer), sent at the commit (or before a read of the rows) as the upsert
 * of each would have left it: the latest message (the highest seq; ties:
 * the later note), the unread added up, the peer's last message. */
static int note_conv(struct im__pg *s, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int unread_add)
{
	struct im__pg_wb *wb = &s->wb;
	struct im__pg_note *n;
	char key[2 * IM_NAME_MAX + 2];
	int kl = snprintf(key, sizeof(key), "%s\n%s", owner, peer);
	uintptr_t at;
	ptrdiff_t o_sender, o_preview;
	bool fresh;

	if(kl <= 0 || (size_t)kl >= sizeof(key)) kl = (int)sizeof(key) - 1;
	at = (uintptr_t)im_map__get(&wb->by_conv, key, (size_t)kl);
	fresh = at == 0;
	if(fresh){
		if(wb->nn == wb->ncap){
			size_t cap = wb->ncap ? wb->ncap * 2 : 32;
			struct im__pg_note *v = realloc(wb->notes, cap * sizeof(*v));
			if(v == NULL) goto nomem;
			wb->notes = v;
			wb->ncap = cap;
		}
		n = &wb->notes[wb->nn];
		memset(n, 0, sizeof(*n));
		if((n->owner = im_pg__wb_put(s, owner, strlen(owner), true)) < 0
				|| (n->peer = im_pg__wb_put(s, peer, strlen(peer), true)) < 0
				|| im_map__put(&wb->by_conv, key, (size_t)kl, (void *)(uintptr_t)(wb->nn + 1)) != MOSQ_ERR_SUCCESS){
			goto nomem;
		}
		wb->nn++;
	}else{
		n = &wb->notes[at - 1];
	}
	if(fresh || seq >= n->seq){
		o_sender = im_pg__wb_put(s, sender, strlen(sender), true);
		o_preview = preview ? im_pg__wb_put(s, preview, strlen(preview), true) : -1;
		if(o_sender < 0 || o_preview == -2) goto nomem;
		n->seq = seq;
		n->ts = ts;
		n->sender = o_sender;
		n->flags = flags;
		n->preview = o_preview;
	}
	n->unread += unread_add;
	if(!strcmp(sender, peer) && seq > n->sent_seq) n->sent_seq = seq;
	return MOSQ_ERR_SUCCESS;
nomem:
	im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: out of memory noting a conversation.");
	return MOSQ_ERR_NOMEM;
}

int im_pg__note_last(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int add)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	PGresult *r;
	int64_t n;
	bool fan;

	s->wrote = true;
	if(owner) return note_conv(s, owner, peer, seq, ts, sender, flags, preview, add);
	im_pgq__text(&q, peer, -1);
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__i64(&q, ts);
	im_pgq__text(&q, sender, -1);
	im_pgq__i64(&q, flags);
	im_pgq__text(&q, preview, -1);
	im_pgq__i64(&q, add);
	if((r = im_pg__run(s, PG_GROUP_NOTE, &q, "noting a group")) == NULL) return MOSQ_ERR_UNKNOWN;
	fan = PQntuples(r) == 1 && im_pg__int(r, 0, 0);
	n = PQntuples(r) == 1 ? im_pg__int(r, 0, 1) : 0;
	PQclear(r);
	/* A group of at most IM_STORE_FAN_MAX members notes its activity in
	 * each member's row (done above). Past that its rows say -1 (listed
	 * apart; after a membership change, the new members' too), and after a
	 * change that leaves half of it, per member again. All under the
	 * group's row lock, which its messages and changes take first. */
	memset(&q, 0, sizeof(q));
	im_pgq__text(&q, peer, -1);
	if(fan){
		if(n <= IM_STORE_FAN_MAX) return MOSQ_ERR_SUCCESS;
		if(im_pg__exec(s, PG_GROUP_UNFAN, &q, "noting a group's members") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}else{
		if((flags & IM_STORE_FLAG_SYSTEM) == 0) return MOSQ_ERR_SUCCESS;
		if((r = im_pg__run(s, PG_GROUP_SIZE, &q, "counting a group's members")) == NULL) return MOSQ_ERR_UNKNOWN;
		n = PQntuples(r) == 1 ? im_pg__int(r, 0, 0) : 0;
		PQclear(r);
		if(n > IM_STORE_FAN_MAX / 2) return im_pg__exec(s, PG_GROUP_UNFAN, &q, "noting a group's members");
		im_pgq__i64(&q, ts);
		if(im_pg__exec(s, PG_GROUP_FAN_TS, &q, "noting a group's members") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		q.n = 1;
	}
	im_pgq__i64(&q, !fan);
	return im_pg__exec(s, PG_GROUP_FAN_SET, &q, "noting a group's size");
}

/* The row lock of tl, as an append takes it (nothing if held already). */
static int lock_timeline(struct im__pg *s, struct im__tl *tl)
{
	struct im__pgq q = {0};
	PGresult *r;

	if(im_pg__locked(s, tl)) return MOSQ_ERR_SUCCESS;
	im_pgq__i64(&q, tl->id);
	r = im_pg__run(s, PG_TL_LOCK, &q, "locking a timeline");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	if(PQntuples(r) == 1){
		tl->head = (uint64_t)im_pg__int(r, 0, 0);
		tl->first = (uint64_t)im_pg__int(r, 0, 1);
		im_pg__touch(s, tl);
	}
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

/* The first column of a one-row statement (0 if no row). */
static int one_int(struct im__pg *s, enum im_pg_stmt id, const struct im__pgq *q, const char *what, int64_t *out)
{
	PGresult *r = im_pg__run(s, id, q, what);

	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	*out = PQntuples(r) == 1 ? im_pg__int(r, 0, 0) : 0;
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

/* Edits and recalls in tl after `after`, up to `upto`. */
static int count_edits(struct im__pg *s, struct im__tl *tl, uint64_t after, int64_t upto, int64_t *n)
{
	struct im__pgq q = {0};

	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)after);
	im_pgq__i64(&q, upto);
	return one_int(s, PG_COUNT_EDITS, &q, "counting edits", n);
}

/* A member's mark in a group counts the edits and recalls at or below it:
 * from its last mark on, or for a first mark, the group's count less
 * those after it (a first mark is mostly near the head). */
static int edits_at(struct im__pg *s, struct im__tl *tl, uint64_t before, int64_t before_edits, uint64_t seq,
		int64_t *out)
{
	struct im__pgq q = {0};
	int64_t n = 0, all = 0;

	*out = 0;
	if(tl->name[0] != 'g') return MOSQ_ERR_SUCCESS;
	if(before){
		if(count_edits(s, tl, before, (int64_t)seq, &n) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		*out = before_edits + n;
		return MOSQ_ERR_SUCCESS;
	}
	im_pgq__text(&q, tl->name + 2, -1);
	if(one_int(s, PG_GROUP_EDITS, &q, "reading a group's edits", &all) != MOSQ_ERR_SUCCESS
			|| count_edits(s, tl, seq, INT64_MAX, &n) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	*out = all > n ? all - n : 0;
	return MOSQ_ERR_SUCCESS;
}

int im_pg__read_mark(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
		uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	bool own = tl->name[0] == 'u' && !strcmp(tl->name + 2, user);
	int64_t before_edits, edits;
	PGresult *r;
	int i, rc = MOSQ_ERR_SUCCESS;

	*before = *after = 0;
	s->wrote = true;
	/* It counts the messages it read and lowers the counts the batch's
	 * notes raised: both must be in the tables first. */
	if(im_pg__flush(s) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	/* In its own inbox the user's conversation rows change: take the lock
	 * every other writer of them holds (the inbox's), first. */
	if(own && lock_timeline(s, tl) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pgq__i64(&q, tl->id);
	im_pgq__text(&q, user, -1);
	r = im_pg__run(s, PG_READ_LOCK, &q, "reading a read mark");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	*before = (uint64_t)im_pg__int(r, 0, 0);
	before_edits = im_pg__int(r, 0, 1);
	PQclear(r);
	*after = *before;
	if(seq <= *before) return MOSQ_ERR_SUCCESS;
	if(edits_at(s, tl, *before, before_edits, seq, &edits) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__i64(&q, edits);
	if(im_pg__exec(s, PG_READ_SET, &q, "moving a read mark") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	*after = seq;
	if(!own) return MOSQ_ERR_SUCCESS;
	memset(&q, 0, sizeof(q));
	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)*before);
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__text(&q, user, -1);
	r = im_pg__run(s, PG_READ_UNREAD, &q, "counting unread");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(i = 0; i < PQntuples(r) && fn; i++){
		if(fn(ctx, im_pg__text(r, i, 0)) == IM_ROW_ERROR){
			rc = MOSQ_ERR_NOMEM;
			break;
		}
	}
	PQclear(r);
	return rc;
}

int im_pg__reads_of(struct im__store *st, struct im__tl *tl, const char *reader, im_store__mark_fn fn, void *ctx,
		uint64_t *head)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	bool group = tl->name[0] == 'g';
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	int i;

	*head = 0;
	if(im_pg__flush(s) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if(!group && strcmp(tl->name + 2, reader)){
		/* Another user's inbox: its owner's mark as far as it passed
		 * reader's messages, and where reader's last one is, kept on the
		 * owner's side of their conversation. */
		im_pgq__text(&q, tl->name + 2, -1);
		im_pgq__text(&q, reader, -1);
		if((r = im_pg__run(s, PG_CONV_PEER_READ, &q, "reading a read mark")) == NULL) return MOSQ_ERR_UNKNOWN;
		if(PQntuples(r) == 1){
			*head = (uint64_t)im_pg__int(r, 0, 1);
			if(im_pg__int(r, 0, 0) > 0) row = fn(ctx, tl->name + 2, (uint64_t)im_pg__int(r, 0, 0));
		}
		PQclear(r);
		return row == IM_ROW_ERROR ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
	}
	*head = tl->head;
	im_pgq__i64(&q, tl->id);
	im_pgq__text(&q, group ? tl->name + 2 : reader, -1);
	r = im_pg__run(s, group ? PG_READS_MEMBERS : PG_READS_ONE, &q, "reading read marks");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(i = 0; i < PQntuples(r) && row == IM_ROW_NEXT; i++){
		row = fn(ctx, im_pg__text(r, i, 0), (uint64_t)im_pg__int(r, i, 1));
	}
	PQclear(r);
	return row == IM_ROW_ERROR ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
}

int im_pg__has_conv(struct im__store *st, const char *owner, const char *peer, bool *yes)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	PGresult *r;

	*yes = false;
	if(im_pg__flush(s) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pgq__text(&q, owner, -1);
	im_pgq__text(&q, peer, -1);
	r = im_pg__run(s, PG_CONV_HAS, &q, "looking a conversation up");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	*yes = PQntuples(r) > 0;
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__conversations(struct im__store *st, const char *owner, uint32_t limit, int64_t before_ts,
		const char *before_tl, int64_t now_ms, im_store__conv_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	struct im__conv c;
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	int i;

	if(im_pg__flush(s) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pgq__text(&q, owner, -1);
	im_pgq__i64(&q, before_tl ? before_ts : INT64_MAX);
	im_pgq__text(&q, before_tl, -1);
	im_pgq__i64(&q, limit);
	im_pgq__i64(&q, now_ms);
	r = im_pg__run(s, PG_CONV_LIST, &q, "listing conversations");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(i = 0; i < PQntuples(r) && row == IM_ROW_NEXT; i++){
		memset(&c, 0, sizeof(c));
		c.kind = im_pg__text(r, i, 0)[0];
		c.name = im_pg__text(r, i, 1);
		c.last_seq = (uint64_t)im_pg__int(r, i, 2);
		c.last_ts = im_pg__int(r, i, 3);
		c.last_sender = im_pg__text(r, i, 4);
		c.last_flags = (uint32_t)im_pg__int(r, i, 5);
		c.preview = im_pg__text(r, i, 6);
		c.unread = (uint64_t)im_pg__int(r, i, 7);
		c.peer_read = (uint64_t)im_pg__int(r, i, 8);
		row = fn(ctx, &c);
	}
	PQclear(r);
	return row == IM_ROW_ERROR ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
}
