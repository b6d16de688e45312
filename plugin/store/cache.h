/*
 * What both store backends cache, in one place (as libuv's uv-common.c
 * serves unix/ and win/): groups with their member sets, and the
 * timelines the open transaction touched. Neither depends on the backend:
 * a backend hands in its loader. Worker thread only.
 */
#ifndef IM_STORE_CACHE_H
#define IM_STORE_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/map.h"
#include "store/store.h"

/* Loads one group from the database (seeing the open transaction): NULL
 * if there is none, or on a store failure with *err set. The group comes
 * from im_cache__group_new. */
typedef struct im__group *(*im_cache__load_fn)(void *be, const char *name, size_t len, bool *err);

/* A group with owner (copied) and no members; NULL when out of memory. */
struct im__group *im_cache__group_new(const char *owner);
/* Adds user to g's member set. MOSQ_ERR_SUCCESS or MOSQ_ERR_NOMEM. */
int im_cache__group_add(struct im__group *g, const char *user);
/* Frees a group (NULL is a no-op). */
void im_cache__group_free(struct im__group *g);

/* The cached group name (len bytes), loaded through load on a miss.
 * NULL if there is none or on failure (*err set). */
struct im__group *im_cache__group(struct im__map *groups, const char *name, size_t len, im_cache__load_fn load,
		void *be, bool *err);
/* Follows a membership change the open transaction made. A create
 * reloads the group through load; an allocation failure drops the group
 * from the cache (the next use reloads it). */
void im_cache__group_change(struct im__map *groups, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, im_cache__load_fn load, void *be);
/* Drops one group (the next use reloads it), or every group. */
void im_cache__group_forget(struct im__map *groups, const char *name, size_t len);
void im_cache__group_forget_all(struct im__map *groups);

/* The timelines the open transaction touched, to mark stale on rollback. */
struct im__touched {
	struct im__tl **v;
	size_t n, cap;
};
/* Remembers t. When that cannot be remembered (out of memory), t is
 * marked stale at once: a rollback must never leave a head it moved. */
void im_cache__touch(struct im__touched *tt, struct im__tl *t);
/* Marks every touched timeline stale (a rollback) and forgets them. */
void im_cache__touched_stale(struct im__touched *tt);
void im_cache__touched_free(struct im__touched *tt);

#endif
