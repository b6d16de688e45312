/*
 * The PostgreSQL backend's connections (internal.h): the prepared
 * statements, parameters and results (all binary), running a statement and
 * telling a lost connection from a failed statement, BEGIN/COMMIT, and
 * connecting with the defaults the store wants. Worker thread only.
 */
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/pg/internal.h"

/* ---- statements ----
 * Types: 8 int8, t text, b bytea, I int8[], T text[], B bytea[] (all sent
 * binary). */

static const struct { const char *types; const char *sql; } stmts[PG_NSTMT] = {
	[PG_TL_GET] = {"t", "SELECT id, head, first_seq FROM timelines WHERE name = $1"},
	/* A message with a cmid claims (sender, cmid) at once, not at commit:
	 * its original row is inserted now (at the seq the buffer gave it),
	 * unless this sender stored that cmid already. Another node storing
	 * the same (sender, cmid) meanwhile makes this insert wait for its
	 * transaction, then skip (no row back: the caller answers
	 * "duplicate"), as the unique index decides who was first. */
	[PG_CLAIM] = {"888tttt88b8888",
		"INSERT INTO messages(tl, seq, ts_ms, sender, cmid, peer, ctype, flags, expires_ms, copy, body, key_id, raw_len,"
		" ref_seq, peer_seq) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, $14"
		" WHERE NOT EXISTS (SELECT 1 FROM messages WHERE sender = $4 AND cmid = $5)"
		" ON CONFLICT (sender, cmid, copy) WHERE cmid IS NOT NULL DO NOTHING RETURNING seq"},
	/* The write-behind buffer (wb.c), one statement per table for the
	 * whole batch: its rows, the heads it moved (each from the value read
	 * with the row lock: any other count of rows changed is a bug, and
	 * the batch fails), and its direct conversations, one row each. A
	 * cmid repeated against a row stored meanwhile by another node (its
	 * claim cannot see: a copy, or another timeline) fails the insert,
	 * so the batch, whose retry answers "duplicate". */
	[PG_WB_ROWS] = {"IIITTTTIIIBIIII",
		"INSERT INTO messages(tl, seq, ts_ms, sender, cmid, peer, ctype, flags, expires_ms, copy, body, key_id, raw_len,"
		" ref_seq, peer_seq) SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"},
	[PG_WB_HEADS] = {"III", "UPDATE timelines t SET head = u.head FROM unnest($1, $2, $3) AS u(id, head, old)"
		" WHERE t.id = u.id AND t.head = u.old"},
	/* unread moves by one atomic addition (several nodes may note the same
	 * conversation); the last message only ever moves to a higher seq; the
	 * recipient's side also keeps where the peer's last message is. */
	[PG_WB_CONVS] = {"TTIITITII", "INSERT INTO convs(owner, peer, last_seq, last_ts, last_sender, last_flags, preview, unread,"
		" sent_seq) SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9)"
		" ON CONFLICT (owner, peer) DO UPDATE SET"
		" last_seq = greatest(convs.last_seq, excluded.last_seq),"
		" last_ts = CASE WHEN excluded.last_seq >= convs.last_seq THEN excluded.last_ts ELSE convs.last_ts END,"
		" last_sender = CASE WHEN excluded.last_seq >= convs.last_seq THEN excluded.last_sender ELSE convs.last_sender END,"
		" last_flags = CASE WHEN excluded.last_seq >= convs.last_seq THEN excluded.last_flags ELSE convs.last_flags END,"
		" preview = CASE WHEN excluded.last_seq >= convs.last_seq THEN excluded.preview ELSE convs.preview END,"
		" unread = convs.unread + excluded.unread,"
		" sent_seq = greatest(convs.sent_seq, excluded.sent_seq)"},
	[PG_DEDUP] = {"tt", "SELECT m.copy, m.seq, m.ts_ms, t.name FROM messages m JOIN timelines t ON t.id = m.tl"
		" WHERE m.sender = $1 AND m.cmid = $2"},
	/* A batch's (sender, cmid) pairs at once (msg.c, dedup_batch). */
	[PG_DEDUP_MANY] = {"TT", "SELECT m.sender, m.cmid, m.copy, m.seq, m.ts_ms, t.name FROM unnest($1, $2) AS k(sender, cmid)"
		" JOIN messages m ON m.sender = k.sender AND m.cmid = k.cmid JOIN timelines t ON t.id = m.tl"},
	/* The rows and the timeline's head and first, from one snapshot. */
	[PG_RANGE] = {"888", "SELECT t.head, t.first_seq, m.seq, m.ts_ms, m.sender, m.cmid, m.peer, m.ctype, m.flags,"
		" m.expires_ms, m.body, m.key_id, m.raw_len, m.ref_seq, m.peer_seq FROM timelines t LEFT JOIN LATERAL"
		" (SELECT * FROM messages WHERE tl = t.id AND seq > $2 ORDER BY seq LIMIT $3) m ON true"
		" WHERE t.id = $1 ORDER BY m.seq"},
	[PG_CURSOR_GET] = {"8tt", "SELECT seq FROM cursors WHERE tl = $1 AND usr = $2 AND client_id = $3"},
	[PG_CURSOR_SET] = {"8tt88", "INSERT INTO cursors(tl, usr, client_id, seq, updated_ms) VALUES($1, $2, $3, $4, $5)"
		" ON CONFLICT (tl, usr, client_id) DO UPDATE SET seq = greatest(cursors.seq, excluded.seq),"
		" updated_ms = excluded.updated_ms RETURNING seq"},
	[PG_NODE_GET] = {"t", "SELECT applied_lsn, commit_no, token FROM nodes WHERE node_id = $1 FOR SHARE"},
	[PG_NODE_COMMIT] = {"t8888", "UPDATE nodes SET applied_lsn = CASE WHEN $2 = 0 THEN applied_lsn ELSE $2 END,"
		" commit_no = $3, updated_ms = $4 WHERE node_id = $1 AND token = $5"},
	[PG_META_PUT] = {"tb", "INSERT INTO meta(key, value) VALUES($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"},
	[PG_GRP_LOAD] = {"t", "SELECT g.owner, m.usr FROM groups g LEFT JOIN members m ON m.grp = g.name WHERE g.name = $1"},
	[PG_GRP_INSERT] = {"tt8", "INSERT INTO groups(name, owner, created_ms) VALUES($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING 1"},
	[PG_MEM_INSERT] = {"tt8", "INSERT INTO members(grp, usr, joined_ms) VALUES($1, $2, $3) ON CONFLICT (grp, usr) DO NOTHING"},
	[PG_MEM_DELETE] = {"tt", "DELETE FROM members WHERE grp = $1 AND usr = $2"},
	[PG_GRP_OF_USER] = {"t", "SELECT grp FROM members WHERE usr = $1 ORDER BY grp"},
	[PG_GRP_ALL] = {"", "SELECT g.name, g.owner, m.usr FROM groups g JOIN members m ON m.grp = g.name ORDER BY g.name"},
	[PG_WROTE_INSERT] = {"tt8", "INSERT INTO wrote(writer, reader, since_ms) VALUES($1, $2, $3)"
		" ON CONFLICT (writer, reader) DO NOTHING RETURNING 1"},
	[PG_WROTE_ALL] = {"", "SELECT writer, reader FROM wrote"},
	[PG_TRIM_LIST] = {"8", "SELECT id, name, head, first_seq FROM timelines WHERE id > $1 ORDER BY id LIMIT 64"},
	[PG_TRIM_SCAN] = {"888", "SELECT seq, ts_ms FROM messages WHERE tl = $1 AND seq >= $2 ORDER BY seq LIMIT $3"},
	/* Whoever moves first_seq first deletes; another node trimming the same
	 * timeline waits for the row, then finds nothing left to move. */
	[PG_TRIM_FIRST] = {"88", "UPDATE timelines SET first_seq = $2 WHERE id = $1 AND first_seq < $2 AND $2 <= head + 1"
		" RETURNING first_seq"},
	[PG_TRIM_DELETE] = {"88", "DELETE FROM messages WHERE tl = $1 AND seq < $2"},
	/* The lock an append takes, without appending (a read mark in the
	 * user's own inbox: see conv.c). */
	[PG_TL_LOCK] = {"8", "SELECT head, first_seq FROM timelines WHERE id = $1 FOR NO KEY UPDATE"},
	/* A direct message's two timelines, locked in id order (two nodes
	 * appending alice->bob and bob->alice at once take them alike). */
	[PG_TL_LOCK_TWO] = {"88", "SELECT id, head, first_seq FROM timelines WHERE id IN ($1, $2) ORDER BY id FOR NO KEY UPDATE"},
	/* A batch's timelines ("\n"-separated names), locked in name order
	 * (the row locks are taken in the order the rows come out of the sort). */
	[PG_PRELOCK] = {"t", "SELECT id, head, first_seq, name FROM timelines"
		" WHERE name = ANY(string_to_array($1, E'\n') COLLATE \"C\") ORDER BY name FOR NO KEY UPDATE"},
	/* ---- conversations (conv.c) ---- */
	[PG_MSG_LOOKUP] = {"88", "SELECT sender, flags, peer_seq, copy FROM messages WHERE tl = $1 AND seq = $2"},
	[PG_MSG_AMEND] = {"88b888", "UPDATE messages SET body = $3, key_id = $4, raw_len = $5,"
		" flags = (flags & ~2) | $6::integer WHERE tl = $1 AND seq = $2"},
	/* A recall takes the bodies of the message's edits with it. */
	[PG_ERASE_EDITS] = {"88", "UPDATE messages SET body = '', key_id = 0, raw_len = 0, flags = (flags & ~2) | 32"
		" WHERE tl = $1 AND ref_seq = $2 AND (flags & 4) <> 0"},
	/* A group counts its edits and recalls (not messages to read); a group
	 * of a few notes the activity in its members' rows in the same round
	 * trip: whether it does (fan) and how many rows it wrote (conv.c). */
	[PG_GROUP_NOTE] = {"t88t8t8", "WITH g AS (INSERT INTO group_last(grp, last_seq, last_ts, last_sender, last_flags, preview, edits)"
		"   VALUES($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (grp) DO UPDATE SET"
		"   last_seq = greatest(group_last.last_seq, excluded.last_seq),"
		"   last_ts = CASE WHEN excluded.last_seq >= group_last.last_seq THEN excluded.last_ts ELSE group_last.last_ts END,"
		"   last_sender = CASE WHEN excluded.last_seq >= group_last.last_seq THEN excluded.last_sender ELSE group_last.last_sender END,"
		"   last_flags = CASE WHEN excluded.last_seq >= group_last.last_seq THEN excluded.last_flags ELSE group_last.last_flags END,"
		"   preview = CASE WHEN excluded.last_seq >= group_last.last_seq THEN excluded.preview ELSE group_last.preview END,"
		"   edits = group_last.edits + excluded.edits RETURNING fan),"
		" f AS (UPDATE members SET last_ts = $3 WHERE grp = $1 AND (SELECT fan FROM g) = 1 RETURNING 1)"
		" SELECT (SELECT fan FROM g), (SELECT count(*) FROM f)"},
	/* The read mark as it is, its row locked (made if absent): another
	 * node moving the same mark waits, so each message is counted read
	 * once. ON CONFLICT DO UPDATE reads the latest committed row, not the
	 * statement's snapshot. */
	[PG_READ_LOCK] = {"8t", "INSERT INTO reads(tl, usr, seq) VALUES($1, $2, 0)"
		" ON CONFLICT (tl, usr) DO UPDATE SET seq = reads.seq RETURNING seq, edits"},
	[PG_READ_SET] = {"8t88", "UPDATE reads SET seq = greatest(seq, $3), edits = $4 WHERE tl = $1 AND usr = $2"},
	/* The peers whose messages the user just read in its own inbox, their
	 * unread counts (not edits or recalls) lowered and how far the user
	 * read them moved in the same statement. */
	[PG_READ_UNREAD] = {"888t", "WITH r AS (SELECT sender, count(*) FILTER (WHERE (flags & 12) = 0) AS n, max(seq) AS top"
		"   FROM messages WHERE tl = $1 AND seq > $2 AND seq <= $3 AND copy = 0 AND (flags & 1) = 0 AND sender <> $4"
		"   GROUP BY sender),"
		" u AS (UPDATE convs c SET unread = greatest(c.unread - r.n, 0), read_seq = greatest(c.read_seq, r.top)"
		"   FROM r WHERE c.owner = $4 AND c.peer = r.sender)"
		" SELECT sender FROM r ORDER BY sender"},
	[PG_READS_MEMBERS] = {"8t", "SELECT r.usr, r.seq FROM reads r JOIN members m ON m.grp = $2 AND m.usr = r.usr"
		" WHERE r.tl = $1 ORDER BY r.usr"},
	[PG_READS_ONE] = {"8t", "SELECT usr, seq FROM reads WHERE tl = $1 AND usr = $2"},
	[PG_CONV_HAS] = {"tt", "SELECT 1 FROM convs WHERE owner = $1 AND peer = $2"},
	/* Direct conversations, groups that note each member's row, and larger
	 * groups, each read in its order up to the page's end (the first two
	 * an index range from ($2, $3) down; $2 is the largest ts there is on
	 * a first page), merged: the latest first, ties by timeline name
	 * descending ("u/x" after "g/x"). A preview only while sync returns its
	 * message at $5; unread in a group: the seqs after the mark less the
	 * edits and recalls there. */
	[PG_CONV_LIST] = {"t8t88", "SELECT kind, name, last_seq, last_ts, last_sender, last_flags, preview, unread, peer_read FROM ("
		" (SELECT 'u'::text AS kind, c.peer AS name, c.last_seq, c.last_ts, c.last_sender, c.last_flags,"
		"   CASE WHEN c.preview IS NOT NULL AND EXISTS(SELECT 1 FROM messages x"
		"     WHERE x.tl = (SELECT id FROM timelines WHERE name = 'u/' || $1) AND x.seq = c.last_seq"
		"     AND (x.expires_ms = 0 OR x.expires_ms > $5) AND (x.flags & 32) = 0) THEN c.preview END AS preview,"
		"   c.unread, coalesce((SELECT p.read_seq FROM convs p WHERE p.owner = c.peer AND p.peer = $1), 0) AS peer_read,"
		"   ('u/' || c.peer) COLLATE \"C\" AS tl"
		"   FROM convs c WHERE c.owner = $1 AND c.last_ts <= $2 AND (c.last_ts < $2 OR ('u/' || c.peer) COLLATE \"C\" < $3)"
		"   ORDER BY c.last_ts DESC, c.peer DESC LIMIT $4)"
		" UNION ALL"
		" (SELECT 'g', g.grp, g.last_seq, g.last_ts, g.last_sender, g.last_flags,"
		"   CASE WHEN g.preview IS NOT NULL AND EXISTS(SELECT 1 FROM messages x WHERE x.tl = t.id AND x.seq = g.last_seq"
		"     AND (x.expires_ms = 0 OR x.expires_ms > $5) AND (x.flags & 32) = 0) THEN g.preview END,"
		"   greatest(g.last_seq - coalesce(r.seq, 0) - (g.edits - coalesce(r.edits, 0)), 0), 0::bigint,"
		"   ('g/' || g.grp) COLLATE \"C\""
		"   FROM ((SELECT g.* FROM members m JOIN group_last g ON g.grp = m.grp WHERE m.usr = $1 AND m.last_ts >= 0"
		"       AND m.last_ts <= $2 AND (m.last_ts < $2 OR ('g/' || m.grp) COLLATE \"C\" < $3)"
		"       ORDER BY m.last_ts DESC, m.grp DESC LIMIT $4)"
		"     UNION ALL"
		"     (SELECT g.* FROM members m JOIN group_last g ON g.grp = m.grp WHERE m.usr = $1 AND m.last_ts = -1"
		"       AND g.last_ts <= $2 AND (g.last_ts < $2 OR ('g/' || g.grp) COLLATE \"C\" < $3)"
		"       ORDER BY g.last_ts DESC, g.grp DESC LIMIT $4)) g"
		"   LEFT JOIN timelines t ON t.name = 'g/' || g.grp LEFT JOIN reads r ON r.tl = t.id AND r.usr = $1)"
		") x ORDER BY last_ts DESC, tl DESC LIMIT $4"},
	/* A group's activity in its members' rows (conv.c). */
	[PG_GROUP_FAN_TS] = {"t8", "UPDATE members SET last_ts = $2 WHERE grp = $1"},
	[PG_GROUP_UNFAN] = {"t", "UPDATE members SET last_ts = -1 WHERE grp = $1 AND last_ts <> -1"},
	[PG_GROUP_FAN_SET] = {"t8", "UPDATE group_last SET fan = $2 WHERE grp = $1"},
	[PG_GROUP_SIZE] = {"t", "SELECT count(*) FROM members WHERE grp = $1"},
	[PG_COUNT_EDITS] = {"888", "SELECT count(*) FROM messages WHERE tl = $1 AND seq > $2 AND seq <= $3 AND (flags & 12) <> 0"},
	[PG_GROUP_EDITS] = {"t", "SELECT edits FROM group_last WHERE grp = $1"},
	[PG_CONV_PEER_READ] = {"tt", "SELECT read_seq, sent_seq FROM convs WHERE owner = $1 AND peer = $2"},
	/* Retention takes the previews of what it removes along (trim.c). */
	[PG_TRIM_PREVIEW_U] = {"t8", "UPDATE convs SET preview = NULL WHERE owner = $1 AND last_seq < $2 AND preview IS NOT NULL"},
	[PG_TRIM_PREVIEW_G] = {"t8", "UPDATE group_last SET preview = NULL WHERE grp = $1 AND last_seq < $2 AND preview IS NOT NULL"},
};

