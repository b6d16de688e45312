/*
 * The store seam [W]: everything the worker asks of a store, as one table
 * of operations, filled by each backend (store/sqlite/, and store/pg/ for
 * cluster mode); nothing above the worker knows which one runs.
 * store/open.h picks one from the options. Only the worker thread calls
 * these.
 *
 * Errors: a backend logs each failure once (im_log, with its own message)
 * and returns MOSQ_ERR_UNKNOWN; callers decide what the client sees.
 */
#ifndef IM_STORE_STORE_H
#define IM_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/crypt.h"
#include "base/defs.h"
#include "base/map.h"

/* A timeline as cached by the backend. One per timeline touched since
 * start; the pointer stays valid until close. head moves inside an open
 * transaction; after a rollback the entry is marked stale and reloaded by
 * the next timeline() call that returns it: a caller looks a timeline up
 * again in each transaction, and never hands append an entry it got
 * before a rollback (SQLite would take its stale head).
 *
 * With several writers (PostgreSQL, cluster mode) other brokers move head
 * and first too, so a cached value is only a hint. The PostgreSQL backend
 * re-reads both from the database on every timeline() call, except for a
 * timeline this broker's open transaction appended to: that transaction
 * holds the row's lock until it ends, so nobody else can move them and the
 * cached values are exact. Hence: head and first are current as of the
 * timeline() call that returned the entry (and as of range(), which
 * refreshes them from the snapshot it read the rows in); append returns,
 * and sets, the seqs PostgreSQL gave. */
struct im__tl {
	int64_t id;
	uint64_t head;          /* last seq handed out */
	uint64_t first;         /* oldest seq still stored (head+1 if none) */
	uint32_t hash;
	uint16_t name_len;
	bool stale;
	char name[];            /* "u/<name>", NUL-terminated */
};

/* A message as stored and as sent in a frame. Strings are borrowed: they
 * must outlive the call they are passed to. */
struct im__msg {
	uint64_t seq;
	int64_t ts_ms;
	const char *sender;
	const char *cmid;         /* NULL if none */
	const char *to;           /* addressed timeline */
	const char *content_type; /* NULL if none */
	uint32_t flags;
	int64_t expires_ms;       /* 0 = never */
	uint32_t raw_len;         /* FLAG_COMPRESSED: inflated length */
	uint64_t ref_seq;         /* FLAG_EDIT / FLAG_RECALL: the seq it changes (in `to`) */
	uint64_t own_ref_seq;     /* append: the same message's seq in the sender's inbox */
	uint64_t peer_seq;        /* read back: a direct message's seq in the other inbox */
	const void *body;
	size_t body_len;
};

/* The outcome of an append. */
struct im__appended {
	uint64_t seq;           /* in the timeline that holds the message */
	uint64_t own_seq;       /* in the sender's inbox, 0 if no copy was made */
	int64_t ts_ms;
	bool duplicate;         /* (sender, cmid) seen before: the original's values */
	char timeline[IM_TL_MAX + 1];   /* where the message (the original) is */
};

/* A group as cached: owner and member set (user -> non-NULL). */
struct im__group {
	char *owner;
	struct im__map members;
};


/* What the store knows of one stored message (edit and recall checks). */
struct im__msg_ref {
	char sender[IM_NAME_MAX + 1];
	uint32_t flags;
	uint64_t peer_seq;      /* a direct message's seq in the other inbox, 0 if none */
	int copy;               /* 1: the sender's copy */
};

/* Groups of at most this many members keep their last activity in each
 * member's row (schema/008_conv_reads.sql); larger ones are ordered when
 * listed. Back to per member at half of it, so a group at the edge does
 * not flip with each add and remove. */
#define IM_STORE_FAN_MAX 32
/* proto/im.proto's FLAG_SYSTEM, as the stores' SQL reads the flags. */
#define IM_STORE_FLAG_SYSTEM 1u

/* One entry of the conversation list. */
struct im__conv {
	char kind;              /* 'u' (a direct conversation) or 'g' */
	const char *name;       /* the peer or the group */
	uint64_t last_seq;      /* in u/<owner> or g/<group> */
	int64_t last_ts;
	const char *last_sender;
	uint32_t last_flags;
	const char *preview;    /* NULL if none */
	uint64_t unread;
	uint64_t peer_read;     /* 'u': the peer's read mark of u/<peer>, as reads_of shows it */
};
typedef enum im_row (*im_store__conv_fn)(void *ctx, const struct im__conv *c);
typedef enum im_row (*im_store__mark_fn)(void *ctx, const char *user, uint64_t seq);

