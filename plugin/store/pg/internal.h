/*
 * The PostgreSQL backend's private state (cluster mode), shared by the
 * files of store/pg/: open.c (open, migrations, identity, transactions:
 * the top, which fills the ops table), conn.c (connections, statements:
 * the bottom), msg.c (timelines, append, range, cursors), wb.c (the
 * batch's write-behind buffer), group.c (groups, contacts), conv.c (edits,
 * recalls, read marks, the conversation list) and trim.c (retention).
 * Worker thread only.
 *
 * Several brokers (nodes) write one database at once. What keeps that
 * correct is PostgreSQL's, not this file's: the row lock an append takes on
 * its timeline (gap-free seqs), the unique index on (sender, cmid, copy)
 * (one original per cmid, whoever stores it first), and the batch
 * transaction (nothing half-applied). The caches here are per node and
 * only save round trips; see struct im__tl in store/store.h for heads.
 */
#ifndef IM_STORE_PG_INTERNAL_H
#define IM_STORE_PG_INTERNAL_H

#include <libpq-fe.h>

#include "base/util.h"
#include "store/cache.h"
#include "store/store.h"
#include "store/pg/open.h"

/* Prepared statements, one table (conn.c) in this order. */
enum im_pg_stmt {
	PG_TL_GET,
	PG_CLAIM, PG_WB_ROWS, PG_WB_HEADS, PG_WB_CONVS, PG_DEDUP, PG_DEDUP_MANY, PG_RANGE,
	PG_CURSOR_GET, PG_CURSOR_SET,
	PG_NODE_GET, PG_NODE_COMMIT, PG_META_PUT,
	PG_GRP_LOAD, PG_GRP_INSERT, PG_MEM_INSERT, PG_MEM_DELETE, PG_GRP_OF_USER, PG_GRP_ALL,
	PG_WROTE_INSERT, PG_WROTE_ALL,
	PG_TRIM_LIST, PG_TRIM_SCAN, PG_TRIM_FIRST, PG_TRIM_DELETE,
	PG_TL_LOCK, PG_TL_LOCK_TWO, PG_PRELOCK,
	PG_MSG_LOOKUP, PG_MSG_AMEND, PG_ERASE_EDITS, PG_GROUP_NOTE,
	PG_READ_LOCK, PG_READ_SET, PG_READ_UNREAD, PG_READS_MEMBERS, PG_READS_ONE, PG_CONV_HAS, PG_CONV_LIST,
	PG_GROUP_FAN_TS, PG_GROUP_UNFAN, PG_GROUP_FAN_SET, PG_GROUP_SIZE, PG_COUNT_EDITS, PG_GROUP_EDITS, PG_CONV_PEER_READ,
	PG_TRIM_PREVIEW_U, PG_TRIM_PREVIEW_G,
	PG_NSTMT
};

#define IM_PG_MAX_PARAMS 16

/* Parameters of one statement, all sent in binary: integers as int8,
 * text and bytea as their bytes (no NUL needed). */
struct im__pgq {
	int n;
	const char *v[IM_PG_MAX_PARAMS];
	int len[IM_PG_MAX_PARAMS];
	int fmt[IM_PG_MAX_PARAMS];
	uint64_t ints[IM_PG_MAX_PARAMS];
};

/* An array parameter (int8[], text[], bytea[]) in PostgreSQL's binary
 * array format, built one element at a time; reused across batches. */
struct im__pgarr {
	struct im__buf b;
	size_t used;
	uint32_t n;
	bool nulls;
	bool nomem;
};

#include "store/pg/wb.h"

/* A cached timeline: this header, then the struct im__tl the seam hands
 * out (one allocation; im_pg__tle finds the header from the entry). */
struct im__pg_tle {
	uint64_t lock_gen;      /* the transaction (s->gen) that holds its row lock */
	uint64_t db_head;       /* while locked: head as the database has it (the buffer moves t->head) */
	uint64_t wb_gen;        /* the transaction whose buffer holds rows of it (wb.c) */
};

