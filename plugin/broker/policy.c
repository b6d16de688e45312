/*
 * Who may do what, as the broker thread sees it: usernames, admins, group
 * membership and presence contacts. The worker holds the truth; this view
 * is loaded at start and follows every change by completion, so the ACL
 * check (once per message per subscriber) never waits on the store.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/config.h"
#include "base/defs.h"
#include "base/map.h"
#include "base/util.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "cluster/cluster.h"
#include "codec/route.h"

struct bgroup {
	char owner[IM_NAME_MAX + 1];
	struct im__map members;     /* user -> non-NULL */
};

static const char *const yes = "y";

const char *im_policy__user(const struct mosquitto *client, const char **why)
{
	const char *user = mosquitto_client_username(client);

	if(user == NULL){
		*why = "IM topics need a username";
		return NULL;
	}
	if(!im_name__valid(user, strlen(user))){
		*why = "the username is not a valid IM name";
		return NULL;
	}
	return user;
}

bool im_policy__is_admin(const struct im__config *cfg, const char *user)
{
	char *const *a;

	for(a = cfg->admins; a && *a; a++){
		if(!strcmp(*a, user)) return true;
	}
	return false;
}

bool im_policy__is_member(struct im__plugin *p, const char *group, size_t glen, const char *user)
{
	struct bgroup *g = im_map__get(&p->groups, group, glen);

	return g && im_map__get(&g->members, user, strlen(user)) != NULL;
}

bool im_policy__may_read(struct im__plugin *p, const struct im__route *r, const char *user)
{
	if(r->kind == 'u') return strlen(user) == r->name_len && !memcmp(r->name, user, r->name_len);
	return im_policy__is_member(p, r->name, r->name_len, user);
}

static void bgroup_free(void *v)
{
	struct bgroup *g = v;

	if(g == NULL) return;
	im_map__free(&g->members, NULL);
	free(g);
}

static void member_put(struct im__plugin *p, struct bgroup *g, const char *group, const char *user)
{
	if(im_map__get(&g->members, user, strlen(user))) return;
	if(im_map__put(&g->members, user, strlen(user), (void *)yes) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: out of memory: %s is not in the ACL view of group %s.", user, group);
		return;
	}
	im_cluster__member(p->cluster, group, user, true);
}

static void member_del(struct im__plugin *p, struct bgroup *g, const char *group, const char *user)
{
	if(im_map__del(&g->members, user, strlen(user)) == NULL) return;
	im_cluster__member(p->cluster, group, user, false);
}

/* op "set" (a cluster broker reloading the groups): users is the whole
 * membership; whoever is not in it goes. */
static void members_set(struct im__plugin *p, struct bgroup *g, const char *group,
		const char *const *users, size_t n)
{
	struct im__map keep = {0};
	size_t i, k;
	char **gone;
	size_t n_gone = 0;

	for(i = 0; i < n; i++){
		if(im_map__put(&keep, users[i], strlen(users[i]), (void *)yes) != MOSQ_ERR_SUCCESS){
			im_map__free(&keep, NULL);
			return;
		}
	}
	gone = im_calloc(g->members.count + 1, sizeof(char *));
	for(k = 0; gone && k < g->members.cap; k++){
		const struct im__map_slot *sl = &g->members.slots[k];
		if(sl->key && sl->val && !im_map__get(&keep, sl->key, strlen(sl->key))) gone[n_gone++] = im_strdup(sl->key);
	}
	for(i = 0; i < n_gone; i++){
		if(gone[i]) member_del(p, g, group, gone[i]);
		free(gone[i]);
	}
	free(gone);
	im_map__free(&keep, NULL);
	for(i = 0; i < n; i++) member_put(p, g, group, users[i]);
}

void im_policy__members(struct im__plugin *p, const char *group, enum im_group_op op, const char *owner,
		const char *const *users, size_t n)
{
	size_t glen = strlen(group), i;
	struct bgroup *g = im_map__get(&p->groups, group, glen);
	bool add = op != IM_GROUP_REMOVE && op != IM_GROUP_LEAVE;

	if(g == NULL){
		if(!add) return;
		if((g = im_calloc(1, sizeof(*g))) == NULL || im_map__put(&p->groups, group, glen, g) != MOSQ_ERR_SUCCESS){
			free(g);
			g = NULL;
		}
	}
	if(g == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: out of memory: group %s is not in the ACL view; its members are refused until a restart.", group);
		return;
	}
	snprintf(g->owner, sizeof(g->owner), "%s", owner);
	if(op == IM_GROUP_SET){
		members_set(p, g, group, users, n);
		return;
	}
	for(i = 0; i < n; i++){
		if(add) member_put(p, g, group, users[i]);
		else member_del(p, g, group, users[i]);
	}
}

static size_t pair(char *key, size_t cap, const char *writer, size_t wlen, const char *reader)
{
	size_t rlen = strlen(reader);

	if(wlen + rlen + 2 > cap) return 0;
	memcpy(key, writer, wlen);
	key[wlen] = '\n';
	memcpy(key + wlen + 1, reader, rlen + 1);
	return wlen + rlen + 1;
}

void im_policy__wrote(struct im__plugin *p, const char *writer, const char *reader)
{
	char key[2 * IM_NAME_MAX + 2];
	size_t n = pair(key, sizeof(key), writer, strlen(writer), reader);

	if(n) im_map__put(&p->wrote, key, n, (void *)yes);
}

bool im_policy__has_written(struct im__plugin *p, const char *writer, size_t wlen, const char *reader)
{
	char key[2 * IM_NAME_MAX + 2];
	size_t n = pair(key, sizeof(key), writer, wlen, reader);

	return n && im_map__get(&p->wrote, key, n) != NULL;
}

void im_policy__free(struct im__plugin *p)
{
	im_map__free(&p->groups, bgroup_free);
	im_map__free(&p->wrote, NULL);
}
