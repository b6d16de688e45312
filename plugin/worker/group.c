/*
 * $CONTROL/im/v1/group [W]: create / add / remove / leave / list / info.
 * The broker thread parsed the request and checked every name; here it is
 * authorised against the store's truth and applied.
 *
 * Every membership change is written, in the same transaction, as a
 * system message (Header.flags FLAG_SYSTEM, JSON body) in the group's
 * timeline, so each member's history says who joined and left, in order.
 * The broker thread's membership view is updated by a completion queued
 * before the system message's frame: a member added reads it, a member
 * removed does not.
 *
 * Nobody consents to being put in a group, so what others can do to a
 * user is bounded: a user is in at most max_groups_per_user groups and
 * creates at most max_groups_created. A create or add that would pass
 * either is refused whole, naming the user. The counts are the store's,
 * read in the batch that makes the change.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "base/name.h"
#include "worker/internal.h"

#define MAX_LIST 1000

static void reply_status(struct im__worker *w, const struct im__job *j, Im__V1__Status st, const char *why)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;

	gr.has_status = 1;
	gr.status = st;
	gr.reason = (char *)why;
	gr.op = (char *)j->u.group.op;
	gr.group = j->u.group.group[0] ? (char *)j->u.group.group : NULL;
	gr.has_store_id = 1;
	gr.store_id = w->st.store_id;
	im_work__reply(w, j, &gr.base, false);
}

/* {"event":"add","by":"alice","users":[...]}. Returns length, 0 if it does
 * not fit. */
static size_t sys_body(char *out, size_t cap, const char *event, const char *by, char *const *users, size_t n)
{
	size_t len = 0, i;

	len = (size_t)snprintf(out, cap, "{\"event\":\"%s\",\"by\":\"", event);
	if(len >= cap || !im_json__str(out, cap, &len, by) || len + 12 >= cap) return 0;
	memcpy(out + len, "\",\"users\":[", 11);
	len += 11;
	for(i = 0; i < n; i++){
		if(len + 4 >= cap) return 0;
		if(i) out[len++] = ',';
		out[len++] = '"';
		if(!im_json__str(out, cap, &len, users[i]) || len + 3 >= cap) return 0;
		out[len++] = '"';
	}
	if(len + 3 >= cap) return 0;
	out[len++] = ']';
	out[len++] = '}';
	out[len] = '\0';
	return len;
}

/* The broker thread's view follows the change. */
static void emit_members(struct im__worker *w, enum im_group_op op, const char *group, const char *owner,
		char *const *users, size_t n)
{
	size_t extra = strlen(group) + strlen(owner) + 2 + n * sizeof(char *), used, i;
	struct im__done *d;

	for(i = 0; i < n; i++) extra += strlen(users[i]) + 1;
	d = im_work__done(IM_DONE_MEMBERS, extra);
	if(d == NULL){
		im_log(MOSQ_LOG_ERR, "im: out of memory: the broker's view of group %s may be stale until a restart.", group);
		return;
	}
	d->users = (const char **)(void *)d->data;
	used = n * sizeof(char *);
	d->group_op = op;
	d->group = im_work__str(d, &used, group);
	d->owner = im_work__str(d, &used, owner);
	for(i = 0; i < n; i++) d->users[i] = im_work__str(d, &used, users[i]);
	d->n_users = n;
	im_work__emit(w, d);
}

/* Membership news on each user's own event topic (PROTOCOL.md 11.1): a
 * device learns at once that it should subscribe to or leave the group,
 * without polling `list`. Queued after the view's change (emit_members),
 * so a subscription made on the news is allowed. */
static void tell_members(struct im__worker *w, const char *tl_name, uint64_t seq, int64_t now, bool member,
		char *const *users, size_t n)
{
	Im__V1__Event ev = IM__V1__EVENT__INIT;
	char topic_tl[IM_TL_MAX + 1];
	size_t i;

	ev.has_kind = 1;
	ev.kind = IM__V1__EVENT__KIND__MEMBERSHIP;
	ev.timeline = (char *)tl_name;
	ev.has_seq = 1;
	ev.seq = seq;
	ev.has_ts_ms = 1;
	ev.ts_ms = now;
	ev.has_member = 1;
	ev.member = member;
	for(i = 0; i < n; i++){
		ev.user = users[i];
		snprintf(topic_tl, sizeof(topic_tl), "u/%s", users[i]);
		im_work__emit(w, im_work__event(w, topic_tl, &ev));
	}
}

