/*
 * A string-keyed hash map [any thread, one owner each].
 */
#ifndef IM_BASE_MAP_H
#define IM_BASE_MAP_H

#include <stddef.h>
#include <stdint.h>

struct im__map_slot {
	char *key;          /* owned copy, NUL-terminated; NULL = empty slot */
	size_t len;
	uint32_t hash;
	void *val;
};

struct im__map {
	struct im__map_slot *slots;
	size_t cap;         /* power of two */
	size_t count;
};

uint32_t im_map__hash(const char *s, size_t len);
/* The value for key, or NULL. */
void *im_map__get(const struct im__map *m, const char *key, size_t len);
/* Inserts or replaces; the key is copied, val is stored as given.
 * MOSQ_ERR_SUCCESS or MOSQ_ERR_NOMEM (map unchanged). */
int im_map__put(struct im__map *m, const char *key, size_t len, void *val);
/* Removes key; returns its value (for the caller to free), or NULL. */
void *im_map__del(struct im__map *m, const char *key, size_t len);
/* Empties m, keeping its slots for reuse; values are the caller's. */
void im_map__clear(struct im__map *m);
/* Frees keys, and values with free_val if not NULL. */
void im_map__free(struct im__map *m, void (*free_val)(void *));

#endif
