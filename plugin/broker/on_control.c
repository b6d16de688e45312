/*
 * MOSQ_EVT_CONTROL: sync and ack requests on $CONTROL/im/v1/<op>. The
 * broker thread parses and checks a request and queues it for the store
 * worker; the worker answers it. Every request gets a response; a bad one
 * gets a status and a reason and changes nothing.
 *
 * The answer travels through the same FIFO as live frames, queued after
 * every frame of a message stored before the request: a frame sequenced
 * after a sync batch was read reaches the client after that batch.
 *
 * One client must not pin the broker: a 20-byte request can cost a
 * 256 KiB reply, and a client that never acknowledges its replies makes
 * the broker hold them. Every request here is bounded as clients.c says
 * (sync also by sync_rate and sync_inflight); beyond a bound the answer
 * is TOO_MANY (a sync's with retry_after_ms).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "base/config.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/on_control.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/props.h"
#include "broker/reply.h"
#include "cluster/cluster.h"
#include "codec/route.h"
#include "worker/job.h"
#include "worker/worker.h"

static const char *const known_ops[] = {"sync", "ack", "group", "typing", "reads", "conversations", NULL};

bool im_control__op_known(const char *op)
{
	int i;

	for(i = 0; known_ops[i]; i++){
		if(!strcmp(op, known_ops[i])) return true;
	}
	return false;
}

/* A request's timeline, echoed in a reply only if it is a valid one: a
 * reply must never carry what a strict decoder refuses (invalid UTF-8). */
static char *echo_timeline(const char *tl)
{
	struct im__route r;

	return (tl && im_route__parse_timeline(tl, &r) == MOSQ_ERR_SUCCESS) ? (char *)tl : NULL;
}

/* ---- request parameters: protobuf payload, or v5 user properties ---- */

struct params {
	char *timeline;      /* owned when from properties */
	bool has_seq;
	uint64_t seq;        /* after_seq (sync) or seq (ack) */
	uint32_t limit;
	bool bad;            /* a property did not parse */
};

static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if(s[0] < '0' || s[0] > '9') return false;
	*out = strtoull(s, &end, 10);
	return *end == '\0';
}

static void params_from_props(const mosquitto_property *props, const char *seq_key, struct params *pa)
{
	const mosquitto_property *it = props;
	char *k = NULL, *v = NULL;
	uint64_t n;
	bool skip = false;

	while((it = im_props__user(it, &k, &v, skip)) != NULL){
		skip = true;
		if(!strcmp(k, "timeline") && pa->timeline == NULL){
			pa->timeline = v;
			v = NULL;
		}else if(!strcmp(k, seq_key)){
			pa->has_seq = parse_u64(v, &pa->seq);
			pa->bad |= !pa->has_seq;
		}else if(!strcmp(k, "limit")){
			if(parse_u64(v, &n) && n <= UINT32_MAX) pa->limit = (uint32_t)n;
			else pa->bad = true;
		}
		im_props__free(k);
		im_props__free(v);
	}
}

/* Checks the timeline named by a request and that user may use it (the
 * broker thread's view; the worker checks again). */
static Im__V1__Status authorise(struct im__plugin *p, const char *tl, struct mosquitto *client,
		const char **user, const char **why)
{
	struct im__route r;

	if((*user = im_policy__user(client, why)) == NULL){
		return mosquitto_client_username(client) ? IM__V1__STATUS__FORBIDDEN : IM__V1__STATUS__UNAUTHENTICATED;
	}
	if(tl == NULL || tl[0] == '\0'){
		*why = "missing timeline";
		return IM__V1__STATUS__BAD_REQUEST;
	}
	if(im_route__parse_timeline(tl, &r) != MOSQ_ERR_SUCCESS){
		*why = "invalid timeline (expected u/<user> or g/<group>)";
		return IM__V1__STATUS__BAD_REQUEST;
	}
	if(!im_policy__may_read(p, &r, *user)){
		*why = r.kind == 'u' ? "not your timeline" : "not a member of the group";
		return IM__V1__STATUS__FORBIDDEN;
	}
	return IM__V1__STATUS__OK;
}

/* ---- sync ---- */

static void sync_error(struct im__plugin *p, struct mosquitto_evt_control *ed, const char *tl, Im__V1__Status st,
		const char *why, uint32_t retry_ms, const struct params *pa)
{
	Im__V1__SyncBatch sb = IM__V1__SYNC_BATCH__INIT;

	sb.has_status = 1;
	sb.status = st;
	sb.reason = (char *)why;
	sb.timeline = echo_timeline(tl);
	/* Echoed, so a client without Correlation Data knows which of its
	 * requests this answers. */
	if(pa && pa->has_seq && !pa->bad){
		sb.has_after_seq = 1;
		sb.after_seq = pa->seq;
	}
	if(retry_ms){
		sb.has_retry_after_ms = 1;
		sb.retry_after_ms = retry_ms;
	}
	sb.has_store_id = 1;
	sb.store_id = p->store_id;
	im_reply__msg(p, ed->client, "sync", ed->properties, &sb.base);
}