#define OID_INT8 20
#define OID_TEXT 25
#define OID_BYTEA 17
#define OID_INT8_ARRAY 1016
#define OID_TEXT_ARRAY 1009
#define OID_BYTEA_ARRAY 1001

static void stmt_name(char *out, size_t cap, int id)
{
	snprintf(out, cap, "im_%d", id);
}

/* ---- parameters and results ---- */

void im_pgq__i64(struct im__pgq *q, int64_t v)
{
	q->ints[q->n] = htobe64((uint64_t)v);
	q->v[q->n] = (const char *)&q->ints[q->n];
	q->len[q->n] = 8;
	q->fmt[q->n] = 1;
	q->n++;
}

void im_pgq__text(struct im__pgq *q, const char *s, int len)
{
	q->v[q->n] = s;
	q->len[q->n] = s ? (len < 0 ? (int)strlen(s) : len) : 0;
	q->fmt[q->n] = 1;
	q->n++;
}

void im_pgq__bytes(struct im__pgq *q, const void *p, size_t len)
{
	q->v[q->n] = p;
	q->len[q->n] = (int)len;
	q->fmt[q->n] = 1;
	q->n++;
}

/* Arrays in the binary format array_recv reads: ndim (1), whether any
 * element is NULL, the element type, the length and lower bound (1) of
 * the dimension, then each element as its length (-1: NULL) and bytes. */
