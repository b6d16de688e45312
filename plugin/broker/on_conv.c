/*
 * MOSQ_EVT_CONTROL: typing, reads and conversations (issue #15).
 *
 * typing is answered here and goes out at once as an event (never stored,
 * never sequenced, only to who is online); reads and conversations are
 * queued for the store worker like sync, and bounded like it per client
 * and per user (clients.c). Each also takes its parameters
 * from MQTT v5 user properties when the payload is empty, so
 * mosquitto_pub/mosquitto_rr can drive them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "base/defs.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/on_conv.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/props.h"
#include "broker/reply.h"
#include "cluster/cluster.h"
#include "codec/frame.h"
#include "codec/route.h"
#include "worker/job.h"
#include "worker/worker.h"

/* Parameters of these requests as user properties. Owned strings. */
struct cparams {
	char *timeline, *state, *before_tl;
	int64_t before_ts;
	uint32_t limit;
	bool has_before_ts, bad;
};

static bool parse_num(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if(*s == '\0') return false;
	for(; *s; s++){
		if(*s < '0' || *s > '9' || v > (max - (uint64_t)(*s - '0')) / 10) return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return true;
}

static void cparams_read(const mosquitto_property *props, struct cparams *c)
{
	const mosquitto_property *it = props;
	char *k = NULL, *v = NULL, **slot;
	uint64_t n;
	bool skip = false;

	memset(c, 0, sizeof(*c));
	while((it = im_props__user(it, &k, &v, skip)) != NULL){
		skip = true;
		slot = !strcmp(k, "timeline") ? &c->timeline : !strcmp(k, "state") ? &c->state
			: !strcmp(k, "before_timeline") ? &c->before_tl : NULL;
		if(slot && *slot == NULL){
			*slot = v;
			v = NULL;
		}else if(!strcmp(k, "limit")){
			if(parse_num(v, UINT32_MAX, &n)) c->limit = (uint32_t)n;
			else c->bad = true;
		}else if(!strcmp(k, "before_ts_ms")){
			if(parse_num(v, INT64_MAX, &n)){
				c->before_ts = (int64_t)n;
				c->has_before_ts = true;
			}else{
				c->bad = true;
			}
		}
		im_props__free(k);
		im_props__free(v);
	}
}

static void cparams_free(struct cparams *c)
{
	im_props__free(c->timeline);
	im_props__free(c->state);
	im_props__free(c->before_tl);
}

static void answer(struct im__plugin *p, struct mosquitto_evt_control *ed, const char *op, Im__V1__Status st, const char *why)
{
	im_reply__status(p, ed->client, op, ed->properties, st, why);
}

/* ---- typing ---- */

/* typing_rate a second per user, bursts of twice that. */
static bool typing_ok(struct im__plugin *p, const char *user)
{
	struct im__user *u = im_clients__user(p, user);

	return u == NULL || p->cfg.typing_rate == 0
		|| im_bucket__take(&u->typing, p->cfg.typing_rate, 2.0 * p->cfg.typing_rate, 1.0, im_mono_ms());
}

/* The event, sealed like every frame the plugin sends, to <prefix>/e/<tl>. */
static void send_typing(struct im__plugin *p, const char *tl, const char *user, const char *conv, bool typing)
{
	Im__V1__Header h = IM__V1__HEADER__INIT;
	Im__V1__Event ev = IM__V1__EVENT__INIT;
	char topic[IM_TOPIC_MAX + 3];
	uint8_t buf[512];
	size_t n;

	ev.has_kind = 1;
	ev.kind = IM__V1__EVENT__KIND__TYPING;
	ev.user = (char *)user;
	ev.timeline = (char *)conv;
	ev.has_typing = 1;
	ev.typing = typing;
	ev.has_ts_ms = 1;
	ev.ts_ms = im_now_ms();
	h.timeline = (char *)tl;
	h.sender = (char *)user;
	h.has_ts_ms = 1;
	h.ts_ms = ev.ts_ms;
	h.has_store_id = 1;
	h.store_id = p->store_id;
	h.event = &ev;
	n = im_frame__encode_sealed(buf, sizeof(buf), &h, NULL, 0, p->frame_key);
	snprintf(topic, sizeof(topic), "%s/e/%s", p->cfg.prefix, tl);
	if(n){
		mosquitto_broker_publish_copy(NULL, topic, (int)n, buf, 0, false, NULL);
		im_cluster__event(p->cluster, tl, buf, n);
	}
}

int im_conv__typing_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	Im__V1__TypingRequest *req = NULL;
	struct cparams c;
	struct im__route r;
	const char *user, *why = NULL, *tl;
	char own[IM_TL_MAX + 1], target[IM_TL_MAX + 1];
	bool typing = true;

	(void)event;
	p->disconnecting = NULL;
	memset(&c, 0, sizeof(c));
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__typing_request__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			answer(p, ed, "typing", IM__V1__STATUS__BAD_REQUEST, "malformed TypingRequest");
			return MOSQ_ERR_SUCCESS;
		}
		tl = req->timeline;
		if(req->has_typing) typing = req->typing;
	}else{
		cparams_read(ed->properties, &c);
		tl = c.timeline;
		if(c.state && !strcmp(c.state, "stopped")) typing = false;
		else if(c.state && strcmp(c.state, "typing")) c.bad = true;
	}
	if((user = im_policy__user(ed->client, &why)) == NULL){
		answer(p, ed, "typing", mosquitto_client_username(ed->client) ? IM__V1__STATUS__FORBIDDEN : IM__V1__STATUS__UNAUTHENTICATED, why);
	}else if(c.bad || tl == NULL || im_route__parse_timeline(tl, &r) != MOSQ_ERR_SUCCESS){
		answer(p, ed, "typing", IM__V1__STATUS__BAD_REQUEST, "a timeline u/<user> or g/<group>, and state typing or stopped");
	}else if(r.kind == 'g' && !im_policy__is_member(p, r.name, r.name_len, user)){
		answer(p, ed, "typing", IM__V1__STATUS__FORBIDDEN, "not a member of the group");
	}else if(!typing_ok(p, user)){
		answer(p, ed, "typing", IM__V1__STATUS__TOO_MANY, "typing signals faster than plugin_opt_typing_rate");
	}else{
		/* A direct conversation: to the peer's event topic, naming the
		 * conversation as the peer sees it (where it would reply). */
		im_route__timeline(&r, target, sizeof(target));
		snprintf(own, sizeof(own), "u/%s", user);
		send_typing(p, target, user, r.kind == 'u' ? own : target, typing);
		answer(p, ed, "typing", IM__V1__STATUS__OK, NULL);
	}
	if(req) im__v1__typing_request__free_unpacked(req, &p->pb_alloc);
	cparams_free(&c);
	return MOSQ_ERR_SUCCESS;
}