int im_control__sync_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	struct params pa = {0};
	Im__V1__SyncRequest *req = NULL;
	struct im__job *j;
	const char *tl = NULL, *why = NULL, *user = NULL;
	struct im__refusal no = {0};
	Im__V1__Status st;

	(void)event;
	p->disconnecting = NULL;
	p->metrics.sync_requests++;
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__sync_request__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			sync_error(p, ed, NULL, IM__V1__STATUS__BAD_REQUEST, "malformed SyncRequest", 0, NULL);
			return MOSQ_ERR_SUCCESS;
		}
		tl = req->timeline;
		pa.has_seq = req->has_after_seq;
		pa.seq = req->after_seq;
		pa.limit = req->has_limit ? req->limit : 0;
	}else{
		params_from_props(ed->properties, "after", &pa);
		tl = pa.timeline;
	}
	if(!im_clients__admit(p, ed->client, IM_JOB_SYNC, &no)){
		p->metrics.sync_limited++;
		st = IM__V1__STATUS__TOO_MANY;
		why = no.why;
	}else if(pa.bad){
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "user properties after/limit must be non-negative integers";
	}else if(pa.has_seq && pa.seq > (uint64_t)INT64_MAX){
		/* SQLite integers are signed: a larger after_seq would wrap and
		 * return the whole timeline. No seq can be that large. */
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "after_seq out of range";
	}else{
		st = authorise(p, tl, ed->client, &user, &why);
	}
	if(st == IM__V1__STATUS__OK && (j = im_reply__job(ed->client, IM_JOB_SYNC, 0, "sync", ed->properties)) == NULL){
		st = IM__V1__STATUS__INTERNAL;
		why = "out of memory";
	}
	if(st != IM__V1__STATUS__OK){
		sync_error(p, ed, tl, st, why, no.retry_ms, &pa);
	}else{
		snprintf(j->user, sizeof(j->user), "%s", user);
		snprintf(j->u.sync.timeline, sizeof(j->u.sync.timeline), "%s", tl);
		j->u.sync.has_after = pa.has_seq;
		j->u.sync.after = pa.seq;
		j->u.sync.limit = pa.limit;
		j->u.sync.behind_writer = im_cluster__anchoring(p->cluster, tl);
		im_clients__submit(p, j);
	}
	if(req) im__v1__sync_request__free_unpacked(req, &p->pb_alloc);
	im_props__free(pa.timeline);
	im_tick__settle(p);
	return MOSQ_ERR_SUCCESS;
}

/* ---- ack (msg-fin) ---- */

static void ack_error(struct im__plugin *p, struct mosquitto_evt_control *ed, const char *tl, Im__V1__Status st,
		const char *why)
{
	Im__V1__AckResponse r = IM__V1__ACK_RESPONSE__INIT;

	r.has_status = 1;
	r.status = st;
	r.reason = (char *)why;
	r.timeline = echo_timeline(tl);
	r.has_store_id = 1;
	r.store_id = p->store_id;
	im_reply__msg(p, ed->client, "ack", ed->properties, &r.base);
}

int im_control__ack_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	struct params pa = {0};
	Im__V1__Ack *req = NULL;
	struct im__job *j = NULL;
	const char *name, *why = NULL, *user = NULL;
	struct im__refusal no;
	Im__V1__Status st;

	(void)event;
	p->disconnecting = NULL;
	p->metrics.acks_requested++;
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__ack__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			ack_error(p, ed, NULL, IM__V1__STATUS__BAD_REQUEST, "malformed Ack");
			return MOSQ_ERR_SUCCESS;
		}
		name = req->timeline;
		pa.has_seq = req->has_seq;
		pa.seq = req->seq;
	}else{
		params_from_props(ed->properties, "seq", &pa);
		name = pa.timeline;
	}
	st = authorise(p, name, ed->client, &user, &why);
	if(st == IM__V1__STATUS__OK && (pa.bad || !pa.has_seq || pa.seq > (uint64_t)INT64_MAX)){
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "missing or invalid seq";
	}
	if(st == IM__V1__STATUS__OK && !im_clients__admit(p, ed->client, IM_JOB_ACK, &no)){
		st = IM__V1__STATUS__TOO_MANY;
		why = no.why;
	}
	if(st == IM__V1__STATUS__OK && (j = im_reply__job(ed->client, IM_JOB_ACK, 0, "ack", ed->properties)) == NULL){
		st = IM__V1__STATUS__INTERNAL;
		why = "out of memory";
	}
	if(st != IM__V1__STATUS__OK){
		ack_error(p, ed, name, st, why);
	}else{
		snprintf(j->user, sizeof(j->user), "%s", user);
		snprintf(j->u.ack.timeline, sizeof(j->u.ack.timeline), "%s", name);
		j->u.ack.seq = pa.seq;
		im_clients__submit(p, j);
	}
	if(req) im__v1__ack__free_unpacked(req, &p->pb_alloc);
	im_props__free(pa.timeline);
	im_tick__settle(p);
	return MOSQ_ERR_SUCCESS;
}

/* ---- an unknown op ---- */

void im_control__unknown_op(struct im__plugin *p, struct mosquitto *client, const char *op)
{
	struct im__refusal no;
	struct im__job *j;
	const char *user, *ignored;

	if(!im_clients__admit(p, client, IM_JOB_STATUS, &no)){
		im_reply__status(p, client, op, NULL, IM__V1__STATUS__TOO_MANY, no.why);
		return;
	}
	if((j = im_job__new(IM_JOB_STATUS, 0, mosquitto_client_id(client), op, NULL, NULL, 0)) == NULL){
		im_reply__status(p, client, op, NULL, IM__V1__STATUS__NOT_FOUND, "unknown op");
		return;
	}
	if((user = im_policy__user(client, &ignored)) != NULL) snprintf(j->user, sizeof(j->user), "%s", user);
	j->u.status.status = IM__V1__STATUS__NOT_FOUND;
	snprintf(j->u.status.reason, sizeof(j->u.status.reason), "unknown op");
	im_clients__submit(p, j);
	im_tick__settle(p);
}
