/*
 * Conversations (SQLite backend): edits and recalls of stored messages,
 * read marks, and the conversation list.
 *
 * A read mark is derived from the cursors the ack already moves (the max
 * over a user's devices); it is kept in `reads` only so that "how far did
 * bob read" is one lookup. The conversation list is kept as it happens
 * (`convs` per direct conversation and side, `group_last` per group), so
 * listing 10,000 conversations reads one index range, not the messages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

int im_sqlite__prepare_conv(struct im__sqlite *s)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		{&s->msg_lookup, "SELECT sender, flags, peer_seq, copy FROM messages WHERE tl = ?1 AND seq = ?2"},
		{&s->msg_amend, "UPDATE messages SET body = ?3, key_id = ?4, raw_len = ?5, flags = (flags & ~2) | ?6"
			" WHERE tl = ?1 AND seq = ?2"},
		/* A recall takes the bodies of the message's edits with it. */
		{&s->msg_erase_edits, "UPDATE messages SET body = x'', key_id = 0, raw_len = 0, flags = (flags & ~2) | 32"
			" WHERE tl = ?1 AND ref_seq = ?2 AND (flags & 4) <> 0"},
		{&s->conv_note, "INSERT INTO convs(owner, peer, last_seq, last_ts, last_sender, last_flags, preview, unread)"
			" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(owner, peer) DO UPDATE SET last_seq = excluded.last_seq,"
			" last_ts = excluded.last_ts, last_sender = excluded.last_sender, last_flags = excluded.last_flags,"
			" preview = excluded.preview, unread = unread + excluded.unread"},
		{&s->group_note, "INSERT INTO group_last(grp, last_seq, last_ts, last_sender, last_flags, preview) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"
			" ON CONFLICT(grp) DO UPDATE SET last_seq = excluded.last_seq, last_ts = excluded.last_ts,"
			" last_sender = excluded.last_sender, last_flags = excluded.last_flags, preview = excluded.preview"},
		{&s->read_get, "SELECT seq FROM reads WHERE tl = ?1 AND user = ?2"},
		{&s->read_set, "INSERT INTO reads(tl, user, seq) VALUES(?1, ?2, ?3)"
			" ON CONFLICT(tl, user) DO UPDATE SET seq = max(seq, excluded.seq)"},
		/* The peers whose messages the user just read in its own inbox. */
		{&s->read_senders, "SELECT sender, count(*) FROM messages WHERE tl = ?1 AND seq > ?2 AND seq <= ?3"
			" AND copy = 0 AND (flags & 1) = 0 AND sender <> ?4 GROUP BY sender"},
		{&s->conv_unread, "UPDATE convs SET unread = max(unread - ?3, 0) WHERE owner = ?1 AND peer = ?2"},
		{&s->reads_all, "SELECT user, seq FROM reads WHERE tl = ?1 ORDER BY user"},
		{&s->reads_one, "SELECT user, seq FROM reads WHERE tl = ?1 AND user = ?2"},
		{&s->conv_has, "SELECT 1 FROM convs WHERE owner = ?1 AND peer = ?2"},
		{&s->conv_list, "SELECT peer, last_seq, last_ts, last_sender, last_flags, preview, unread,"
			" coalesce((SELECT r.seq FROM reads r JOIN timelines t ON t.id = r.tl WHERE t.name = 'u/' || peer AND r.user = peer), 0)"
			" FROM convs WHERE owner = ?1 AND (?3 IS NULL OR last_ts < ?2 OR (last_ts = ?2 AND 'u/' || peer < ?3))"
			" ORDER BY last_ts DESC, peer DESC LIMIT ?4"},
		{&s->conv_groups, "SELECT g.grp, g.last_seq, g.last_ts, g.last_sender, g.last_flags, g.preview,"
			" max(g.last_seq - coalesce((SELECT r.seq FROM reads r JOIN timelines t ON t.id = r.tl"
			"   WHERE t.name = 'g/' || g.grp AND r.user = ?1), 0), 0)"
			" FROM members m JOIN group_last g ON g.grp = m.grp WHERE m.user = ?1"
			" AND (?3 IS NULL OR g.last_ts < ?2 OR (g.last_ts = ?2 AND 'g/' || g.grp < ?3))"
			" ORDER BY g.last_ts DESC, g.grp DESC LIMIT ?4"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(im_sqlite__prepare(s, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__lookup(struct im__store *st, struct im__tl *tl, uint64_t seq, bool *found, struct im__msg_ref *out)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->msg_lookup;
	int rc;

	memset(out, 0, sizeof(*out));
	*found = false;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)seq);
	rc = sqlite3_step(q);
	if(rc == SQLITE_ROW){
		*found = true;
		snprintf(out->sender, sizeof(out->sender), "%s", im_sqlite__text(q, 0));
		out->flags = (uint32_t)sqlite3_column_int64(q, 1);
		out->peer_seq = (uint64_t)sqlite3_column_int64(q, 2);
		out->copy = sqlite3_column_int(q, 3);
	}
	sqlite3_reset(q);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "looking a message up");
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__amend(struct im__store *st, struct im__tl *tl, uint64_t seq, const void *body, size_t len,
		uint32_t raw_len, uint32_t flags)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->msg_amend;
	const void *b = body ? body : "";
	size_t n = body ? len : 0;
	uint16_t key_id = 0;
	int rc;

	/* An edit is sealed for its (timeline, seq) like any body; a recall
	 * stores nothing (secure_delete zeroes what the old body occupied). */
	if(body && st->crypt && im_crypt__seal(st->crypt, tl->name, seq, body, len, &b, &n, &key_id) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot encrypt an edit for %s.", tl->name);
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)seq);
	sqlite3_bind_blob(q, 3, b, (int)n, SQLITE_STATIC);
	sqlite3_bind_int(q, 4, key_id);
	sqlite3_bind_int64(q, 5, body ? raw_len : 0);
	sqlite3_bind_int64(q, 6, flags);
	rc = im_sqlite__step(s, q, "changing a message");
	sqlite3_clear_bindings(q);
	if(rc == MOSQ_ERR_SUCCESS && body == NULL){
		sqlite3_bind_int64(s->msg_erase_edits, 1, tl->id);
		sqlite3_bind_int64(s->msg_erase_edits, 2, (sqlite3_int64)seq);
		rc = im_sqlite__step(s, s->msg_erase_edits, "erasing edits");
		s->scrub = true;
	}
	return rc;
}