/* apply: n users named by the request; the news (tell_members) goes to
 * the n_news of them whose membership it changes (an add names users who
 * may be members already, a remove users who may not be). */
static int apply(struct im__worker *w, const struct im__job *j, enum im_group_op op, const char *owner,
		char *const *users, size_t n, char *const *news, size_t n_news)
{
	const struct im__group_req *r = &j->u.group;
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;
	char tl_name[IM_TL_MAX + 1], owner_copy[IM_NAME_MAX + 1];
	size_t body_cap = 256 + n * (IM_NAME_MAX * 6 + 3), body_len;
	char *body = im_malloc(body_cap);
	char *const actor[1] = {(char *)j->user};
	struct im__tl *tl;
	struct im__msg m;
	uint64_t seq;
	bool err;

	/* owner may point into the cached group, which the change can drop
	 * (an allocation failure reloads it later): keep a copy. */
	snprintf(owner_copy, sizeof(owner_copy), "%s", owner);
	owner = owner_copy;
	snprintf(tl_name, sizeof(tl_name), "g/%s", r->group);
	body_len = body ? sys_body(body, body_cap, im_name__group_op(op), j->user, users, n) : 0;
	if(body_len == 0){
		free(body);
		reply_status(w, j, IM__V1__STATUS__INTERNAL, "out of memory; nothing changed");
		return MOSQ_ERR_SUCCESS;
	}
	if((tl = w->st.ops->timeline(&w->st, tl_name, strlen(tl_name), true, &err)) == NULL){
		free(body);
		return IM_WORK_RETRY;
	}
	memset(&m, 0, sizeof(m));
	m.ts_ms = im_now_ms();
	m.sender = j->user;
	m.to = tl_name;
	m.content_type = "application/json";
	m.flags = IM__V1__HEADER_FLAG__FLAG_SYSTEM;
	m.body = body;
	m.body_len = body_len;
	if(w->st.ops->group_change(&w->st, op, r->group, j->user, users, n, tl, &m, &seq) != MOSQ_ERR_SUCCESS){
		free(body);
		return IM_WORK_RETRY;
	}
	m.seq = seq;
	if(w->st.ops->note_last(&w->st, NULL, r->group, seq, m.ts_ms, j->user, m.flags, NULL, 0) != MOSQ_ERR_SUCCESS){
		free(body);
		return IM_WORK_RETRY;
	}
	IM_STAT_ADD(w->metrics->group_changes, 1);
	if(op == IM_GROUP_CREATE){
		/* The view gets the owner as a member too. */
		char **all = im_calloc(n + 1, sizeof(char *));
		if(all){
			all[0] = (char *)j->user;
			if(n) memcpy(all + 1, users, n * sizeof(char *));
			emit_members(w, IM_GROUP_CREATE, r->group, owner, all, n + 1);
			tell_members(w, tl_name, seq, m.ts_ms, true, all, n + 1);
			free(all);
		}
	}else{
		char *const *who = op == IM_GROUP_LEAVE ? actor : users;
		size_t n_who = op == IM_GROUP_LEAVE ? 1 : n;

		emit_members(w, op, r->group, owner, who, n_who);
		if(op == IM_GROUP_LEAVE) tell_members(w, tl_name, seq, m.ts_ms, false, actor, 1);
		else tell_members(w, tl_name, seq, m.ts_ms, op == IM_GROUP_ADD, news, n_news);
	}
	im_work__emit(w, im_work__frame(w, tl_name, &m, body, body_len));
	free(body);
	im_log(MOSQ_LOG_INFO, "im: group %s: %s by %s (%zu users), seq %" PRIu64 ".", r->group, im_name__group_op(op), j->user, n, seq);

	gr.has_status = 1;
	gr.status = IM__V1__STATUS__OK;
	gr.op = (char *)r->op;
	gr.group = (char *)r->group;
	gr.has_seq = 1;
	gr.seq = seq;
	gr.has_head_seq = 1;
	gr.head_seq = tl->head;
	gr.has_store_id = 1;
	gr.store_id = w->st.store_id;
	im_work__reply(w, j, &gr.base, false);
	return MOSQ_ERR_SUCCESS;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int do_info(struct im__worker *w, const struct im__job *j, struct im__group *g)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;
	char tl_name[IM_TL_MAX + 1];
	struct im__tl *tl;
	char **names = im_calloc(g->members.count ? g->members.count : 1, sizeof(char *));
	size_t i, n = 0;
	bool err;

	if(names == NULL){
		reply_status(w, j, IM__V1__STATUS__INTERNAL, "out of memory");
		return MOSQ_ERR_SUCCESS;
	}
	for(i = 0; i < g->members.cap; i++){
		if(g->members.slots[i].key) names[n++] = g->members.slots[i].key;
	}
	qsort(names, n, sizeof(char *), cmp_str);
	snprintf(tl_name, sizeof(tl_name), "g/%s", j->u.group.group);
	tl = w->st.ops->timeline(&w->st, tl_name, strlen(tl_name), false, &err);
	if(err){
		free(names);
		return IM_WORK_RETRY;
	}
	gr.has_status = 1;
	gr.status = IM__V1__STATUS__OK;
	gr.op = (char *)j->u.group.op;
	gr.group = (char *)j->u.group.group;
	gr.owner = g->owner;
	gr.members = names;
	gr.n_members = n;
	gr.has_head_seq = 1;
	gr.head_seq = tl ? tl->head : 0;
	gr.has_store_id = 1;
	gr.store_id = w->st.store_id;
	im_work__reply(w, j, &gr.base, false);
	free(names);
	return MOSQ_ERR_SUCCESS;
}

