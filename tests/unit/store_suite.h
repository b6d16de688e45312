/* One store test suite, run once per backend (issue #19): what every
 * backend promises through the ops table, written against it alone. Each
 * backend's test (test_store.c, test_store_pg.c) describes its backend,
 * runs the suite, then tests what only that backend has. The helpers are
 * the seam as the worker uses it, one call each (a transaction around
 * every write), for those tests too. */
#ifndef STORE_SUITE_H
#define STORE_SUITE_H

#include <stdbool.h>
#include <stdint.h>

#include "base/limits.h"
#include "store/store.h"

struct store_backend {
	const char *name;       /* what ops->name says */
	/* Opens the store as a broker (re)starting would: same database, same
	 * identity. A reopen is a close and an open. */
	int (*open)(struct im__store *st);
	/* Makes the next open find no store at all (none is open). */
	void (*fresh)(void);
	/* One SQL statement on the backend's database beside the store (open,
	 * no batch): the first column of the first row, or -1. For what the ops
	 * cannot show: how a body lies at rest. */
	long long (*sql)(struct im__store *st, const char *query);
	/* SQL giving where the string literal put for its ? starts in column
	 * body (1-based, 0: nowhere): blob functions differ between dialects. */
	const char *body_find;
	/* timeline(create) commits a new row at once, apart from the batch,
	 * so a rollback leaves it, empty (PostgreSQL: open.h). */
	bool tl_create_commits;
};

/* Runs every test on a fresh store of be; adds its counts to the caller's
 * (tap.h keeps them per file). */
void store_suite(const struct store_backend *be, int *checks, int *failed);

struct im__tl *timeline(struct im__store *st, const char *name, bool create);
struct im__msg msg(const char *from, const char *to, const char *cmid, const char *body);
int append(struct im__store *st, struct im__tl *to, struct im__tl *own, const struct im__msg *m, struct im__appended *a);
int cursor_set(struct im__store *st, struct im__tl *tl, const char *u, const char *c, uint64_t seq, uint64_t *now);
/* A membership change and its system message in g/<group>, as one batch. */
int change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, uint64_t *seq);
int note(struct im__store *st, const char *owner, const char *peer, uint64_t seq, int64_t ts, const char *sender,
		const char *preview, int unread_add);

struct names { char v[16][IM_NAME_MAX + 1]; int n; };
enum im_row name_row(void *ctx, const char *name);
/* peers: whose messages the mark read (in user's own inbox). */
int read_mark(struct im__store *st, const char *tl, const char *user, uint64_t seq, uint64_t *before, uint64_t *after,
		struct names *peers);

/* range's rows (the first 64 kept); after stop_after rows, STOP. */
struct collect { uint64_t seqs[64], refs[64]; char bodies[64][16]; int n; int stop_after; };
enum im_row collect_row(void *ctx, const struct im__msg *m);

#endif