/* After a commit that erased bodies: copy the WAL into the database and
 * truncate it, so the old page images go too, not only the live rows. A
 * reader in the way (a backup) makes it wait for the next time. */
void im_sqlite__scrub(struct im__store *st)
{
	struct im__sqlite *s = im_sqlite(st);

	if(!s->scrub) return;
	if(sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL) == SQLITE_OK) s->scrub = false;
}

int im_sqlite__note_last(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int unread_add)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = owner ? s->conv_note : s->group_note;
	int i = 1;

	if(owner) sqlite3_bind_text(q, i++, owner, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, i++, peer, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, i++, (sqlite3_int64)seq);
	sqlite3_bind_int64(q, i++, ts);
	sqlite3_bind_text(q, i++, sender, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, i++, flags);
	if(preview) sqlite3_bind_text(q, i++, preview, -1, SQLITE_STATIC);
	else sqlite3_bind_null(q, i++);
	if(owner) sqlite3_bind_int(q, i++, unread_add);
	return im_sqlite__step(s, q, "noting a conversation");
}

int im_sqlite__read_mark(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
		uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->read_get;
	struct { char sender[IM_NAME_MAX + 1]; int64_t n; } *peers = NULL;
	size_t n_peers = 0, cap = 0, i;
	int rc;

	*before = *after = 0;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_text(q, 2, user, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if(rc == SQLITE_ROW) *before = (uint64_t)sqlite3_column_int64(q, 0);
	sqlite3_reset(q);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "reading a read mark");
	*after = *before;
	if(seq <= *before) return MOSQ_ERR_SUCCESS;
	sqlite3_bind_int64(s->read_set, 1, tl->id);
	sqlite3_bind_text(s->read_set, 2, user, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s->read_set, 3, (sqlite3_int64)seq);
	if(im_sqlite__step(s, s->read_set, "moving a read mark") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	*after = seq;
	/* In its own inbox: the peers whose messages are read now. Read first,
	 * written after: no statement stays open across the updates. */
	if(tl->name[0] != 'u' || strcmp(tl->name + 2, user)) return MOSQ_ERR_SUCCESS;
	q = s->read_senders;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)*before);
	sqlite3_bind_int64(q, 3, (sqlite3_int64)seq);
	sqlite3_bind_text(q, 4, user, -1, SQLITE_STATIC);
	while((rc = sqlite3_step(q)) == SQLITE_ROW){
		if(n_peers == cap){
			size_t ncap = cap ? cap * 2 : 16;
			void *np = im_realloc(peers, ncap * sizeof(*peers));
			if(np == NULL){
				rc = SQLITE_NOMEM;
				break;
			}
			peers = np;
			cap = ncap;
		}
		snprintf(peers[n_peers].sender, sizeof(peers[n_peers].sender), "%s", im_sqlite__text(q, 0));
		peers[n_peers].n = sqlite3_column_int64(q, 1);
		n_peers++;
	}
	sqlite3_reset(q);
	if(rc != SQLITE_DONE){
		free(peers);
		return rc == SQLITE_NOMEM ? MOSQ_ERR_NOMEM : im_sqlite__fail(s, "reading who was read");
	}
	for(i = 0; i < n_peers; i++){
		sqlite3_bind_text(s->conv_unread, 1, user, -1, SQLITE_STATIC);
		sqlite3_bind_text(s->conv_unread, 2, peers[i].sender, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s->conv_unread, 3, peers[i].n);
		if(im_sqlite__step(s, s->conv_unread, "counting unread") != MOSQ_ERR_SUCCESS){
			free(peers);
			return MOSQ_ERR_UNKNOWN;
		}
		if(fn && fn(ctx, peers[i].sender) == IM_ROW_ERROR){
			free(peers);
			return MOSQ_ERR_NOMEM;
		}
	}
	free(peers);
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__reads_of(struct im__store *st, struct im__tl *tl, const char *user, im_store__mark_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = user ? s->reads_one : s->reads_all;
	enum im_row r = IM_ROW_NEXT;
	int rc;

	sqlite3_bind_int64(q, 1, tl->id);
	if(user) sqlite3_bind_text(q, 2, user, -1, SQLITE_STATIC);
	while(r == IM_ROW_NEXT && (rc = sqlite3_step(q)) == SQLITE_ROW){
		r = fn(ctx, im_sqlite__text(q, 0), (uint64_t)sqlite3_column_int64(q, 1));
	}
	sqlite3_reset(q);
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if(r == IM_ROW_NEXT && rc != SQLITE_DONE) return im_sqlite__fail(s, "reading read marks");
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__has_conv(struct im__store *st, const char *owner, const char *peer, bool *yes)
{
	struct im__sqlite *s = im_sqlite(st);
	int rc;

	sqlite3_bind_text(s->conv_has, 1, owner, -1, SQLITE_STATIC);
	sqlite3_bind_text(s->conv_has, 2, peer, -1, SQLITE_STATIC);
	rc = sqlite3_step(s->conv_has);
	sqlite3_reset(s->conv_has);
	*yes = rc == SQLITE_ROW;
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "looking a conversation up");
	return MOSQ_ERR_SUCCESS;
}

