/*
 * $CONTROL/im/v1/group: create / add / remove / leave / list / info.
 *
 * Every membership change is written, in the same transaction, as a
 * system message (Header.flags FLAG_SYSTEM, JSON body) in the group's
 * timeline, so each member's history says who joined and left, in order.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "im.h"

#define MAX_REQ_MEMBERS 1000

struct greq {
	char *op, *group;            /* owned (from properties) or borrowed */
	char **members;
	size_t n_members;
	Im__V1__GroupRequest *pb;    /* when from a protobuf payload */
	char *props_members;         /* owned comma list from properties */
	char *mem_store[MAX_REQ_MEMBERS + 1];
	bool owned;
};

static void greq_free(struct im__plugin *p, struct greq *r)
{
	if(r->pb) im__v1__group_request__free_unpacked(r->pb, &p->pb_alloc);
	if(r->owned){
		im_props__free(r->op);
		im_props__free(r->group);
	}
	im_props__free(r->props_members);
}

/* From v5 user properties: op, group, members ("bob,carol"). */
static void greq_from_props(const mosquitto_property *props, struct greq *r)
{
	const mosquitto_property *it = props;
	char *k = NULL, *v = NULL, *save = NULL, *tok;
	bool skip = false;

	r->owned = true;
	while((it = im_props__user(it, &k, &v, skip)) != NULL){
		skip = true;
		if(!strcmp(k, "op") && !r->op){ r->op = v; v = NULL; }
		else if(!strcmp(k, "group") && !r->group){ r->group = v; v = NULL; }
		else if(!strcmp(k, "members") && !r->props_members){ r->props_members = v; v = NULL; }
		im_props__free(k);
		im_props__free(v);
	}
	if(r->props_members){
		/* One past the limit is kept, so check_members refuses the
		 * request instead of silently cutting the list. */
		for(tok = strtok_r(r->props_members, ",", &save); tok && r->n_members <= MAX_REQ_MEMBERS;
				tok = strtok_r(NULL, ",", &save)){
			r->mem_store[r->n_members++] = tok;
		}
	}
	r->members = r->mem_store;
}

static bool is_op(const char *op)
{
	static const char *const ops[] = {"create", "add", "remove", "leave", "list", "info", NULL};
	int i;

	for(i = 0; ops[i]; i++){
		if(!strcmp(op, ops[i])) return true;
	}
	return false;
}

static void reply(struct im__plugin *p, struct mosquitto_evt_control *ed, Im__V1__GroupResponse *gr)
{
	im_control__reply_msg(p, ed->client, "group", ed->properties, &gr->base);
}

static void reply_status(struct im__plugin *p, struct mosquitto_evt_control *ed, const struct greq *r,
		Im__V1__Status st, const char *why)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;

	gr.has_status = 1;
	gr.status = st;
	gr.reason = (char *)why;
	gr.op = (r->op && is_op(r->op)) ? r->op : NULL; /* never echo bytes a decoder would refuse */
	gr.group = (r->group && im_route__name_valid(r->group, strlen(r->group))) ? r->group : NULL;
	reply(p, ed, &gr);
}

/* Writes the system message body: {"event":"add","by":"alice","users":[...]}.
 * Names are valid names (no control characters); quotes and backslashes
 * are escaped. Returns length, or 0 if it does not fit. */
static size_t sys_body(char *out, size_t cap, const char *event, const char *by, char *const *users, size_t n)
{
	size_t len = 0, i;
	const char *s;

#define PUT(c) do { if(len + 1 >= cap) return 0; out[len++] = (c); } while(0)
#define PUTS(str) for(s = (str); *s; s++){ if(*s == '"' || *s == '\\') PUT('\\'); PUT(*s); }
	for(s = "{\"event\":\""; *s; s++) PUT(*s);
	PUTS(event);
	for(s = "\",\"by\":\""; *s; s++) PUT(*s);
	PUTS(by);
	for(s = "\",\"users\":["; *s; s++) PUT(*s);
	for(i = 0; i < n; i++){
		if(i) PUT(',');
		PUT('"');
		PUTS(users[i]);
		PUT('"');
	}
	PUT(']');
	PUT('}');
	out[len] = '\0';
	return len;
#undef PUT
#undef PUTS
}

static int apply(struct im__plugin *p, struct mosquitto_evt_control *ed, const struct greq *r,
		enum im_group_op op, const char *user, char *const *users, size_t n)
{
	static const char *const events[] = {"create", "add", "remove", "leave"};
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;
	char tl_name[IM_TL_MAX + 1], topic[IM_TL_MAX + 70];
	size_t body_cap = 256 + n * (IM_NAME_MAX * 2 + 3), body_len;
	char *body = mosquitto_malloc(body_cap);
	struct im__tl *tl;
	struct im__msg m;
	uint64_t seq;

