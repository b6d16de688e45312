/*
 * The SQLite backend's private state, shared by the files of
 * store/sqlite/: open.c (open, migrate, transactions: the top, which fills
 * the ops table), db.c (errors, statements, the touched list: the bottom),
 * msg.c (timelines, append, range), cursor.c, group.c, conv.c (edits,
 * recalls, read marks, the conversation list), trim.c and ckpt.c (WAL
 * checkpoints on a thread of their own). Worker thread only.
 */
#ifndef IM_STORE_SQLITE_INTERNAL_H
#define IM_STORE_SQLITE_INTERNAL_H

#include <pthread.h>

#include <sqlite3.h>

#include "store/cache.h"
#include "store/store.h"
#include "store/sqlite/open.h"

struct im__tl_cache {
	struct im__tl **slots;
	size_t cap;         /* power of two */
	size_t count;
};

/* WAL checkpoints on a thread of their own (ckpt.c). */
struct im__ckpt {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	sqlite3 *db;        /* the thread's own connection */
	sqlite3 *writer;    /* the connection whose commits it follows (im_ckpt__watch) */
	unsigned long commits;  /* atomic: the writer's commits (its WAL hook counts them) */
	bool running, stop;
	int last_rc;
	long checkpoints;
};

int im_ckpt__start(struct im__ckpt *c, const char *path);
/* Counts writer's commits (a WAL hook, on writer's thread): the thread
 * passes while none came since a pass that copied every frame. */
void im_ckpt__watch(struct im__ckpt *c, sqlite3 *writer);
void im_ckpt__stop(struct im__ckpt *c);

struct im__sqlite {
	sqlite3 *db;
	struct im__ckpt ckpt;
	struct im__tl_cache tls;
	/* timelines touched by the open transaction, to mark stale on rollback */
	struct im__touched touched;
	bool groups_dirty;          /* the open transaction changed a group */
	bool id_dirty;              /* store_id to write at the next commit */
	bool reader;                /* a reader's connection: heads are read, never cached */
	sqlite3_stmt *begin, *commit, *rollback, *meta_set;
	sqlite3_stmt *tl_get, *tl_insert, *tl_set_first;
	sqlite3_stmt *msg_insert, *msg_dedup, *msg_range;
	sqlite3_stmt *cursor_get, *cursor_set;
	sqlite3_stmt *trim_list, *trim_scan, *trim_delete, *trim_preview_u, *trim_preview_g;
	struct im__map groups;      /* name -> struct im__group *, loaded lazily */
	sqlite3_stmt *grp_get, *grp_members, *grp_insert, *mem_insert, *mem_delete, *grp_of_user, *grp_all, *mem_all;
	sqlite3_stmt *grp_count_member, *grp_count_owned;
	sqlite3_stmt *wrote_insert, *wrote_all;
	/* conv.c */
	bool scrub;                 /* bodies were erased: truncate the WAL after the commit */
	sqlite3_stmt *msg_lookup, *msg_amend, *msg_erase_edits, *conv_note, *group_note, *read_get, *read_set, *read_senders, *conv_unread;
	sqlite3_stmt *reads_members, *reads_one, *conv_has, *conv_list, *conv_groups, *conv_groups_big, *conv_peer_read;
	sqlite3_stmt *group_fan_ts, *group_unfan, *group_fan_set, *group_size, *count_edits, *group_edits;
	struct im__map wrote_seen;  /* "writer\nreader" pairs known written */
};

static inline struct im__sqlite *im_sqlite(struct im__store *st) { return st->be; }

/* db.c */
/* Logs SQLite's message for what and returns MOSQ_ERR_UNKNOWN. */
int im_sqlite__fail(struct im__sqlite *s, const char *what);
/* Steps a statement that returns no row, resets it. */
int im_sqlite__step(struct im__sqlite *s, sqlite3_stmt *stmt, const char *what);
int im_sqlite__prepare(struct im__sqlite *s, sqlite3_stmt **stmt, const char *sql);
const char *im_sqlite__text(sqlite3_stmt *s, int col);
/* Inserts one message row at seq (sealed with the store's key if any). */
int im_sqlite__insert_msg(struct im__store *st, struct im__tl *t, uint64_t seq, const struct im__msg *m, int copy,
		uint64_t ref_seq, uint64_t peer_seq);
/* Remembers t as touched by the open transaction. */
void im_sqlite__touch(struct im__sqlite *s, struct im__tl *t);
struct im__tl *im_sqlite__cache_find(struct im__tl_cache *c, const char *name, size_t len);

/* msg.c */
struct im__tl *im_sqlite__timeline(struct im__store *st, const char *name, size_t len, bool create, bool *err);
int im_sqlite__dedup(struct im__store *st, const char *sender, const char *cmid, struct im__appended *out);
int im_sqlite__append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m,
		struct im__appended *out);
int im_sqlite__range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit, int64_t now_ms,
		im_store__row_fn fn, void *ctx, bool *more);
int im_sqlite__prepare_msg(struct im__sqlite *s);
void im_sqlite__cache_free(struct im__tl_cache *c);

/* cursor.c */
int im_sqlite__cursor_get(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id, uint64_t *seq);
int im_sqlite__cursor_set(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id,
		uint64_t seq, uint64_t *now);

/* group.c */
int im_sqlite__prepare_group(struct im__sqlite *s);
void im_sqlite__group_close(struct im__sqlite *s);
/* Drops the group cache (after a rollback): reloaded on next use. */
void im_sqlite__group_forget(struct im__sqlite *s);
struct im__group *im_sqlite__group(struct im__store *st, const char *name, size_t len, bool *err);
int im_sqlite__group_change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, struct im__tl *tl, const struct im__msg *sys, uint64_t *seq);
int im_sqlite__groups_of(struct im__store *st, const char *user, im_store__name_fn fn, void *ctx);
int im_sqlite__group_counts(struct im__store *st, const char *const *users, size_t n, bool owned, uint32_t upto,
		uint32_t *counts);
int im_sqlite__each_group(struct im__store *st, im_store__group_fn fn, void *ctx);
int im_sqlite__wrote(struct im__store *st, const char *writer, const char *reader, bool *first);
int im_sqlite__each_wrote(struct im__store *st, im_store__pair_fn fn, void *ctx);

/* conv.c */
int im_sqlite__prepare_conv(struct im__sqlite *s);
int im_sqlite__lookup(struct im__store *st, struct im__tl *tl, uint64_t seq, bool *found, struct im__msg_ref *out);
int im_sqlite__amend(struct im__store *st, struct im__tl *tl, uint64_t seq, const void *body, size_t len,
		uint32_t raw_len, uint32_t flags);
void im_sqlite__scrub(struct im__store *st);
int im_sqlite__note_last(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
		const char *sender, uint32_t flags, const char *preview, int add);
int im_sqlite__read_mark(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
		uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx);
int im_sqlite__reads_of(struct im__store *st, struct im__tl *tl, const char *reader, im_store__mark_fn fn, void *ctx,
		uint64_t *head);
int im_sqlite__has_conv(struct im__store *st, const char *owner, const char *peer, bool *yes);
int im_sqlite__conversations(struct im__store *st, const char *owner, uint32_t limit, int64_t before_ts,
		const char *before_tl, int64_t now_ms, im_store__conv_fn fn, void *ctx);

/* trim.c */
int im_sqlite__prepare_trim(struct im__sqlite *s);
int im_sqlite__trim_step(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
		int64_t *cursor_id, bool *done);

#endif
