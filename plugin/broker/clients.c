/*
 * Per client id state of the broker thread: its request budgets and, for
 * the client id guard, which user it belongs to.
 */
#include <string.h>

#include <mosquitto.h>

#include "base/map.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/plugin.h"

struct im__client *im_clients__get(struct im__plugin *p, const char *id)
{
	struct im__client *c;

	if(id == NULL) return NULL;
	c = im_map__get(&p->clients, id, strlen(id));
	if(c) return c;
	c = im_calloc(1, sizeof(*c));
	if(c && im_map__put(&p->clients, id, strlen(id), c) != MOSQ_ERR_SUCCESS){
		im_free(c);
		c = NULL;
	}
	return c;
}

struct im__user *im_clients__user(struct im__plugin *p, const char *user)
{
	struct im__user *u;

	if(user == NULL) return NULL;
	u = im_map__get(&p->users, user, strlen(user));
	if(u) return u;
	u = im_calloc(1, sizeof(*u));
	if(u && im_map__put(&p->users, user, strlen(user), u) != MOSQ_ERR_SUCCESS){
		im_free(u);
		u = NULL;
	}
	return u;
}