#define ARR_HEAD 20

static void be32_at(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint8_t *arr_room(struct im__pgarr *a, size_t n)
{
	uint8_t *p;

	if(a->nomem || im_buf__reserve(&a->b, a->used + n) != MOSQ_ERR_SUCCESS){
		a->nomem = true;
		return NULL;
	}
	p = a->b.data + a->used;
	a->used += n;
	return p;
}

void im_pgarr__start(struct im__pgarr *a, unsigned elem)
{
	uint8_t *p;

	a->used = 0;
	a->n = 0;
	a->nulls = false;
	a->nomem = false;
	if((p = arr_room(a, ARR_HEAD)) == NULL) return;
	be32_at(p, 1);
	be32_at(p + 8, elem);
	be32_at(p + 16, 1);
}

void im_pgarr__i64(struct im__pgarr *a, int64_t v)
{
	uint8_t *p = arr_room(a, 12);
	uint64_t u = (uint64_t)v;
	int i;

	if(p == NULL) return;
	be32_at(p, 8);
	for(i = 0; i < 8; i++) p[4 + i] = (uint8_t)(u >> (56 - 8 * i));
	a->n++;
}

void im_pgarr__bytes(struct im__pgarr *a, const void *data, ptrdiff_t len)
{
	uint8_t *p = arr_room(a, 4 + (len > 0 ? (size_t)len : 0));

	if(p == NULL) return;
	be32_at(p, len < 0 ? 0xFFFFFFFFu : (uint32_t)len);
	if(len > 0) memcpy(p + 4, data, (size_t)len);
	if(len < 0) a->nulls = true;
	a->n++;
}

int im_pgarr__param(struct im__pgarr *a, struct im__pgq *q)
{
	if(a->nomem || a->used > INT32_MAX) return MOSQ_ERR_NOMEM;
	be32_at(a->b.data + 4, a->nulls);
	be32_at(a->b.data + 12, a->n);
	q->v[q->n] = (const char *)a->b.data;
	q->len[q->n] = (int)a->used;
	q->fmt[q->n] = 1;
	q->n++;
	return MOSQ_ERR_SUCCESS;
}

void im_pgarr__free(struct im__pgarr *a)
{
	im_buf__free(&a->b);
	memset(a, 0, sizeof(*a));
}

int64_t im_pg__int(const PGresult *r, int row, int col)
{
	const uint8_t *p = (const uint8_t *)PQgetvalue(r, row, col);
	uint64_t v = 0;
	int i, n = PQgetlength(r, row, col);

	if(PQgetisnull(r, row, col)) return 0;
	for(i = 0; i < n && i < 8; i++) v = (v << 8) | p[i];
	if(n == 2) return (int16_t)v;
	if(n == 4) return (int32_t)v;
	return (int64_t)v;
}

const char *im_pg__text(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

/* Logs why r (or the connection) failed; marks the connection for a
 * reconnect if it is gone or cannot write (a standby, a shutdown). */
static void pg_fail(struct im__pg *s, const PGresult *r, const char *what)
{
	const char *msg = r ? PQresultErrorMessage(r) : "";
	const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	int n;

	if(msg == NULL || msg[0] == '\0') msg = s->conn ? PQerrorMessage(s->conn) : "not connected";
	n = (int)strlen(msg);
	while(n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) n--;
	/* No SQLSTATE: libpq's own error, a failed read or write. */
	if(s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK || code == NULL
			|| !strncmp(code, "08", 2) || !strncmp(code, "57P", 3) || !strcmp(code, "25006")){
		s->broken = true;
	}
	im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %s: %.*s%s%s%s", what, n, msg,
			code ? " (SQLSTATE " : "", code ? code : "", code ? ")" : "");
}

PGresult *im_pg__run(struct im__pg *s, enum im_pg_stmt id, const struct im__pgq *q, const char *what)
{
	PGresult *r;
	ExecStatusType rs;
	char name[16];

	if(s->conn == NULL || s->broken){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %s: not connected (a reconnect follows at the next batch).", what);
		return NULL;
	}
	stmt_name(name, sizeof(name), id);
	r = PQexecPrepared(s->conn, name, q ? q->n : 0, q ? q->v : NULL, q ? q->len : NULL, q ? q->fmt : NULL, 1);
	rs = PQresultStatus(r);
	if(rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK) return r;
	pg_fail(s, r, what);
	PQclear(r);
	return NULL;
}

/* Pipeline mode: the statements go out together and their answers come
 * back together, one round trip. After a failed statement the server
 * skips the rest (PGRES_PIPELINE_ABORTED) up to the sync; the
 * transaction is then aborted, as after any failed statement. */
int im_pg__run_many(struct im__pg *s, const enum im_pg_stmt *ids, const struct im__pgq *const *qs, int n,
		long *rows, const char *what)
{
	PGresult *r;
	ExecStatusType rs;
	char name[16];
	int i, rc = MOSQ_ERR_SUCCESS;
	bool failed = false;

	if(s->conn == NULL || s->broken){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %s: not connected (a reconnect follows at the next batch).", what);
		return MOSQ_ERR_UNKNOWN;
	}
	if(!PQenterPipelineMode(s->conn)){
		pg_fail(s, NULL, what);
		return MOSQ_ERR_UNKNOWN;
	}
	for(i = 0; i < n; i++){
		stmt_name(name, sizeof(name), ids[i]);
		if(!PQsendQueryPrepared(s->conn, name, qs[i]->n, qs[i]->v, qs[i]->len, qs[i]->fmt, 1)) break;
	}
	if(i < n || !PQpipelineSync(s->conn)){
		/* Not all sent: the connection is in trouble; start it over. */
		pg_fail(s, NULL, what);
		s->broken = true;
		PQexitPipelineMode(s->conn);
		return MOSQ_ERR_UNKNOWN;
	}
	for(i = 0; i < n; i++){
		r = PQgetResult(s->conn);
		rs = PQresultStatus(r);
		if(r == NULL){
			/* The connection went away mid-answer. */
			pg_fail(s, NULL, what);
			s->broken = true;
			return MOSQ_ERR_UNKNOWN;
		}
		if(rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK){
			if(rows) rows[i] = atol(PQcmdTuples(r));
		}else if(rs != PGRES_PIPELINE_ABORTED || !failed){
			if(!failed) pg_fail(s, r, what);
			failed = true;
			rc = MOSQ_ERR_UNKNOWN;
		}
		PQclear(r);
		/* Each statement's results end with a NULL. */
		while((r = PQgetResult(s->conn)) != NULL && PQresultStatus(r) != PGRES_PIPELINE_SYNC) PQclear(r);
		if(r) {
			PQclear(r);
			s->broken = true;   /* a sync before all answers: out of step */
			return MOSQ_ERR_UNKNOWN;
		}
	}
	r = PQgetResult(s->conn);
	if(PQresultStatus(r) != PGRES_PIPELINE_SYNC){
		PQclear(r);
		pg_fail(s, NULL, what);
		s->broken = true;
		return MOSQ_ERR_UNKNOWN;
	}
	PQclear(r);
	if(!PQexitPipelineMode(s->conn)){
		pg_fail(s, NULL, what);
		s->broken = true;
		return MOSQ_ERR_UNKNOWN;
	}
	return rc;
}

int im_pg__exec(struct im__pg *s, enum im_pg_stmt id, const struct im__pgq *q, const char *what)
{
	PGresult *r = im_pg__run(s, id, q, what);

	PQclear(r);
	return r ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
}

/* A statement that is not prepared (open, migrations), text or binary
 * parameters as given; $n::type casts name their types. */
PGresult *im_pg__adhoc(struct im__pg *s, const char *sql, const struct im__pgq *q, const char *what)
{
	PGresult *r;
	ExecStatusType rs;

	if(q) r = PQexecParams(s->conn, sql, q->n, NULL, q->v, q->len, q->fmt, 1);
	else r = PQexec(s->conn, sql);
	rs = PQresultStatus(r);
	if(rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK || rs == PGRES_EMPTY_QUERY) return r;
	pg_fail(s, r, what);
	PQclear(r);
	return NULL;
}

int im_pg__adhoc_ok(struct im__pg *s, const char *sql, const struct im__pgq *q, const char *what)
{
	PGresult *r = im_pg__adhoc(s, sql, q, what);

	PQclear(r);
	return r ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
}

/* BEGIN, COMMIT or ROLLBACK. COMMIT of a failed transaction answers
 * "ROLLBACK" with success: only "COMMIT" counts. */
void (*im_pg__commit_hook)(PGconn *conn, bool sent);

/* COMMIT as PQexec sends it, with the tests' hook on either side of the
 * sending (to lose the connection before, or the answer after). */
static PGresult *exec_commit(struct im__pg *s)
{
	PGresult *r, *last = NULL;

	if(im_pg__commit_hook) im_pg__commit_hook(s->conn, false);
	if(!PQsendQuery(s->conn, "COMMIT")) return NULL;
	if(im_pg__commit_hook) im_pg__commit_hook(s->conn, true);
	while((r = PQgetResult(s->conn)) != NULL){
		PQclear(last);
		last = r;
	}
	return last;
}

int im_pg__txn(struct im__pg *s, const char *sql)
{
	PGresult *r;
	int rc = MOSQ_ERR_UNKNOWN;

	if(s->conn == NULL || s->broken){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %s: not connected.", sql);
		return MOSQ_ERR_UNKNOWN;
	}
	r = strcmp(sql, "COMMIT") == 0 ? exec_commit(s) : PQexec(s->conn, sql);
	if(PQresultStatus(r) != PGRES_COMMAND_OK){
		pg_fail(s, r, sql);
	}else if(strcmp(sql, "COMMIT") == 0 && strcmp(PQcmdStatus(r), "COMMIT") != 0){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: COMMIT: the transaction had failed and was rolled back.");
	}else{
		rc = MOSQ_ERR_SUCCESS;
	}
	PQclear(r);
	return rc;
}

/* ---- connecting ---- */

void im_store__pg_describe(const char *conninfo, char *out, size_t cap)
{
	static const char *const shown[] = {"host", "hostaddr", "port", "dbname", "user", "target_session_attrs", NULL};
	PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", NULL), *o;
	size_t n = 0, i;

	if(cap == 0) return;
	out[0] = '\0';
	if(opts == NULL){
		snprintf(out, cap, "unparsable");
		return;
	}
	for(o = opts; o->keyword; o++){
		if(o->val == NULL || o->val[0] == '\0') continue;
		for(i = 0; shown[i] && strcmp(shown[i], o->keyword); i++);
		if(shown[i] == NULL || n >= cap) continue;
		n += (size_t)snprintf(out + n, cap - n, "%s%s=%s", n ? " " : "", o->keyword, o->val);
	}
	PQconninfoFree(opts);
	if(n == 0) snprintf(out, cap, "libpq defaults");
}

/* FNV-1a: advisory lock keys from names. */
int64_t im_pg__key64(const char *a, const char *b)
{
	uint64_t h = 14695981039346656037ULL;

	for(; *a; a++) h = (h ^ (uint8_t)*a) * 1099511628211ULL;
	for(; b && *b; b++) h = (h ^ (uint8_t)*b) * 1099511628211ULL;
	return (int64_t)(h >> 1);
}

int im_pg__prepare_all(struct im__pg *s)
{
	Oid types[IM_PG_MAX_PARAMS];
	char name[16];
	PGresult *r;
	int i, j, n;

	for(i = 0; i < PG_NSTMT; i++){
		n = (int)strlen(stmts[i].types);
		for(j = 0; j < n; j++){
			switch(stmts[i].types[j]){
				case '8': types[j] = OID_INT8; break;
				case 'b': types[j] = OID_BYTEA; break;
				case 'I': types[j] = OID_INT8_ARRAY; break;
				case 'T': types[j] = OID_TEXT_ARRAY; break;
				case 'B': types[j] = OID_BYTEA_ARRAY; break;
				default: types[j] = OID_TEXT; break;
			}
		}
		stmt_name(name, sizeof(name), i);
		r = PQprepare(s->conn, name, stmts[i].sql, n, types);
		if(PQresultStatus(r) != PGRES_COMMAND_OK){
			pg_fail(s, r, stmts[i].sql);
			PQclear(r);
			return MOSQ_ERR_UNKNOWN;
		}
		PQclear(r);
	}
	return MOSQ_ERR_SUCCESS;
}

/* Server notices (e.g. "already exists, skipping" from a migration run
 * again) are for debugging only. */
static void notice(void *arg, const char *text)
{
	int n = (int)strlen(text);

	(void)arg;
	while(n > 0 && text[n - 1] == '\n') n--;
	im_log(MOSQ_LOG_DEBUG, "im: store: PostgreSQL: %.*s", n, text);
}

static void log_conn_error(PGconn *c, const char *what)
{
	const char *e = c ? PQerrorMessage(c) : "out of memory";
	int n = (int)strlen(e);

	while(n > 0 && (e[n - 1] == '\n' || e[n - 1] == ' ')) n--;
	im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: %s: %.*s", what, n, e);
}

/* A new connection: connect, refuse a standby, session settings. */
static PGconn *connect_one(struct im__pg *s)
{
	char app[96];
	/* Defaults first: what the conninfo (expanded from "dbname") says wins. */
	const char *keys[] = {"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
		"keepalives_count", "tcp_user_timeout", "application_name", "dbname", NULL};
	const char *vals[] = {"5", "1", "5", "2", "3", "10000", app, s->conninfo, NULL};
	const char *pv[1] = {s->sync_commit};
	PGconn *c;
	PGresult *r;
	bool ok;

	snprintf(app, sizeof(app), "mosquitto-im %s", s->node_id);
	c = PQconnectdbParams(keys, vals, 1);
	if(c == NULL || PQstatus(c) != CONNECTION_OK){
		log_conn_error(c, "cannot connect");
		PQfinish(c);
		return NULL;
	}
	PQsetNoticeProcessor(c, notice, NULL);
	r = PQexec(c, "SELECT pg_is_in_recovery()");
	ok = PQresultStatus(r) == PGRES_TUPLES_OK;
	if(!ok){
		log_conn_error(c, "checking the server's role");
	}else if(PQgetvalue(r, 0, 0)[0] == 't' && !s->reader){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL at %s:%s is a standby (read-only): list the primary's host too, with target_session_attrs=read-write.",
				PQhost(c), PQport(c));
		ok = false;
	}
	PQclear(r);
	if(ok && s->sync_commit[0]){
		r = PQexecParams(c, "SELECT set_config('synchronous_commit', $1, false)", 1, NULL, pv, NULL, NULL, 0);
		ok = PQresultStatus(r) == PGRES_TUPLES_OK;
		if(!ok) log_conn_error(c, "setting synchronous_commit");
		PQclear(r);
	}
	if(!ok){
		PQfinish(c);
		return NULL;
	}
	return c;
}