	snprintf(tl_name, sizeof(tl_name), "g/%s", r->group);
	snprintf(topic, sizeof(topic), "%s/%s", p->cfg.prefix, tl_name);
	tl = im_store__timeline(&p->store, tl_name, strlen(tl_name), true);
	body_len = body ? sys_body(body, body_cap, events[op], user, users, n) : 0;
	if(tl == NULL || body_len == 0){
		mosquitto_free(body);
		reply_status(p, ed, r, IM__V1__STATUS__INTERNAL, "store failure");
		return MOSQ_ERR_SUCCESS;
	}
	im_message__system(&m, user, tl_name, body, body_len);
	if(im_store__group_change(&p->store, op, r->group, user, users, n, tl, &m, &seq) != MOSQ_ERR_SUCCESS){
		mosquitto_free(body);
		reply_status(p, ed, r, IM__V1__STATUS__INTERNAL, "store failure; nothing changed");
		return MOSQ_ERR_SUCCESS;
	}
	m.seq = seq;
	p->metrics.group_changes++;
	im_message__deliver(p, topic, tl_name, &m);
	mosquitto_free(body);
	mosquitto_log_printf(MOSQ_LOG_INFO, "im: group %s: %s by %s (%zu users), seq %" PRIu64 ".",
			r->group, events[op], user, n, seq);

	gr.has_status = 1;
	gr.status = IM__V1__STATUS__OK;
	gr.op = r->op;
	gr.group = r->group;
	gr.has_seq = 1;
	gr.seq = seq;
	gr.has_head_seq = 1;
	gr.head_seq = tl->head;
	reply(p, ed, &gr);
	return MOSQ_ERR_SUCCESS;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void do_info(struct im__plugin *p, struct mosquitto_evt_control *ed, const struct greq *r,
		struct im__group *g)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;
	char tl_name[IM_TL_MAX + 1];
	struct im__tl *tl;
	char **names = mosquitto_calloc(g->members.count ? g->members.count : 1, sizeof(char *));
	size_t i, n = 0;

	if(names == NULL) return;
	for(i = 0; i < g->members.cap; i++){
		if(g->members.slots[i].key) names[n++] = g->members.slots[i].key;
	}
	qsort(names, n, sizeof(char *), cmp_str);
	snprintf(tl_name, sizeof(tl_name), "g/%s", r->group);
	tl = im_store__timeline(&p->store, tl_name, strlen(tl_name), true);
	gr.has_status = 1;
	gr.status = IM__V1__STATUS__OK;
	gr.op = r->op;
	gr.group = r->group;
	gr.owner = g->owner;
	gr.members = names;
	gr.n_members = n;
	gr.has_head_seq = 1;
	gr.head_seq = tl ? tl->head : 0;
	reply(p, ed, &gr);
	mosquitto_free(names);
}

struct list_ctx {
	struct im__plugin *p;
	struct mosquitto *client;
	Im__V1__GroupInfo *infos;
	Im__V1__GroupInfo **ptrs;
	char (*names)[IM_NAME_MAX + 1];
	size_t n, cap;
};

static int list_one(void *vctx, const char *group)
{
	struct list_ctx *c = vctx;
	char tl_name[IM_TL_MAX + 1];
	struct im__tl *tl;
	Im__V1__GroupInfo *gi;
	uint64_t cursor = 0;

	if(c->n == c->cap) return 1; /* bounded reply: the rest is cut off */
	snprintf(tl_name, sizeof(tl_name), "g/%s", group);
	tl = im_store__timeline(&c->p->store, tl_name, strlen(tl_name), true);
	if(tl) im_store__cursor_get(&c->p->store, tl, mosquitto_client_username(c->client),
			mosquitto_client_id(c->client), &cursor);
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
	return 0;
}

static void do_list(struct im__plugin *p, struct mosquitto_evt_control *ed, const struct greq *r, const char *user)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;
	struct list_ctx c = {0};
	int rc;

	c.p = p;
	c.client = ed->client;
	c.cap = 1000;
	c.infos = mosquitto_calloc(c.cap, sizeof(*c.infos));
	c.ptrs = mosquitto_calloc(c.cap, sizeof(*c.ptrs));
	c.names = mosquitto_calloc(c.cap, sizeof(*c.names));
	if(c.infos == NULL || c.ptrs == NULL || c.names == NULL){
		rc = MOSQ_ERR_NOMEM;
	}else{
		rc = im_store__groups_of(&p->store, user, list_one, &c);
	}
	if(rc > 1){
		reply_status(p, ed, r, IM__V1__STATUS__INTERNAL, "store failure");
	}else{
		gr.has_status = 1;
		gr.status = IM__V1__STATUS__OK;
		gr.op = r->op;
		gr.groups = c.ptrs;
		gr.n_groups = c.n;
		reply(p, ed, &gr);
	}
	mosquitto_free(c.infos);
	mosquitto_free(c.ptrs);
	mosquitto_free(c.names);
}