/* One query's rows: direct conversations or groups, each already ordered. */
static void row_conv(sqlite3_stmt *q, char kind, struct im__conv *c)
{
	memset(c, 0, sizeof(*c));
	c->kind = kind;
	c->name = im_sqlite__text(q, 0);
	c->last_seq = (uint64_t)sqlite3_column_int64(q, 1);
	c->last_ts = sqlite3_column_int64(q, 2);
	c->last_sender = im_sqlite__text(q, 3);
	c->last_flags = (uint32_t)sqlite3_column_int64(q, 4);
	c->preview = im_sqlite__text(q, 5);
	c->unread = (uint64_t)sqlite3_column_int64(q, 6);
	if(kind == 'u') c->peer_read = (uint64_t)sqlite3_column_int64(q, 7);
}

static void bind_page(sqlite3_stmt *q, const char *owner, int64_t before_ts, const char *before_tl, uint32_t limit)
{
	sqlite3_bind_text(q, 1, owner, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, before_ts);
	if(before_tl) sqlite3_bind_text(q, 3, before_tl, -1, SQLITE_STATIC);
	else sqlite3_bind_null(q, 3);
	sqlite3_bind_int64(q, 4, limit);
}

/* "u/<name>" > "g/<name>" in the paging order ties: compares as the
 * timeline strings do. */
static int newer(const struct im__conv *a, const struct im__conv *b)
{
	char ta[IM_TL_MAX + 1], tb[IM_TL_MAX + 1];

	if(a->last_ts != b->last_ts) return a->last_ts > b->last_ts;
	snprintf(ta, sizeof(ta), "%c/%s", a->kind, a->name);
	snprintf(tb, sizeof(tb), "%c/%s", b->kind, b->name);
	return strcmp(ta, tb) > 0;
}

int im_sqlite__conversations(struct im__store *st, const char *owner, uint32_t limit, int64_t before_ts,
		const char *before_tl, im_store__conv_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *du = s->conv_list, *gr = s->conv_groups;
	struct im__conv cu, cg;
	int ru, rg;
	uint32_t n = 0;
	enum im_row r = IM_ROW_NEXT;

	/* Two ordered queries, merged: each reads its index range in order
	 * and stops at the page's end, whatever the number of conversations. */
	bind_page(du, owner, before_ts, before_tl, limit);
	bind_page(gr, owner, before_ts, before_tl, limit);
	ru = sqlite3_step(du);
	rg = sqlite3_step(gr);
	while(r == IM_ROW_NEXT && n < limit && (ru == SQLITE_ROW || rg == SQLITE_ROW)){
		if(ru == SQLITE_ROW) row_conv(du, 'u', &cu);
		if(rg == SQLITE_ROW) row_conv(gr, 'g', &cg);
		if(rg != SQLITE_ROW || (ru == SQLITE_ROW && newer(&cu, &cg))){
			r = fn(ctx, &cu);
			ru = sqlite3_step(du);
		}else{
			r = fn(ctx, &cg);
			rg = sqlite3_step(gr);
		}
		n++;
	}
	sqlite3_reset(du);
	sqlite3_reset(gr);
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if((ru != SQLITE_ROW && ru != SQLITE_DONE) || (rg != SQLITE_ROW && rg != SQLITE_DONE)){
		return im_sqlite__fail(s, "listing conversations");
	}
	return MOSQ_ERR_SUCCESS;
}