int im_pg__session_open(struct im__pg *s)
{
	char *read_at = s->conninfo;

	if(s->conn) PQfinish(s->conn);
	s->conn = connect_one(s);
	/* A reader whose server (a standby) is gone reads from the primary
	 * until its connection breaks; then it tries the standby again. */
	if(s->conn == NULL && s->reader && s->primary_conninfo){
		s->conninfo = s->primary_conninfo;
		s->conn = connect_one(s);
		s->conninfo = read_at;
		if(s->conn) im_log(MOSQ_LOG_NOTICE, "im: store: PostgreSQL: a reader cannot reach plugin_opt_pg_read_conninfo; it reads from the primary meanwhile.");
	}
	s->broken = s->conn == NULL;
	return s->conn ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
}

/* Timelines are made on a connection of their own, committed at once: made
 * inside batches, two brokers making the same two timelines in opposite
 * orders (alice and bob's first messages to each other) would deadlock on
 * each other's uncommitted rows. A timeline left empty by a batch that
 * rolled back is harmless (head 0, as if absent). */
static int aux_open(struct im__pg *s)
{
	static const char *const sql = "INSERT INTO timelines(name, created_ms) VALUES($1, $2) ON CONFLICT (name) DO NOTHING";
	const Oid types[2] = {OID_TEXT, OID_INT8};
	PGresult *r;
	bool ok;

	if((s->aux = connect_one(s)) == NULL) return MOSQ_ERR_UNKNOWN;
	r = PQprepare(s->aux, "im_create", sql, 2, types);
	ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	if(!ok){
		log_conn_error(s->aux, "preparing a statement");
		PQfinish(s->aux);
		s->aux = NULL;
	}
	PQclear(r);
	return ok ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
}