/* ---- reads ---- */

int im_conv__reads_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	Im__V1__ReadsRequest *req = NULL;
	struct cparams c;
	struct im__route r;
	struct im__job *j;
	struct im__refusal no;
	const char *user, *why = NULL, *tl;

	(void)event;
	p->disconnecting = NULL;
	memset(&c, 0, sizeof(c));
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__reads_request__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			answer(p, ed, "reads", IM__V1__STATUS__BAD_REQUEST, "malformed ReadsRequest");
			return MOSQ_ERR_SUCCESS;
		}
		tl = req->timeline;
	}else{
		cparams_read(ed->properties, &c);
		tl = c.timeline;
	}
	if((user = im_policy__user(ed->client, &why)) == NULL){
		answer(p, ed, "reads", mosquitto_client_username(ed->client) ? IM__V1__STATUS__FORBIDDEN : IM__V1__STATUS__UNAUTHENTICATED, why);
	}else if(tl == NULL || im_route__parse_timeline(tl, &r) != MOSQ_ERR_SUCCESS){
		answer(p, ed, "reads", IM__V1__STATUS__BAD_REQUEST, "a timeline u/<user> or g/<group>");
	}else if(!im_clients__admit(p, ed->client, IM_JOB_READS, &no)){
		answer(p, ed, "reads", IM__V1__STATUS__TOO_MANY, no.why);
	}else if((j = im_reply__job(ed->client, IM_JOB_READS, 0, "reads", ed->properties)) == NULL){
		answer(p, ed, "reads", IM__V1__STATUS__INTERNAL, "out of memory");
	}else{
		snprintf(j->user, sizeof(j->user), "%s", user);
		im_route__timeline(&r, j->u.reads.timeline, sizeof(j->u.reads.timeline));
		im_clients__submit(p, j);
	}
	if(req) im__v1__reads_request__free_unpacked(req, &p->pb_alloc);
	cparams_free(&c);
	im_tick__settle(p);
	return MOSQ_ERR_SUCCESS;
}

/* ---- conversations ---- */

int im_conv__list_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	Im__V1__ConversationsRequest *req = NULL;
	struct cparams c;
	struct im__route r;
	struct im__job *j;
	struct im__refusal no;
	const char *user, *why = NULL, *before_tl = NULL;
	uint32_t limit = 0;
	int64_t before_ts = 0;

	(void)event;
	p->disconnecting = NULL;
	memset(&c, 0, sizeof(c));
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__conversations_request__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			answer(p, ed, "conversations", IM__V1__STATUS__BAD_REQUEST, "malformed ConversationsRequest");
			return MOSQ_ERR_SUCCESS;
		}
		limit = req->has_limit ? req->limit : 0;
		before_ts = req->has_before_ts_ms ? req->before_ts_ms : 0;
		before_tl = req->before_timeline;
	}else{
		cparams_read(ed->properties, &c);
		limit = c.limit;
		before_ts = c.before_ts;
		before_tl = c.before_tl;
	}
	if((user = im_policy__user(ed->client, &why)) == NULL){
		answer(p, ed, "conversations", mosquitto_client_username(ed->client) ? IM__V1__STATUS__FORBIDDEN : IM__V1__STATUS__UNAUTHENTICATED, why);
	}else if(c.bad || before_ts < 0 || (before_tl && im_route__parse_timeline(before_tl, &r) != MOSQ_ERR_SUCCESS)){
		answer(p, ed, "conversations", IM__V1__STATUS__BAD_REQUEST, "limit, before_ts_ms: whole numbers; before_timeline: u/<user> or g/<group>");
	}else if(!im_clients__admit(p, ed->client, IM_JOB_CONVS, &no)){
		answer(p, ed, "conversations", IM__V1__STATUS__TOO_MANY, no.why);
	}else if((j = im_reply__job(ed->client, IM_JOB_CONVS, 0, "conversations", ed->properties)) == NULL){
		answer(p, ed, "conversations", IM__V1__STATUS__INTERNAL, "out of memory");
	}else{
		snprintf(j->user, sizeof(j->user), "%s", user);
		j->u.convs.limit = limit;
		j->u.convs.before_ts = before_ts;
		if(before_tl){
			j->u.convs.has_before = true;
			snprintf(j->u.convs.before_tl, sizeof(j->u.convs.before_tl), "%s", before_tl);
		}
		im_clients__submit(p, j);
	}
	if(req) im__v1__conversations_request__free_unpacked(req, &p->pb_alloc);
	cparams_free(&c);
	im_tick__settle(p);
	return MOSQ_ERR_SUCCESS;
}