typedef enum im_row (*im_store__row_fn)(void *ctx, const struct im__msg *m);
typedef enum im_row (*im_store__name_fn)(void *ctx, const char *name);
typedef enum im_row (*im_store__group_fn)(void *ctx, const char *group, const char *owner,
		const char *const *members, size_t n);
typedef enum im_row (*im_store__pair_fn)(void *ctx, const char *a, const char *b);

struct im__store;

struct im__store_ops {
	const char *name;
	void (*close)(struct im__store *st);
	/* One transaction per batch; commit records applied_lsn in it (0: keep). */
	int (*begin)(struct im__store *st);
	int (*commit)(struct im__store *st, uint64_t applied_lsn);
	void (*rollback)(struct im__store *st);
	/* The cached timeline name (len bytes), loading it, creating its row if
	 * create. NULL if absent (and !create) or on error (*err set). */
	struct im__tl *(*timeline)(struct im__store *st, const char *name, size_t len, bool create, bool *err);
	/* Appends m to `to` and the sender's copy to own (may be NULL), after
	 * looking (sender, cmid) up. Inside the caller's transaction. */
	int (*append)(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m,
			struct im__appended *out);
	/* fn for each message of tl after `after`, in order, at most limit rows,
	 * skipping rows expired at now_ms. *more: a further row exists.
	 * MOSQ_ERR_SUCCESS, MOSQ_ERR_NOMEM if fn said IM_ROW_ERROR, or
	 * MOSQ_ERR_UNKNOWN on a store failure. */
	int (*range)(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit, int64_t now_ms,
			im_store__row_fn fn, void *ctx, bool *more);
	int (*cursor_get)(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id, uint64_t *seq);
	/* Moves the cursor to max(current, seq); *now receives the result. */
	int (*cursor_set)(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id,
			uint64_t seq, uint64_t *now);
	/* The cached group; NULL if absent or on error (*err set). */
	struct im__group *(*group)(struct im__store *st, const char *name, size_t len, bool *err);
	/* Applies a membership change and appends its system message sys to the
	 * group's timeline tl; the group cache changes with it (and is dropped
	 * on rollback). out: the system message's seq. */
	int (*group_change)(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
			char *const *users, size_t n, struct im__tl *tl, const struct im__msg *sys, uint64_t *seq);
	/* fn for each group user is a member of, in name order. */
	int (*groups_of)(struct im__store *st, const char *user, im_store__name_fn fn, void *ctx);
	/* counts[i]: how many groups users[i] is a member of (owned: owns),
	 * counted up to upto at most (0: all), so that the cost is bounded by
	 * n * upto index steps, whatever the number of groups. */
	int (*group_counts)(struct im__store *st, const char *const *users, size_t n, bool owned, uint32_t upto,
			uint32_t *counts);
	/* fn for every group with its members (the broker thread's view, at start). */
	int (*each_group)(struct im__store *st, im_store__group_fn fn, void *ctx);
	/* Notes that writer wrote to reader (presence contacts); *first is set
	 * when this is the first time. */
	int (*wrote)(struct im__store *st, const char *writer, const char *reader, bool *first);
	int (*each_wrote)(struct im__store *st, im_store__pair_fn fn, void *ctx);
	/* One bounded step of a retention sweep: at most budget rows, short
	 * transactions of its own (call outside a batch). Returns rows deleted
	 * or -1 on a store failure; *cursor_id is where the next step starts,
	 * *done when the sweep passed the last timeline. */
	int (*trim_step)(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
			int64_t *cursor_id, bool *done);
	/* Entries cached, for metrics. */
	size_t (*cached)(struct im__store *st, size_t *groups);
	/* A new store id, written at the next commit (im_store__renew_id). */
	int (*renew_id)(struct im__store *st);

