/*
 * Conversations (PostgreSQL backend): edits and recalls of stored
 * messages, read marks, and the conversation list. The same meaning as
 * store/sqlite/conv.c; what differs is that several brokers (nodes) do
 * this at once, so every counter moves by one atomic statement:
 *
 * - unread: +1 per message (note_last's upsert adds to the row it finds),
 *   -n per read (one UPDATE lowering it by the messages now read), never
 *   below 0. Both happen while the batch holds the owner's inbox row lock
 *   (an append takes it; read_mark takes it too), so the writers of one
 *   owner's conversation rows take turns and never deadlock on them.
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
	PGresult *r;

	memset(out, 0, sizeof(*out));
	*found = false;
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
	size_t n = body ? len : 0;
	uint16_t key_id = 0;

	/* An edit is sealed for its (timeline, seq) like any body. */
	if(body && st->crypt && im_crypt__seal(st->crypt, tl->name, seq, body, len, &b, &n, &key_id) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot encrypt an edit for %s.", tl->name);
		return MOSQ_ERR_UNKNOWN;
	}
	s->wrote = true;
	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__bytes(&q, b, n);
	im_pgq__i64(&q, key_id);
	im_pgq__i64(&q, body ? raw_len : 0);
	im_pgq__i64(&q, flags);
	if(im_pg__exec(s, PG_MSG_AMEND, &q, "changing a message") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if(body) return MOSQ_ERR_SUCCESS;
	memset(&q, 0, sizeof(q));
	im_pgq__i64(&q, tl->id);
	im_pgq__i64(&q, (int64_t)seq);
	return im_pg__exec(s, PG_ERASE_EDITS, &q, "erasing edits");
}

int im_pg__note_last(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int unread_add)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};

	s->wrote = true;
	if(owner) im_pgq__text(&q, owner, -1);
	im_pgq__text(&q, peer, -1);
	im_pgq__i64(&q, (int64_t)seq);
	im_pgq__i64(&q, ts);
	im_pgq__text(&q, sender, -1);
	im_pgq__i64(&q, flags);
	im_pgq__text(&q, preview, -1);
	if(owner) im_pgq__i64(&q, unread_add);
	return im_pg__exec(s, owner ? PG_CONV_NOTE : PG_GROUP_NOTE, &q, "noting a conversation");
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

int im_pg__read_mark(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
		uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	bool own = tl->name[0] == 'u' && !strcmp(tl->name + 2, user);
	PGresult *r;
	int i, rc = MOSQ_ERR_SUCCESS;

	*before = *after = 0;
	s->wrote = true;
	/* In its own inbox the user's conversation rows change: take the lock
	 * every other writer of them holds (the inbox's), first. */
	if(own && lock_timeline(s, tl) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pgq__i64(&q, tl->id);
	im_pgq__text(&q, user, -1);
	r = im_pg__run(s, PG_READ_LOCK, &q, "reading a read mark");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	*before = (uint64_t)im_pg__int(r, 0, 0);
	PQclear(r);
	*after = *before;
	if(seq <= *before) return MOSQ_ERR_SUCCESS;
	im_pgq__i64(&q, (int64_t)seq);
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

int im_pg__reads_of(struct im__store *st, struct im__tl *tl, const char *user, im_store__mark_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	int i;

	im_pgq__i64(&q, tl->id);
	if(user) im_pgq__text(&q, user, -1);
	r = im_pg__run(s, user ? PG_READS_ONE : PG_READS_ALL, &q, "reading read marks");
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
	im_pgq__text(&q, owner, -1);
	im_pgq__text(&q, peer, -1);
	r = im_pg__run(s, PG_CONV_HAS, &q, "looking a conversation up");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	*yes = PQntuples(r) > 0;
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__conversations(struct im__store *st, const char *owner, uint32_t limit, int64_t before_ts,
		const char *before_tl, im_store__conv_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	struct im__conv c;
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	int i;

	im_pgq__text(&q, owner, -1);
	im_pgq__i64(&q, before_ts);
	im_pgq__text(&q, before_tl, -1);
	im_pgq__i64(&q, limit);
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