struct list_ctx {
	struct im__worker *w;
	const struct im__job *j;
	Im__V1__GroupInfo *infos;
	Im__V1__GroupInfo **ptrs;
	char (*names)[IM_NAME_MAX + 1];
	size_t n, cap;
	bool failed;            /* a store failure inside the walk */
};

static enum im_row list_one(void *vctx, const char *group)
{
	struct list_ctx *c = vctx;
	char tl_name[IM_TL_MAX + 1];
	struct im__tl *tl;
	Im__V1__GroupInfo *gi;
	uint64_t cursor = 0;
	bool err;

	if(c->n == c->cap) return IM_ROW_STOP; /* bounded reply: the rest is cut off */
	snprintf(tl_name, sizeof(tl_name), "g/%s", group);
	tl = c->w->st.ops->timeline(&c->w->st, tl_name, strlen(tl_name), false, &err);
	if(err || c->w->st.ops->cursor_get(&c->w->st, tl, c->j->user, c->j->to.client_id ? c->j->to.client_id : "",
				&cursor) != MOSQ_ERR_SUCCESS){
		c->failed = true;
		return IM_ROW_STOP;
	}
	gi = &c->infos[c->n];
	im__v1__group_info__init(gi);
	snprintf(c->names[c->n], IM_NAME_MAX + 1, "%s", group);
	gi->name = c->names[c->n];
	gi->has_head_seq = gi->has_cursor = gi->has_unread = 1;
	gi->head_seq = tl ? tl->head : 0;
	gi->cursor = cursor;
	gi->unread = gi->head_seq > cursor ? gi->head_seq - cursor : 0;
	c->ptrs[c->n] = gi;
	c->n++;
	return IM_ROW_NEXT;
}

