/*
 * Conversations (SQLite backend): edits and recalls of stored messages,
 * read marks, and the conversation list.
 *
 * A read mark is derived from the cursors the ack already moves (the max
 * over a user's devices); it is kept in `reads` only so that "how far did
 * bob read" is one lookup. What others may learn of it is kept beside it:
 * how far bob read each peer's messages (`convs.read_seq` of bob's side),
 * so that a peer is told of its own messages only.
 *
 * The conversation list is kept as it happens (`convs` per direct
 * conversation and side, `group_last` per group, and for a group of a few
 * members its last activity in each member's row), so a page reads index
 * ranges in order, not the messages nor every membership.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

/* A group's rows of the list, the page's part of them (inner) read first,
 * then what each needs: its preview only while sync returns the message,
 * and unread: the seqs after the reader's mark less the edits and recalls
 * there. */
#define GROUP_PAGE(inner) \
	"SELECT g.grp, g.last_seq, g.last_ts, g.last_sender, g.last_flags," \
	" CASE WHEN g.preview IS NOT NULL AND EXISTS(SELECT 1 FROM messages x WHERE x.tl = t.id AND x.seq = g.last_seq" \
	"   AND (x.expires_ms = 0 OR x.expires_ms > ?5) AND (x.flags & 32) = 0) THEN g.preview END," \
	" max(g.last_seq - coalesce(r.seq, 0) - (g.edits - coalesce(r.edits, 0)), 0)" \
	" FROM (SELECT g.* FROM members m CROSS JOIN group_last g ON g.grp = m.grp WHERE m.user = ?1 AND " inner " LIMIT ?4) g" \
	" LEFT JOIN timelines t ON t.name = 'g/' || g.grp LEFT JOIN reads r ON r.tl = t.id AND r.user = ?1" \
	" ORDER BY g.last_ts DESC, g.grp DESC"