struct im__pg {
	PGconn *conn;
	PGconn *aux;                /* makes timelines, outside batches (open.c) */
	char *conninfo;
	char *node_id;
	char sync_commit[16];       /* "" = the server's setting */
	bool reader;                /* a reader's session: read-only transactions, no node claim */
	char *primary_conninfo;     /* a reader of plugin_opt_pg_read_conninfo: the fallback; else NULL */
	bool broken;                /* reconnect at the next begin */
	bool in_txn;                /* between begin and commit/rollback */
	bool wrote;                 /* the open transaction changed something */
	bool groups_dirty;          /* the open transaction changed a group */
	bool id_dirty;              /* store_id to write at the next commit */
	uint64_t gen;               /* transaction number, for lock_gen */
	uint64_t commit_no;         /* this node's last writing commit */
	uint64_t unsure_commit;     /* a commit_no whose COMMIT answer was lost, 0 none */
	uint64_t unsure_lsn;
	bool resolving;             /* pg_commit is asking about its own COMMIT */
	uint64_t token;             /* this broker's claim on node_id */
	struct im__map tls;         /* name -> struct im__tl * (inside a struct im__pg_tle allocation) */
	struct im__touched touched; /* heads taken by the open transaction */
	struct im__map groups;      /* name -> struct im__group *, loaded lazily */
	struct im__map wrote_seen;  /* "writer\nreader" pairs known written */
	struct im__pg_wb wb;        /* the open transaction's unsent writes */
};

static inline struct im__pg *im_pg(struct im__store *st) { return st->be; }

static inline struct im__pg_tle *im_pg__tle(struct im__tl *t)
{
	return (struct im__pg_tle *)(void *)((char *)t - sizeof(struct im__pg_tle));
}

/* The open transaction holds t's row lock: its head and first are exact. */
static inline bool im_pg__locked(const struct im__pg *s, struct im__tl *t)
{
	return s->in_txn && im_pg__tle(t)->lock_gen == s->gen;
}

/* Tests only (NULL otherwise): called before COMMIT is sent (sent false)
 * and after, before its answer is read (sent true). */
extern void (*im_pg__commit_hook)(PGconn *conn, bool sent);

/* conn.c: parameters, running statements, reading results. */
void im_pgq__i64(struct im__pgq *q, int64_t v);
/* Arrays: start (elem: OID of the element type), add elements (bytes
 * with len < 0: NULL), then hand it to q. MOSQ_ERR_NOMEM from param if an
 * element could not be added. */
void im_pgarr__start(struct im__pgarr *a, unsigned elem);
void im_pgarr__i64(struct im__pgarr *a, int64_t v);
void im_pgarr__bytes(struct im__pgarr *a, const void *p, ptrdiff_t len);
int im_pgarr__param(struct im__pgarr *a, struct im__pgq *q);
void im_pgarr__free(struct im__pgarr *a);
/* Runs n prepared statements in one round trip (libpq's pipeline mode):
 * each must succeed; rows[i] (if not NULL) receives how many rows
 * statement i changed. On failure the connection's transaction is aborted
 * and the failure logged as what. */
int im_pg__run_many(struct im__pg *s, const enum im_pg_stmt *ids, const struct im__pgq *const *qs, int n,
		long *rows, const char *what);
/* s == NULL sends SQL NULL; len < 0: strlen(s). */
void im_pgq__text(struct im__pgq *q, const char *s, int len);
void im_pgq__bytes(struct im__pgq *q, const void *p, size_t len);
/* Runs a prepared statement (binary results). NULL on failure, logged as
 * what, with the connection marked for a reconnect if it was lost. The
 * caller PQclear()s a non-NULL result. */
PGresult *im_pg__run(struct im__pg *s, enum im_pg_stmt id, const struct im__pgq *q, const char *what);
/* Runs a statement and only checks it worked. */
int im_pg__exec(struct im__pg *s, enum im_pg_stmt id, const struct im__pgq *q, const char *what);
/* A binary integer column (int2, int4 or int8); 0 if NULL. */
int64_t im_pg__int(const PGresult *r, int row, int col);
/* A text column (binary results are NUL-terminated too); NULL if NULL. */
const char *im_pg__text(const PGresult *r, int row, int col);
/* A statement that is not prepared (open, migrations): with q, binary
 * parameters ($n::type names their types) and results; without, PQexec
 * (several statements, text results). */