static int do_list(struct im__worker *w, const struct im__job *j)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;
	struct list_ctx c = {0};
	int rc;

	c.w = w;
	c.j = j;
	c.cap = MAX_LIST;
	c.infos = im_calloc(c.cap, sizeof(*c.infos));
	c.ptrs = im_calloc(c.cap, sizeof(*c.ptrs));
	c.names = im_calloc(c.cap, sizeof(*c.names));
	rc = (c.infos && c.ptrs && c.names) ? w->st.ops->groups_of(&w->st, j->user, list_one, &c) : MOSQ_ERR_NOMEM;
	if(rc == MOSQ_ERR_UNKNOWN || c.failed){
		rc = IM_WORK_RETRY;
	}else if(rc != MOSQ_ERR_SUCCESS){
		reply_status(w, j, IM__V1__STATUS__INTERNAL, "out of memory");
		rc = MOSQ_ERR_SUCCESS;
	}else{
		gr.has_status = 1;
		gr.status = IM__V1__STATUS__OK;
		gr.op = (char *)j->u.group.op;
		gr.groups = c.ptrs;
		gr.n_groups = c.n;
		gr.has_store_id = 1;
		gr.store_id = w->st.store_id;
		im_work__reply(w, j, &gr.base, false);
	}
	free(c.infos);
	free(c.ptrs);
	free(c.names);
	return rc;
}

/* The membership limits of a create (g NULL: the requester owns one more
 * group, and is in it) or an add to g: *st OK if nobody passes one, else
 * the refusal, with why. IM_WORK_RETRY on a store failure. */
