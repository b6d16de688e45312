/*
 * A string-keyed hash map: open addressing, linear probing, FNV-1a,
 * backward-shift deletion (no tombstones, so lookups stay short after many
 * removals). Used for groups and their member sets, which the ACL check
 * consults once per message per subscriber.
 */
#include <string.h>

#include <mosquitto.h>

#include "base/map.h"
#include "base/util.h"

uint32_t im_map__hash(const char *s, size_t len)
{
	uint32_t h = 2166136261u;
	size_t i;

	for(i = 0; i < len; i++){
		h ^= (uint8_t)s[i];
		h *= 16777619u;
	}
	return h;
}

static size_t find_slot(const struct im__map *m, const char *key, size_t len, uint32_t h)
{
	size_t i;

	for(i = h & (m->cap - 1); m->slots[i].key; i = (i + 1) & (m->cap - 1)){
		if(m->slots[i].hash == h && m->slots[i].len == len && !memcmp(m->slots[i].key, key, len)) break;
	}
	return i;
}

void *im_map__get(const struct im__map *m, const char *key, size_t len)
{
	size_t i;

	if(m->cap == 0) return NULL;
	i = find_slot(m, key, len, im_map__hash(key, len));
	return m->slots[i].key ? m->slots[i].val : NULL;
}

static int grow(struct im__map *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 16, i, j;
	struct im__map_slot *ns = im_calloc(ncap, sizeof(*ns));

	if(ns == NULL) return MOSQ_ERR_NOMEM;
	for(i = 0; i < m->cap; i++){
		if(m->slots[i].key == NULL) continue;
		for(j = m->slots[i].hash & (ncap - 1); ns[j].key; j = (j + 1) & (ncap - 1));
		ns[j] = m->slots[i];
	}
	im_free(m->slots);
	m->slots = ns;
	m->cap = ncap;
	return MOSQ_ERR_SUCCESS;
}

int im_map__put(struct im__map *m, const char *key, size_t len, void *val)
{
	uint32_t h = im_map__hash(key, len);
	size_t i;
	char *k;

	if((m->count + 1) * 2 > m->cap && grow(m) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_NOMEM;
	i = find_slot(m, key, len, h);
	if(m->slots[i].key){
		m->slots[i].val = val;
		return MOSQ_ERR_SUCCESS;
	}
	k = im_malloc(len + 1);
	if(k == NULL) return MOSQ_ERR_NOMEM;
	memcpy(k, key, len);
	k[len] = '\0';
	m->slots[i].key = k;
	m->slots[i].len = len;
	m->slots[i].hash = h;
	m->slots[i].val = val;
	m->count++;
	return MOSQ_ERR_SUCCESS;
}

void *im_map__del(struct im__map *m, const char *key, size_t len)
{
	size_t i, j, home;
	void *val;

	if(m->cap == 0) return NULL;
	i = find_slot(m, key, len, im_map__hash(key, len));
	if(m->slots[i].key == NULL) return NULL;
	val = m->slots[i].val;
	im_free(m->slots[i].key);
	m->slots[i].key = NULL;
	m->count--;
	/* Backward shift: move later entries of the cluster into the hole if
	 * their home slot does not lie cyclically in (i, j]. */
	for(j = (i + 1) & (m->cap - 1); m->slots[j].key; j = (j + 1) & (m->cap - 1)){
		home = m->slots[j].hash & (m->cap - 1);
		if((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))){
			m->slots[i] = m->slots[j];
			m->slots[j].key = NULL;
			i = j;
		}
	}
	return val;
}

void im_map__clear(struct im__map *m)
{
	size_t i;

	if(m->count == 0) return;
	for(i = 0; i < m->cap; i++){
		im_free(m->slots[i].key);
		m->slots[i].key = NULL;
	}
	m->count = 0;
}

void im_map__free(struct im__map *m, void (*free_val)(void *))
{
	size_t i;

	for(i = 0; i < m->cap; i++){
		if(m->slots[i].key == NULL) continue;
		if(free_val) free_val(m->slots[i].val);
		im_free(m->slots[i].key);
	}
	im_free(m->slots);
	memset(m, 0, sizeof(*m));
}