/* Checks the members list of create/add/remove. NULL if fine. */
static const char *check_members(const struct greq *r, bool need_one)
{
	size_t i;

	if(need_one && r->n_members == 0) return "members: at least one user";
	if(r->n_members > MAX_REQ_MEMBERS) return "members: at most 1000 per request";
	for(i = 0; i < r->n_members; i++){
		if(!im_route__name_valid(r->members[i], strlen(r->members[i]))) return "members: invalid user name";
	}
	return NULL;
}

static void dispatch(struct im__plugin *p, struct mosquitto_evt_control *ed, struct greq *r, const char *user)
{
	struct im__group *g = NULL;
	bool admin, owner;
	const char *why;
	size_t i;

	if(user == NULL) return reply_status(p, ed, r, IM__V1__STATUS__UNAUTHENTICATED, "requests need a username");
	if(!im_route__name_valid(user, strlen(user))){
		return reply_status(p, ed, r, IM__V1__STATUS__FORBIDDEN, "the username is not a valid IM name");
	}
	if(r->op == NULL) return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, "missing op");
	if(!strcmp(r->op, "list")) return do_list(p, ed, r, user);
	if(r->group == NULL || r->group[0] == '\0') return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, "missing group");
	if(!im_route__name_valid(r->group, strlen(r->group))){
		return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, "invalid group name");
	}
	g = im_store__group(&p->store, r->group, strlen(r->group));
	admin = im_acl__is_admin(p, user);
	owner = g && !strcmp(g->owner, user);

	if(!strcmp(r->op, "create")){
		if(g) return reply_status(p, ed, r, IM__V1__STATUS__CONFLICT, "group already exists");
		if((why = check_members(r, false))) return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, why);
		if(r->n_members + 1 > p->cfg.max_group_members){
			return reply_status(p, ed, r, IM__V1__STATUS__TOO_LARGE, "more members than plugin_opt_max_group_members");
		}
		apply(p, ed, r, IM_GROUP_CREATE, user, r->members, r->n_members);
		return;
	}
	if(strcmp(r->op, "add") && strcmp(r->op, "remove") && strcmp(r->op, "leave") && strcmp(r->op, "info")){
		return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, "unknown group op (create, add, remove, leave, list, info)");
	}
	if(g == NULL) return reply_status(p, ed, r, IM__V1__STATUS__NOT_FOUND, "no such group");
	if(!strcmp(r->op, "info")){
		if(!admin && !im_map__get(&g->members, user, strlen(user))){
			return reply_status(p, ed, r, IM__V1__STATUS__FORBIDDEN, "not a member");
		}
		return do_info(p, ed, r, g);
	}
	if(!strcmp(r->op, "leave")){
		if(!im_map__get(&g->members, user, strlen(user))) return reply_status(p, ed, r, IM__V1__STATUS__NOT_FOUND, "not a member");
		if(owner) return reply_status(p, ed, r, IM__V1__STATUS__CONFLICT, "the owner cannot leave the group");
		apply(p, ed, r, IM_GROUP_LEAVE, user, NULL, 0);
		return;
	}
	if(!owner && !admin) return reply_status(p, ed, r, IM__V1__STATUS__FORBIDDEN, "only the owner or an admin may change members");
	if((why = check_members(r, true))) return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, why);
	if(!strcmp(r->op, "remove")){
		for(i = 0; i < r->n_members; i++){
			if(!strcmp(r->members[i], g->owner)) return reply_status(p, ed, r, IM__V1__STATUS__BAD_REQUEST, "the owner cannot be removed");
		}
		apply(p, ed, r, IM_GROUP_REMOVE, user, r->members, r->n_members);
		return;
	}
	if(g->members.count + r->n_members > p->cfg.max_group_members){
		return reply_status(p, ed, r, IM__V1__STATUS__TOO_LARGE, "more members than plugin_opt_max_group_members");
	}
	apply(p, ed, r, IM_GROUP_ADD, user, r->members, r->n_members);
}

int im_control__group_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	struct greq r;

	(void)event;
	p->disconnecting = NULL;
	memset(&r, 0, sizeof(r));
	if(ed->payloadlen){
		r.pb = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__group_request__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(r.pb == NULL){
			reply_status(p, ed, &r, IM__V1__STATUS__BAD_REQUEST, "malformed GroupRequest");
			return MOSQ_ERR_SUCCESS;
		}
		r.op = r.pb->op;
		r.group = r.pb->group;
		r.members = r.pb->members;
		r.n_members = r.pb->n_members;
	}else{
		greq_from_props(ed->properties, &r);
	}
	dispatch(p, ed, &r, mosquitto_client_username(ed->client));
	greq_free(p, &r);
	return MOSQ_ERR_SUCCESS;
}