int im_pg__create_timeline(struct im__pg *s, const char *name, size_t len)
{
	struct im__pgq q = {0};
	PGresult *r;
	bool fresh, ok;

	im_pgq__text(&q, name, (int)len);
	im_pgq__i64(&q, im_now_ms());
	for(;;){
		fresh = s->aux == NULL;
		if(fresh && aux_open(s) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		r = PQexecPrepared(s->aux, "im_create", q.n, q.v, q.len, q.fmt, 1);
		ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		PQclear(r);
		if(ok) return MOSQ_ERR_SUCCESS;
		/* Whatever went wrong (the connection died while idle, the server
		 * became a standby), start again with a new connection: once at
		 * once (the insert is idempotent), else at the next call. */
		if(fresh) log_conn_error(s->aux, "creating a timeline");
		else im_log(MOSQ_LOG_NOTICE, "im: store: PostgreSQL: the connection that makes timelines was lost; connecting again.");
		PQfinish(s->aux);
		s->aux = NULL;
		if(fresh) return MOSQ_ERR_UNKNOWN;
	}
}

/* Remembers t as locked by the open transaction (its row lock is held),
 * with the head the database has, which the buffer's rows continue. */
void im_pg__touch(struct im__pg *s, struct im__tl *t)
{
	if(im_pg__tle(t)->lock_gen == s->gen) return;
	im_pg__tle(t)->lock_gen = s->gen;
	im_pg__tle(t)->db_head = t->head;
	im_cache__touch(&s->touched, t);
}
