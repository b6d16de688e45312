/*
 * The group cache and the touched list both backends keep (cache.h).
 *
 * Group cache changes are made inside the transaction that writes them; a
 * rollback drops the whole cache (reloaded on next use), which is rare
 * and always correct.
 */
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "base/util.h"
#include "store/cache.h"

static const char *const member = "m"; /* any non-NULL value */

struct im__group *im_cache__group_new(const char *owner)
{
	struct im__group *g = calloc(1, sizeof(*g));

	if(g && (g->owner = im_strdup(owner)) == NULL){
		free(g);
		g = NULL;
	}
	return g;
}

int im_cache__group_add(struct im__group *g, const char *user)
{
	return im_map__put(&g->members, user, strlen(user), (void *)member);
}

void im_cache__group_free(struct im__group *g)
{
	if(g == NULL) return;
	free(g->owner);
	im_map__free(&g->members, NULL);
	free(g);
}

static void group_free_v(void *v)
{
	im_cache__group_free(v);
}

struct im__group *im_cache__group(struct im__map *groups, const char *name, size_t len, im_cache__load_fn load,
		void *be, bool *err)
{
	struct im__group *g = im_map__get(groups, name, len);

	*err = false;
	if(g) return g;
	g = load(be, name, len, err);
	if(g && im_map__put(groups, name, len, g) != MOSQ_ERR_SUCCESS){
		im_cache__group_free(g);
		*err = true;
		return NULL;
	}
	return g;
}

void im_cache__group_change(struct im__map *groups, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, im_cache__load_fn load, void *be)
{
	size_t glen = strlen(group), i;
	struct im__group *g = im_map__get(groups, group, glen);
	bool err = false;
	int rc = MOSQ_ERR_SUCCESS;

	if(op == IM_GROUP_CREATE){
		im_cache__group_free(im_map__del(groups, group, glen));
		g = load(be, group, glen, &err); /* sees the open transaction */
		if(g && im_map__put(groups, group, glen, g) != MOSQ_ERR_SUCCESS) im_cache__group_free(g);
		return;
	}
	if(g == NULL) return;
	if(op == IM_GROUP_LEAVE){
		im_map__del(&g->members, actor, strlen(actor));
		return;
	}
	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		if(op == IM_GROUP_REMOVE) im_map__del(&g->members, users[i], strlen(users[i]));
		else rc = im_cache__group_add(g, users[i]);
	}
	if(rc != MOSQ_ERR_SUCCESS) im_cache__group_free(im_map__del(groups, group, glen));
}

void im_cache__group_forget(struct im__map *groups, const char *name, size_t len)
{
	im_cache__group_free(im_map__del(groups, name, len));
}

void im_cache__group_forget_all(struct im__map *groups)
{
	im_map__free(groups, group_free_v);
}

void im_cache__touch(struct im__touched *tt, struct im__tl *t)
{
	struct im__tl **v;

	if(tt->n == tt->cap){
		size_t cap = tt->cap ? tt->cap * 2 : 64;
		if((v = realloc(tt->v, cap * sizeof(*v))) == NULL){
			t->stale = true; /* cannot remember it: a rollback still reloads it */
			return;
		}
		tt->v = v;
		tt->cap = cap;
	}
	tt->v[tt->n++] = t;
}

void im_cache__touched_stale(struct im__touched *tt)
{
	size_t i;

	for(i = 0; i < tt->n; i++) tt->v[i]->stale = true;
	tt->n = 0;
}

void im_cache__touched_free(struct im__touched *tt)
{
	free(tt->v);
	memset(tt, 0, sizeof(*tt));
}