int im_sqlite__prepare_conv(struct im__sqlite *s)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		{&s->msg_lookup, "SELECT sender, flags, peer_seq, copy FROM messages WHERE tl = ?1 AND seq = ?2"},
		{&s->msg_amend, "UPDATE messages SET body = ?3, key_id = ?4, raw_len = ?5, flags = (flags & ~2) | ?6"
			" WHERE tl = ?1 AND seq = ?2"},
		/* A recall takes the bodies of the message's edits with it. */
		{&s->msg_erase_edits, "UPDATE messages SET body = x'', key_id = 0, raw_len = 0, flags = (flags & ~2) | 32"
			" WHERE tl = ?1 AND ref_seq = ?2 AND (flags & 4) <> 0"},
		/* The recipient's side (sender = peer) also keeps where the peer's
		 * last message is. */
		{&s->conv_note, "INSERT INTO convs(owner, peer, last_seq, last_ts, last_sender, last_flags, preview, unread, sent_seq)"
			" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?5 = ?2 THEN ?3 ELSE 0 END)"
			" ON CONFLICT(owner, peer) DO UPDATE SET last_seq = excluded.last_seq,"
			" last_ts = excluded.last_ts, last_sender = excluded.last_sender, last_flags = excluded.last_flags,"
			" preview = excluded.preview, unread = unread + excluded.unread,"
			" sent_seq = CASE WHEN excluded.last_sender = excluded.peer THEN excluded.last_seq ELSE sent_seq END"},
		{&s->group_note, "INSERT INTO group_last(grp, last_seq, last_ts, last_sender, last_flags, preview, edits)"
			" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"
			" ON CONFLICT(grp) DO UPDATE SET last_seq = excluded.last_seq, last_ts = excluded.last_ts,"
			" last_sender = excluded.last_sender, last_flags = excluded.last_flags, preview = excluded.preview,"
			" edits = edits + excluded.edits RETURNING fan"},
		{&s->group_fan_ts, "UPDATE members SET last_ts = ?2 WHERE grp = ?1"},
		{&s->group_unfan, "UPDATE members SET last_ts = -1 WHERE grp = ?1 AND last_ts <> -1"},
		{&s->group_fan_set, "UPDATE group_last SET fan = ?2 WHERE grp = ?1"},
		{&s->group_size, "SELECT count(*) FROM members WHERE grp = ?1"},
		{&s->read_get, "SELECT seq, edits FROM reads WHERE tl = ?1 AND user = ?2"},
		{&s->read_set, "INSERT INTO reads(tl, user, seq, edits) VALUES(?1, ?2, ?3, ?4)"
			" ON CONFLICT(tl, user) DO UPDATE SET seq = max(seq, excluded.seq), edits = excluded.edits"},
		{&s->count_edits, "SELECT count(*) FROM messages WHERE tl = ?1 AND seq > ?2 AND seq <= ?3 AND (flags & 12) <> 0"},
		{&s->group_edits, "SELECT edits FROM group_last WHERE grp = ?1"},
		/* The peers whose messages the user just read in its own inbox: how
		 * many to read (not edits or recalls), and the highest seq. */
		{&s->read_senders, "SELECT sender, sum((flags & 12) = 0), max(seq) FROM messages WHERE tl = ?1 AND seq > ?2"
			" AND seq <= ?3 AND copy = 0 AND (flags & 1) = 0 AND sender <> ?4 GROUP BY sender"},
		{&s->conv_unread, "UPDATE convs SET unread = max(unread - ?3, 0), read_seq = max(read_seq, ?4)"
			" WHERE owner = ?1 AND peer = ?2"},
		{&s->reads_members, "SELECT r.user, r.seq FROM reads r JOIN members m ON m.grp = ?2 AND m.user = r.user"
			" WHERE r.tl = ?1 ORDER BY r.user"},
		{&s->reads_one, "SELECT user, seq FROM reads WHERE tl = ?1 AND user = ?2"},
		{&s->conv_peer_read, "SELECT read_seq, sent_seq FROM convs WHERE owner = ?1 AND peer = ?2"},
		{&s->conv_has, "SELECT 1 FROM convs WHERE owner = ?1 AND peer = ?2"},
		/* Each page query reads its index range from (?2, ?3) down: ?2 is
		 * the largest ts there is on a first page. */
		{&s->conv_list, "SELECT c.peer, c.last_seq, c.last_ts, c.last_sender, c.last_flags,"
			" CASE WHEN c.preview IS NOT NULL AND EXISTS(SELECT 1 FROM messages x"
			"   WHERE x.tl = (SELECT id FROM timelines WHERE name = 'u/' || ?1) AND x.seq = c.last_seq"
			"   AND (x.expires_ms = 0 OR x.expires_ms > ?5) AND (x.flags & 32) = 0) THEN c.preview END,"
			" c.unread, coalesce((SELECT p.read_seq FROM convs p WHERE p.owner = c.peer AND p.peer = ?1), 0)"
			" FROM convs c WHERE c.owner = ?1 AND c.last_ts <= ?2 AND (c.last_ts < ?2 OR 'u/' || c.peer < ?3)"
			" ORDER BY c.last_ts DESC, c.peer DESC LIMIT ?4"},
		{&s->conv_groups, GROUP_PAGE("m.last_ts >= 0 AND m.last_ts <= ?2 AND (m.last_ts < ?2 OR 'g/' || m.grp < ?3)"
			" ORDER BY m.last_ts DESC, m.grp DESC")},
		{&s->conv_groups_big, GROUP_PAGE("m.last_ts = -1 AND g.last_ts <= ?2 AND (g.last_ts < ?2 OR 'g/' || g.grp < ?3)"
			" ORDER BY g.last_ts DESC, g.grp DESC")},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(im_sqlite__prepare(s, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

/* The first column of q's one row (0 if none), q reset. */
static int one_int(struct im__sqlite *s, sqlite3_stmt *q, const char *what, int64_t *out)
{
	int rc = sqlite3_step(q);

	*out = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
	sqlite3_reset(q);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? MOSQ_ERR_SUCCESS : im_sqlite__fail(s, what);
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

/* A group of at most IM_STORE_FAN_MAX members notes its activity in each
 * member's row. Past that its rows say -1 (listed apart; after a
 * membership change, the new members' too), and after a change that
 * leaves half of it, per member again. */
static int group_fan(struct im__sqlite *s, const char *grp, int64_t ts, bool fan, uint32_t flags)
{
	int64_t n = 0;

	sqlite3_bind_text(s->group_fan_ts, 1, grp, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s->group_fan_ts, 2, ts);
	sqlite3_bind_text(s->group_unfan, 1, grp, -1, SQLITE_STATIC);
	sqlite3_bind_text(s->group_fan_set, 1, grp, -1, SQLITE_STATIC);
	sqlite3_bind_int(s->group_fan_set, 2, !fan);
	if(fan){
		if(im_sqlite__step(s, s->group_fan_ts, "noting a group's members") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		if(sqlite3_changes(s->db) <= IM_STORE_FAN_MAX) return MOSQ_ERR_SUCCESS;
		if(im_sqlite__step(s, s->group_unfan, "noting a group's members") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}else{
		if((flags & IM_STORE_FLAG_SYSTEM) == 0) return MOSQ_ERR_SUCCESS;
		sqlite3_bind_text(s->group_size, 1, grp, -1, SQLITE_STATIC);
		if(one_int(s, s->group_size, "counting a group's members", &n) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		if(n > IM_STORE_FAN_MAX / 2) return im_sqlite__step(s, s->group_unfan, "noting a group's members");
		if(im_sqlite__step(s, s->group_fan_ts, "noting a group's members") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return im_sqlite__step(s, s->group_fan_set, "noting a group's size");
}

int im_sqlite__note_last(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int add)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = owner ? s->conv_note : s->group_note;
	bool fan;
	int i = 1, rc;

	if(owner) sqlite3_bind_text(q, i++, owner, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, i++, peer, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, i++, (sqlite3_int64)seq);
	sqlite3_bind_int64(q, i++, ts);
	sqlite3_bind_text(q, i++, sender, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, i++, flags);
	if(preview) sqlite3_bind_text(q, i++, preview, -1, SQLITE_STATIC);
	else sqlite3_bind_null(q, i++);
	sqlite3_bind_int(q, i++, add);
	if(owner) return im_sqlite__step(s, q, "noting a conversation");
	rc = sqlite3_step(q);
	fan = rc == SQLITE_ROW && sqlite3_column_int(q, 0);
	sqlite3_reset(q);
	if(rc != SQLITE_ROW) return im_sqlite__fail(s, "noting a group");
	return group_fan(s, peer, ts, fan, flags);
}

/* Edits and recalls in tl after `after`, up to `upto`. */
static int count_edits(struct im__sqlite *s, struct im__tl *tl, uint64_t after, int64_t upto, int64_t *n)
{
	sqlite3_bind_int64(s->count_edits, 1, tl->id);
	sqlite3_bind_int64(s->count_edits, 2, (sqlite3_int64)after);
	sqlite3_bind_int64(s->count_edits, 3, upto);
	return one_int(s, s->count_edits, "counting edits", n);
}

/* A member's mark in a group counts the edits and recalls at or below it:
 * from its last mark on, or for a first mark, the group's count less
 * those after it (a first mark is mostly near the head). */
static int edits_at(struct im__sqlite *s, struct im__tl *tl, uint64_t before, int64_t before_edits, uint64_t seq,
		int64_t *out)
{
	int64_t n = 0, all = 0;

	*out = 0;
	if(tl->name[0] != 'g') return MOSQ_ERR_SUCCESS;
	if(before){
		if(count_edits(s, tl, before, (int64_t)seq, &n) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		*out = before_edits + n;
		return MOSQ_ERR_SUCCESS;
	}
	sqlite3_bind_text(s->group_edits, 1, tl->name + 2, -1, SQLITE_STATIC);
	if(one_int(s, s->group_edits, "reading a group's edits", &all) != MOSQ_ERR_SUCCESS
			|| count_edits(s, tl, seq, INT64_MAX, &n) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	*out = all > n ? all - n : 0;
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__read_mark(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
		uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->read_get;
	struct { char sender[IM_NAME_MAX + 1]; int64_t n, top; } *peers = NULL;
	size_t n_peers = 0, cap = 0, i;
	int64_t before_edits = 0, edits;
	int rc;

	*before = *after = 0;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_text(q, 2, user, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if(rc == SQLITE_ROW){
		*before = (uint64_t)sqlite3_column_int64(q, 0);
		before_edits = sqlite3_column_int64(q, 1);
	}
	sqlite3_reset(q);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "reading a read mark");
	*after = *before;
	if(seq <= *before) return MOSQ_ERR_SUCCESS;
	if(edits_at(s, tl, *before, before_edits, seq, &edits) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	sqlite3_bind_int64(s->read_set, 1, tl->id);
	sqlite3_bind_text(s->read_set, 2, user, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s->read_set, 3, (sqlite3_int64)seq);
	sqlite3_bind_int64(s->read_set, 4, edits);
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
		peers[n_peers].top = sqlite3_column_int64(q, 2);
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
		sqlite3_bind_int64(s->conv_unread, 4, peers[i].top);
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

/* Another user's inbox: its owner's mark as far as it passed reader's
 * messages, and where reader's last one is, kept on the owner's side of
 * their conversation. */
static int peer_mark(struct im__sqlite *s, const char *owner, const char *reader, im_store__mark_fn fn, void *ctx,
		uint64_t *head)
{
	sqlite3_stmt *q = s->conv_peer_read;
	enum im_row r = IM_ROW_NEXT;
	int rc;

	sqlite3_bind_text(q, 1, owner, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, reader, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if(rc == SQLITE_ROW){
		*head = (uint64_t)sqlite3_column_int64(q, 1);
		if(sqlite3_column_int64(q, 0) > 0) r = fn(ctx, owner, (uint64_t)sqlite3_column_int64(q, 0));
	}
	sqlite3_reset(q);
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "reading a read mark");
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__reads_of(struct im__store *st, struct im__tl *tl, const char *reader, im_store__mark_fn fn, void *ctx,
		uint64_t *head)
{
	struct im__sqlite *s = im_sqlite(st);
	bool group = tl->name[0] == 'g';
	sqlite3_stmt *q = group ? s->reads_members : s->reads_one;
	enum im_row r = IM_ROW_NEXT;
	int rc = SQLITE_DONE;

	*head = 0;
	if(!group && strcmp(tl->name + 2, reader)) return peer_mark(s, tl->name + 2, reader, fn, ctx, head);
	*head = tl->head;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_text(q, 2, group ? tl->name + 2 : reader, -1, SQLITE_STATIC);
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
static int step_conv(sqlite3_stmt *q, char kind, struct im__conv *c)
{
	int rc = sqlite3_step(q);

	if(rc != SQLITE_ROW) return rc;
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
	return rc;
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
		const char *before_tl, int64_t now_ms, im_store__conv_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	/* Direct conversations, groups that note each member (both read in
	 * index order, stopping at the page's end), and larger groups (ordered
	 * by the query): merged. */
	sqlite3_stmt *q[3] = {s->conv_list, s->conv_groups, s->conv_groups_big};
	static const char kind[3] = {'u', 'g', 'g'};
	struct im__conv c[3];
	int rc[3], i, best, bad = 0;
	uint32_t n = 0;
	enum im_row r = IM_ROW_NEXT;

	for(i = 0; i < 3; i++){
		sqlite3_bind_text(q[i], 1, owner, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q[i], 2, before_tl ? before_ts : INT64_MAX);
		if(before_tl) sqlite3_bind_text(q[i], 3, before_tl, -1, SQLITE_STATIC);
		else sqlite3_bind_null(q[i], 3);
		sqlite3_bind_int64(q[i], 4, limit);
		sqlite3_bind_int64(q[i], 5, now_ms);
		rc[i] = step_conv(q[i], kind[i], &c[i]);
	}
	while(r == IM_ROW_NEXT && n < limit){
		for(best = -1, i = 0; i < 3; i++){
			if(rc[i] == SQLITE_ROW && (best < 0 || newer(&c[i], &c[best]))) best = i;
		}
		if(best < 0) break;
		r = fn(ctx, &c[best]);
		rc[best] = step_conv(q[best], kind[best], &c[best]);
		n++;
	}
	for(i = 0; i < 3; i++){
		sqlite3_reset(q[i]);
		if(rc[i] != SQLITE_ROW && rc[i] != SQLITE_DONE) bad = 1;
	}
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if(bad) return im_sqlite__fail(s, "listing conversations");
	return MOSQ_ERR_SUCCESS;
}