	/* ---- conversations (issue #15) ---- */
	/* After a commit that erased bodies: make the old bytes go from the
	 * files too (the WAL's page images). Best effort. */
	void (*scrub)(struct im__store *st);
	/* (sender, cmid) looked up as append does: out->duplicate if stored. */
	int (*dedup)(struct im__store *st, const char *sender, const char *cmid, struct im__appended *out);
	/* The stored message at (tl, seq): MOSQ_ERR_SUCCESS and *found. */
	int (*lookup)(struct im__store *st, struct im__tl *tl, uint64_t seq, bool *found, struct im__msg_ref *out);
	/* Replaces the body of (tl, seq) (sealed again for it), or erases it
	 * when body is NULL (with the bodies of its edits), and ORs flags into
	 * its flags. */
	int (*amend)(struct im__store *st, struct im__tl *tl, uint64_t seq, const void *body, size_t len,
			uint32_t raw_len, uint32_t flags);
	/* A conversation's last message: owner's direct conversation with peer,
	 * or (owner NULL) group peer. add: for owner, unread messages to add;
	 * for a group, the edits and recalls to add to its count (the worker
	 * folds a batch's notes of one group into one, so this is how many
	 * of the folded messages were edits or recalls: they are not messages
	 * to read). A group of at most IM_STORE_FAN_MAX members notes its
	 * last message in each member's row (the list's order). */
	int (*note_last)(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts,
			const char *sender, uint32_t flags, const char *preview, int add);
	/* Moves user's read mark of tl to max(mark, seq): *before and *after.
	 * In the user's own inbox, the unread counts of its direct
	 * conversations drop by the peers' messages now read (not edits or
	 * recalls), and fn is called for each such peer (whose devices may be
	 * told, of what reads_of lets them see). */
	int (*read_mark)(struct im__store *st, struct im__tl *tl, const char *user, uint64_t seq,
			uint64_t *before, uint64_t *after, im_store__name_fn fn, void *ctx);
	/* The read marks of tl that reader may see, fn(user, mark) each, and
	 * *head, what they are measured against: in g/<group> the current
	 * members' marks and the head; in reader's own inbox its own mark and
	 * the head; in u/<peer> the peer's mark only as far as it passed
	 * reader's own messages (the highest of reader's seqs there at or below
	 * it; none if it passed none), and for head the seq there of reader's
	 * last message. Never the peer's inbox head or a mark past that. */
	int (*reads_of)(struct im__store *st, struct im__tl *tl, const char *reader, im_store__mark_fn fn, void *ctx,
			uint64_t *head);
	/* Whether owner has a direct conversation with peer (wrote or was written to). */
	int (*has_conv)(struct im__store *st, const char *owner, const char *peer, bool *yes);
	/* owner's conversations, latest first, strictly before (before_ts,
	 * before_tl) when before_tl is not NULL, at most limit: index ranges
	 * read in order, whatever the number of conversations, except the
	 * groups of more than IM_STORE_FAN_MAX members, ordered when listed. A
	 * preview only while sync returns its message at now_ms (not expired,
	 * trimmed or recalled); peer_read as reads_of shows it to owner. */
	int (*conversations)(struct im__store *st, const char *owner, uint32_t limit, int64_t before_ts,
			const char *before_tl, int64_t now_ms, im_store__conv_fn fn, void *ctx);

	/* ---- several writers (PostgreSQL) ---- */
	/* Called by the worker right after begin with the timelines the batch
	 * will write (names sorted bytewise, each once): takes their row locks
	 * in that order in one statement, so that two brokers' batches never
	 * hold what the other waits for (a deadlock fails a batch after
	 * deadlock_timeout). create[i]: make the row first if it is missing
	 * (committed apart, as timeline(create) does); otherwise a missing row
	 * is skipped. The entries are then current and locked. NULL for a
	 * backend with one writer (SQLite locks the whole file per batch). */
	int (*prelock)(struct im__store *st, const char *const *names, const bool *create, size_t n);
	/* Optional (NULL: the backend asks per message). Called by the worker
	 * right after prelock with the (sender, cmid) of the batch's messages
	 * that have one (repeats allowed): looks them all up in one statement,
	 * so that dedup and append answer those pairs without asking the
	 * database again (a repeat later in the batch sees the first). A pair
	 * that another broker stores after this call and before the commit
	 * fails the commit (the retry finds it stored); prelock's locks make
	 * that rare (a sender's direct messages share its inbox's lock, a
	 * group's messages the group's). Added for issue #22. */
	int (*dedup_batch)(struct im__store *st, const char *const *senders, const char *const *cmids, size_t n);
	/* Drops one group (name NULL: every group) from a per-node cache that
	 * another node may have made stale: the next use reloads it. NULL for
	 * a backend with one writer, whose cache is always right. */
	void (*forget_group)(struct im__store *st, const char *name, size_t len);
};

struct im__store {
	const struct im__store_ops *ops;
	void *be;                   /* the backend's state */
	struct im__crypt *crypt;    /* NULL: bodies stored as given; owned by the worker */
	/* What the store says about itself (read at open). */
	uint64_t store_id;
	uint8_t frame_key[16];
	uint64_t applied_lsn;
	bool created;               /* a new database was made by this open */
};

/* A new store id (the store was rolled back: clients must start over).
 * Written at the next commit. */
static inline int im_store__renew_id(struct im__store *st) { return st->ops->renew_id(st); }
static inline void im_store__forget_group(struct im__store *st, const char *name, size_t len)
{
	if(st->ops && st->ops->forget_group) st->ops->forget_group(st, name, len);
}
static inline void im_store__close(struct im__store *st) { if(st->ops) st->ops->close(st); }

#endif