PGresult *im_pg__adhoc(struct im__pg *s, const char *sql, const struct im__pgq *q, const char *what);
int im_pg__adhoc_ok(struct im__pg *s, const char *sql, const struct im__pgq *q, const char *what);
/* BEGIN, COMMIT or ROLLBACK on the connection as it is. */
int im_pg__txn(struct im__pg *s, const char *sql);
/* An advisory lock key for a name (FNV-1a of a and b). */
int64_t im_pg__key64(const char *a, const char *b);
/* (Re)connects s->conn and prepares the statements (s->broken if not). */
int im_pg__session_open(struct im__pg *s);
int im_pg__prepare_all(struct im__pg *s);
/* open.c: connects again if the connection was lost. */
int im_pg__ensure(struct im__store *st);
/* BEGIN/COMMIT/ROLLBACK outside a batch (retention), reconnecting first if
 * needed. */
int im_pg__tx(struct im__store *st, const char *sql);
/* Remembers t as locked by the open transaction; its head as read with
 * the lock is the database's (db_head). */
void im_pg__touch(struct im__pg *s, struct im__tl *t);

/* Makes the timeline's row (if absent) and commits it at once. */
int im_pg__create_timeline(struct im__pg *s, const char *name, size_t len);

/* msg.c */
struct im__tl *im_pg__timeline(struct im__store *st, const char *name, size_t len, bool create, bool *err);
struct im__tl *im_pg__cache_find(struct im__pg *s, const char *name, size_t len);
void im_pg__cache_free(struct im__pg *s);
int im_pg__append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m,
		struct im__appended *out);
/* Appends one row (copy 0) at the next seq of t, for a group's system
 * message: *seq is the seq. */
int im_pg__append_one(struct im__store *st, struct im__tl *t, const struct im__msg *m, uint64_t *seq);
int im_pg__range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit, int64_t now_ms,
		im_store__row_fn fn, void *ctx, bool *more);
int im_pg__dedup(struct im__store *st, const char *sender, const char *cmid, struct im__appended *out);
int im_pg__dedup_batch(struct im__store *st, const char *const *senders, const char *const *cmids, size_t n);
int im_pg__prelock(struct im__store *st, const char *const *names, const bool *create, size_t n);
int im_pg__cursor_get(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id, uint64_t *seq);
int im_pg__cursor_set(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id,
		uint64_t seq, uint64_t *now);

/* group.c */
void im_pg__group_close(struct im__pg *s);
void im_pg__group_forget_all(struct im__pg *s);
void im_pg__group_forget(struct im__pg *s, const char *name, size_t len);
struct im__group *im_pg__group(struct im__store *st, const char *name, size_t len, bool *err);
int im_pg__group_change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, struct im__tl *tl, const struct im__msg *sys, uint64_t *seq);
int im_pg__groups_of(struct im__store *st, const char *user, im_store__name_fn fn, void *ctx);
int im_pg__group_counts(struct im__store *st, const char *const *users, size_t n, bool owned, uint32_t upto,
		uint32_t *counts);
int im_pg__each_group(struct im__store *st, im_store__group_fn fn, void *ctx);
int im_pg__wrote(struct im__store *st, const char *writer, const char *reader, bool *first);
int im_pg__each_wrote(struct im__store *st, im_store__pair_fn fn, void *ctx);

/* conv.c */
int im_pg__lookup(struct im__store *st, struct im__tl *tl, uint64_t seq, bool *found, struct im__msg_ref *out);
int im_pg__amend(struct im__store *st, struct im__tl *tl, uint64_t seq, const void *body, size_t len,
		uint32_t raw_len, uint32_t flags);
int im_pg__note_last(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int add);
int im_pg__read_mark(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
		uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx);
int im_pg__reads_of(struct im__store *st, struct im__tl *tl, const char *reader, im_store__mark_fn fn, void *ctx,
		uint64_t *head);
int im_pg__has_conv(struct im__store *st, const char *owner, const char *peer, bool *yes);
int im_pg__conversations(struct im__store *st, const char *owner, uint32_t limit, int64_t before_ts,
		const char *before_tl, int64_t now_ms, im_store__conv_fn fn, void *ctx);

/* trim.c */
int im_pg__trim_step(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
		int64_t *cursor_id, bool *done);

#endif