static int limits(struct im__worker *w, const struct im__job *j, const struct im__group *g, Im__V1__Status *st,
		char *why, size_t cap)
{
	const struct im__group_req *r = &j->u.group;
	uint32_t made = w->cfg.max_groups_created, most = w->cfg.max_groups_per_user, owned, *counts = NULL;
	const char **who = NULL, *actor = j->user;
	size_t i, k = 0;
	int rc;

	*st = IM__V1__STATUS__OK;
	if(g == NULL && made){
		if(w->st.ops->group_counts(&w->st, &actor, 1, true, made, &owned) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
		if(owned >= made){
			*st = IM__V1__STATUS__FORBIDDEN;
			snprintf(why, cap, "%s has created %u groups, the most one user may (plugin_opt_max_groups_created); nothing changed",
					actor, made);
			return MOSQ_ERR_SUCCESS;
		}
	}
	if(most == 0) return MOSQ_ERR_SUCCESS;
	who = im_calloc(r->n + 1, sizeof(*who));
	counts = im_calloc(r->n + 1, sizeof(*counts));
	if(who == NULL || counts == NULL){
		rc = MOSQ_ERR_NOMEM;
	}else{
		if(g == NULL) who[k++] = actor;
		for(i = 0; i < r->n; i++){
			if(g == NULL || !im_map__get(&g->members, r->members[i], strlen(r->members[i]))) who[k++] = r->members[i];
		}
		rc = w->st.ops->group_counts(&w->st, who, k, false, most, counts);
	}
	for(i = 0; rc == MOSQ_ERR_SUCCESS && i < k && counts[i] < most; i++);
	if(rc == MOSQ_ERR_NOMEM){
		*st = IM__V1__STATUS__INTERNAL;
		snprintf(why, cap, "out of memory; nothing changed");
		rc = MOSQ_ERR_SUCCESS;
	}else if(rc == MOSQ_ERR_SUCCESS && i < k){
		*st = IM__V1__STATUS__FORBIDDEN;
		snprintf(why, cap, "%s is in %u groups, the most one user may belong to (plugin_opt_max_groups_per_user); nothing changed",
				who[i], most);
	}
	free(who);
	free(counts);
	return rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_SUCCESS : IM_WORK_RETRY;
}

/* A create (g NULL) or an add to g, within the membership limits. */
static int grow(struct im__worker *w, const struct im__job *j, const struct im__group *g, char *const *users,
		char *const *news, size_t n_news)
{
	char why[IM_NAME_MAX + 160];
	Im__V1__Status st;
	int rc = limits(w, j, g, &st, why, sizeof(why));

	if(rc != MOSQ_ERR_SUCCESS) return rc; /* a store failure: the batch is tried again */
	if(st != IM__V1__STATUS__OK){
		reply_status(w, j, st, why);
		return MOSQ_ERR_SUCCESS;
	}
	if(g == NULL) return apply(w, j, IM_GROUP_CREATE, j->user, users, j->u.group.n, NULL, 0);
	return apply(w, j, IM_GROUP_ADD, g->owner, users, j->u.group.n, news, n_news);
}

/* Of users, those who are (member true) or are not members of g: whose
 * membership an add or a remove changes. Into out (room for n). */
static size_t changed(const struct im__group *g, char *const *users, size_t n, bool member, char **out)
{
	size_t i, k = 0;

	for(i = 0; i < n; i++){
		if((im_map__get(&g->members, users[i], strlen(users[i])) != NULL) == member) out[k++] = users[i];
	}
	return k;
}

static bool is_admin(const struct im__worker *w, const char *user)
{
	char *const *a;

	for(a = w->cfg.admins; a && *a; a++){
		if(!strcmp(*a, user)) return true;
	}
	return false;
}

int im_work__group(struct im__worker *w, struct im__job *j)
{
	const struct im__group_req *r = &j->u.group;
	char **users = NULL, **news = NULL;
	struct im__group *g;
	bool admin, owner, err;
	size_t i;
	int rc;

	if(!strcmp(r->op, "list")) return do_list(w, j);
	g = w->st.ops->group(&w->st, r->group, strlen(r->group), &err);
	if(err) return IM_WORK_RETRY;
	admin = is_admin(w, j->user);
	owner = g && !strcmp(g->owner, j->user);
	if(r->n){
		users = im_calloc(r->n, sizeof(char *));
		news = im_calloc(r->n, sizeof(char *));
		if(users == NULL || news == NULL){
			free(users);
			free(news);
			reply_status(w, j, IM__V1__STATUS__INTERNAL, "out of memory");
			return MOSQ_ERR_SUCCESS;
		}
		for(i = 0; i < r->n; i++) users[i] = r->members[i];
	}
	rc = MOSQ_ERR_SUCCESS;
	if(!strcmp(r->op, "create")){
		if(g) reply_status(w, j, IM__V1__STATUS__CONFLICT, "group already exists");
		else if(r->n + 1 > w->cfg.max_group_members) reply_status(w, j, IM__V1__STATUS__TOO_LARGE, "more members than plugin_opt_max_group_members");
		else rc = grow(w, j, NULL, users, NULL, 0);
	}else if(g == NULL){
		reply_status(w, j, IM__V1__STATUS__NOT_FOUND, "no such group");
	}else if(!strcmp(r->op, "info")){
		if(!admin && !im_map__get(&g->members, j->user, strlen(j->user))) reply_status(w, j, IM__V1__STATUS__FORBIDDEN, "not a member");
		else rc = do_info(w, j, g);
	}else if(!strcmp(r->op, "leave")){
		if(!im_map__get(&g->members, j->user, strlen(j->user))) reply_status(w, j, IM__V1__STATUS__NOT_FOUND, "not a member");
		else if(owner) reply_status(w, j, IM__V1__STATUS__CONFLICT, "the owner cannot leave the group");
		else rc = apply(w, j, IM_GROUP_LEAVE, g->owner, NULL, 0, NULL, 0);
	}else if(!owner && !admin){
		reply_status(w, j, IM__V1__STATUS__FORBIDDEN, "only the owner or an admin may change members");
	}else if(!strcmp(r->op, "remove")){
		for(i = 0; i < r->n && strcmp(r->members[i], g->owner); i++);
		if(i < r->n) reply_status(w, j, IM__V1__STATUS__BAD_REQUEST, "the owner cannot be removed");
		else rc = apply(w, j, IM_GROUP_REMOVE, g->owner, users, r->n, news, changed(g, users, r->n, true, news));
	}else{ /* add */
		if(g->members.count + r->n > w->cfg.max_group_members){
			reply_status(w, j, IM__V1__STATUS__TOO_LARGE, "more members than plugin_opt_max_group_members");
		}else{
			rc = grow(w, j, g, users, news, changed(g, users, r->n, false, news));
		}
	}
	free(users);
	free(news);
	return rc;
}
