/*
 * $CONTROL/im/v1/group: create / add / remove / leave / list / info.
 *
 * The broker thread checks the request's shape (op, names, member list)
 * and queues it, bounded per client and per user like every request
 * (clients.c); the store worker authorises it against the stored groups
 * and the membership limits, and applies it (worker/group.c). A bad
 * request is answered here and never reaches the worker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "base/defs.h"
#include "broker/clients.h"
#include "broker/on_group.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/props.h"
#include "broker/reply.h"
#include "codec/route.h"
#include "worker/job.h"
#include "worker/worker.h"

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

static void reply_status(struct im__plugin *p, struct mosquitto_evt_control *ed, const struct greq *r,
		Im__V1__Status st, const char *why)
{
	Im__V1__GroupResponse gr = IM__V1__GROUP_RESPONSE__INIT;

	gr.has_status = 1;
	gr.status = st;
	gr.reason = (char *)why;
	gr.op = (r->op && is_op(r->op)) ? r->op : NULL; /* never echo bytes a decoder would refuse */
	gr.group = (r->group && im_name__valid(r->group, strlen(r->group))) ? r->group : NULL;
	gr.has_store_id = 1;
	gr.store_id = p->store_id;
	im_reply__msg(p, ed->client, "group", ed->properties, &gr.base);
}

/* Checks the members list of create/add/remove. NULL if fine. */
static const char *check_members(const struct greq *r, bool need_one)
{
	size_t i;

	if(need_one && r->n_members == 0) return "members: at least one user";
	if(r->n_members > MAX_REQ_MEMBERS) return "members: at most 1000 per request";
	for(i = 0; i < r->n_members; i++){
		if(!im_name__valid(r->members[i], strlen(r->members[i]))) return "members: invalid user name";
	}
	return NULL;
}

/* NULL if the request is well-formed, else why not. */
static const char *check(const struct greq *r)
{
	if(r->op == NULL) return "missing op";
	if(!is_op(r->op)) return "unknown group op (create, add, remove, leave, list, info)";
	if(!strcmp(r->op, "list")) return NULL;
	if(r->group == NULL || r->group[0] == '\0') return "missing group";
	if(!im_name__valid(r->group, strlen(r->group))) return "invalid group name";
	if(!strcmp(r->op, "create")) return check_members(r, false);
	if(!strcmp(r->op, "add") || !strcmp(r->op, "remove")) return check_members(r, true);
	return NULL;
}

static void queue(struct im__plugin *p, struct mosquitto_evt_control *ed, const struct greq *r, const char *user)
{
	size_t i, n = r->n_members;
	struct im__refusal no;
	struct im__job *j;

	if(!im_clients__admit(p, ed->client, IM_JOB_GROUP, &no)){
		reply_status(p, ed, r, IM__V1__STATUS__TOO_MANY, no.why);
		return;
	}
	if((j = im_reply__job(ed->client, IM_JOB_GROUP, n * (IM_NAME_MAX + 1), "group", ed->properties)) == NULL){
		reply_status(p, ed, r, IM__V1__STATUS__INTERNAL, "out of memory");
		return;
	}
	snprintf(j->user, sizeof(j->user), "%s", user);
	snprintf(j->u.group.op, sizeof(j->u.group.op), "%s", r->op);
	snprintf(j->u.group.group, sizeof(j->u.group.group), "%s", r->group ? r->group : "");
	j->u.group.members = (char (*)[IM_NAME_MAX + 1])(void *)j->data;
	for(i = 0; i < n; i++) snprintf(j->u.group.members[i], IM_NAME_MAX + 1, "%s", r->members[i]);
	j->u.group.n = n;
	im_clients__submit(p, j);
}

int im_group__request_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	const char *user, *why = NULL;
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
	if((user = im_policy__user(ed->client, &why)) == NULL){
		reply_status(p, ed, &r, mosquitto_client_username(ed->client) ? IM__V1__STATUS__FORBIDDEN
				: IM__V1__STATUS__UNAUTHENTICATED, why);
	}else if((why = check(&r)) != NULL){
		reply_status(p, ed, &r, IM__V1__STATUS__BAD_REQUEST, why);
	}else{
		queue(p, ed, &r, user);
	}
	greq_free(p, &r);
	im_tick__settle(p);
	return MOSQ_ERR_SUCCESS;
}
