/*
 * MOSQ_EVT_CONTROL: requests on $CONTROL/im/v1/<op>. Every request gets a
 * response; a bad one gets a status and a reason and changes nothing.
 *
 * Replies travel through mosquitto_broker_publish to the requesting client
 * id, the same FIFO as live frames: a frame sequenced after a sync batch
 * was read reaches the client after that batch.
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

static const char *const known_ops[] = {"sync", "ack", "group", NULL};

bool im_control__op_known(const char *op)
{
	int i;

	for(i = 0; known_ops[i]; i++){
		if(!strcmp(op, known_ops[i])) return true;
	}
	return false;
}

void im_control__reply(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const void *payload, size_t len)
{
	mosquitto_property *props = NULL;
	char *resp_topic = NULL;
	void *corr = NULL;
	uint16_t corr_len = 0;
	char topic[128];
	const char *dest = topic;

	resp_topic = im_props__string(req_props, MQTT_PROP_RESPONSE_TOPIC);
	corr = im_props__binary(req_props, MQTT_PROP_CORRELATION_DATA, &corr_len);
	if(resp_topic && resp_topic[0] && !strpbrk(resp_topic, "+#")) dest = resp_topic;
	snprintf(topic, sizeof(topic), "$CONTROL/im/v1/%s/response", op);
	if(corr) mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, corr_len);
	if(mosquitto_broker_publish_copy(mosquitto_client_id(client), dest, (int)len, (void *)payload,
				p->cfg.delivery_qos, false, props) != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
	}
	im_props__free(resp_topic);
	im_props__free(corr);
}

void im_control__reply_msg(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const ProtobufCMessage *msg)
{
	uint8_t small[512], *buf = small;
	size_t n = protobuf_c_message_get_packed_size(msg);

	if(n > sizeof(small) && (buf = mosquitto_malloc(n)) == NULL) return;
	protobuf_c_message_pack(msg, buf);
	im_control__reply(p, client, op, req_props, buf, n);
	if(buf != small) mosquitto_free(buf);
}

void im_control__reply_status(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, Im__V1__Status status, const char *reason)
{
	Im__V1__Response r = IM__V1__RESPONSE__INIT;

	r.has_status = 1;
	r.status = status;
	r.reason = (char *)reason;
	im_control__reply_msg(p, client, op, req_props, &r.base);
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

/* Checks the timeline named by a request and that user may use it.
 * Returns OK or a status with *why set. */
static Im__V1__Status authorise(struct im__plugin *p, const char *tl, const char *user, const char **why)
{
	struct im__route r;

	if(user == NULL){
		*why = "requests need a username";
		return IM__V1__STATUS__UNAUTHENTICATED;
	}
	if(!im_route__name_valid(user, strlen(user))){
		*why = "the username is not a valid IM name";
		return IM__V1__STATUS__FORBIDDEN;
	}
	if(tl == NULL || tl[0] == '\0'){
		*why = "missing timeline";
		return IM__V1__STATUS__BAD_REQUEST;
	}
	if(im_route__parse_timeline(tl, &r) != MOSQ_ERR_SUCCESS){
		*why = "invalid timeline (expected u/<user> or g/<group>)";
		return IM__V1__STATUS__BAD_REQUEST;
	}
	if(!im_acl__may_read(p, &r, user)){
		*why = r.kind == 'u' ? "not your timeline" : "not a member of the group";
		return IM__V1__STATUS__FORBIDDEN;
	}
	return IM__V1__STATUS__OK;
}

/* ---- sync ---- */

struct batch {
	struct im__plugin *p;
	const char *tl;
	uint8_t *arena;        /* all frames, back to back */
	size_t used, cap;
	size_t *ends;          /* end offset of each frame */
	size_t count, max;
	size_t budget;         /* bytes */
};

static int batch_add(void *ctx, const struct im__msg *m)
{
	struct batch *b = ctx;
	size_t n = im_message__frame(b->p, b->tl, m, false);
	uint8_t *na;

	if(n == 0) return MOSQ_ERR_NOMEM;
	if(b->count > 0 && b->used + n > b->budget) return 1; /* stop: next batch */
	if(b->used + n > b->cap){
		size_t cap = b->cap ? b->cap : 4096;
		while(cap < b->used + n) cap *= 2;
		na = mosquitto_realloc(b->arena, cap);
		if(na == NULL) return MOSQ_ERR_NOMEM;
		b->arena = na;
		b->cap = cap;
	}
	memcpy(b->arena + b->used, b->p->scratch.data, n);
	b->used += n;
	b->ends[b->count++] = b->used;
	return 0;
}

static void sync_error(const struct im__plugin *p, struct mosquitto_evt_control *ed, const char *tl, Im__V1__Status st, const char *why)
{
	Im__V1__SyncBatch sb = IM__V1__SYNC_BATCH__INIT;

	sb.has_status = 1;
	sb.status = st;
	sb.reason = (char *)why;
	sb.timeline = echo_timeline(tl);
	im_control__reply_msg(p, ed->client, "sync", ed->properties, &sb.base);
}

static void sync_run(struct im__plugin *p, struct mosquitto_evt_control *ed, const char *tl_name,
		bool has_after, uint64_t after, uint32_t limit)
{
	Im__V1__SyncBatch sb = IM__V1__SYNC_BATCH__INIT;
	struct batch b;
	struct im__tl *tl;
	uint64_t cursor = 0;
	bool more = false;
	size_t i;
	int rc;

	tl = im_store__timeline(&p->store, tl_name, strlen(tl_name), true);
	if(tl == NULL || im_store__cursor_get(&p->store, tl, mosquitto_client_username(ed->client),
				mosquitto_client_id(ed->client), &cursor) != MOSQ_ERR_SUCCESS){
		sync_error(p, ed, tl_name, IM__V1__STATUS__INTERNAL, "store failure");
		return;
	}
	if(!has_after) after = cursor;
	if(limit == 0 || limit > p->cfg.sync_max_frames) limit = p->cfg.sync_max_frames;

	memset(&b, 0, sizeof(b));
	b.p = p;
	b.tl = tl_name;
	b.budget = p->cfg.sync_max_bytes;
	b.ends = mosquitto_calloc(limit, sizeof(size_t));
	sb.frames = mosquitto_calloc(limit, sizeof(ProtobufCBinaryData));
	if(b.ends == NULL || sb.frames == NULL){
		rc = MOSQ_ERR_NOMEM;
	}else{
		rc = im_store__range(&p->store, tl, after, limit, im_store__now_ms(), batch_add, &b, &more);
	}
	if(rc != MOSQ_ERR_SUCCESS){
		sync_error(p, ed, tl_name, IM__V1__STATUS__INTERNAL, "store failure");
	}else{
		for(i = 0; i < b.count; i++){
			size_t start = i ? b.ends[i - 1] : 0;
			sb.frames[i].data = b.arena + start;
			sb.frames[i].len = b.ends[i] - start;
		}
		sb.n_frames = b.count;
		p->metrics.sync_frames += b.count;
		sb.has_status = 1;
		sb.status = IM__V1__STATUS__OK;
		sb.timeline = (char *)tl_name;
		sb.has_head_seq = 1;
		sb.head_seq = tl->head;
		sb.has_first_seq = 1;
		sb.first_seq = tl->first;
		sb.has_has_more = 1;
		sb.has_more = more;
		sb.has_after_seq = 1;
		sb.after_seq = after;
		sb.has_cursor = 1;
		sb.cursor = cursor;
		sb.has_unread = 1;
		sb.unread = tl->head > cursor ? tl->head - cursor : 0;
		im_control__reply_msg(p, ed->client, "sync", ed->properties, &sb.base);
	}
	mosquitto_free(sb.frames);
	mosquitto_free(b.ends);
	mosquitto_free(b.arena);
}

/* Token bucket: sync_rate requests per second, bursts up to one second's
 * worth. A client over it gets TOO_MANY, not silence. */
static bool rate_ok(struct im__plugin *p, struct mosquitto *client)
{
	const char *id = mosquitto_client_id(client);
	struct im__bucket *b;
	int64_t now = im_store__now_ms();
	double rate = p->cfg.sync_rate;

	if(p->cfg.sync_rate == 0 || id == NULL) return true;
	b = im_map__get(&p->rate, id, strlen(id));
	if(b == NULL){
		b = mosquitto_calloc(1, sizeof(*b));
		if(b == NULL || im_map__put(&p->rate, id, strlen(id), b) != MOSQ_ERR_SUCCESS){
			mosquitto_free(b);
			return true;
		}
		b->tokens = rate;
		b->last_ms = now;
	}
	b->tokens += (double)(now - b->last_ms) * rate / 1000.0;
	if(b->tokens > rate) b->tokens = rate;
	b->last_ms = now;
	if(b->tokens < 1.0) return false;
	b->tokens -= 1.0;
	return true;
}

int im_control__sync_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	const char *user = mosquitto_client_username(ed->client);
	struct params pa = {0};
	Im__V1__SyncRequest *req = NULL;
	const char *tl, *why = NULL;
	Im__V1__Status st;

	(void)event;
	p->disconnecting = NULL;
	p->metrics.sync_requests++;
	if(!rate_ok(p, ed->client)){
		p->metrics.sync_limited++;
		sync_error(p, ed, NULL, IM__V1__STATUS__TOO_MANY, "too many sync requests (plugin_opt_sync_rate)");
		return MOSQ_ERR_SUCCESS;
	}
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__sync_request__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			sync_error(p, ed, NULL, IM__V1__STATUS__BAD_REQUEST, "malformed SyncRequest");
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
	if(pa.bad){
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "user properties after/limit must be non-negative integers";
	}else if(pa.has_seq && pa.seq > (uint64_t)INT64_MAX){
		/* SQLite integers are signed: a larger after_seq would wrap and
		 * return the whole timeline. No seq can be that large. */
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "after_seq out of range";
	}else{
		st = authorise(p, tl, user, &why);
	}
	if(st != IM__V1__STATUS__OK){
		sync_error(p, ed, tl, st, why);
	}else{
		sync_run(p, ed, tl, pa.has_seq, pa.seq, pa.limit);
	}
	if(req) im__v1__sync_request__free_unpacked(req, &p->pb_alloc);
	im_props__free(pa.timeline);
	return MOSQ_ERR_SUCCESS;
}

/* ---- ack (msg-fin) ---- */

static void ack_reply(const struct im__plugin *p, struct mosquitto_evt_control *ed, const char *tl, Im__V1__Status st,
		const char *why, bool have_state, uint64_t cursor, uint64_t head)
{
	Im__V1__AckResponse r = IM__V1__ACK_RESPONSE__INIT;

	r.has_status = 1;
	r.status = st;
	r.reason = (char *)why;
	r.timeline = echo_timeline(tl);
	/* Also on a refusal (seq beyond head): the client learns where it is. */
	if(st == IM__V1__STATUS__OK || have_state){
		r.has_cursor = 1;
		r.cursor = cursor;
		r.has_head_seq = 1;
		r.head_seq = head;
	}
	im_control__reply_msg(p, ed->client, "ack", ed->properties, &r.base);
}

int im_control__ack_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct im__plugin *p = userdata;
	const char *user = mosquitto_client_username(ed->client);
	struct params pa = {0};
	Im__V1__Ack *req = NULL;
	struct im__tl *tl;
	const char *name, *why = NULL;
	uint64_t now = 0;
	bool have_state = false;
	Im__V1__Status st;

	(void)event;
	p->disconnecting = NULL;
	if(ed->payloadlen){
		req = im_route__has_nul(ed->payload, ed->payloadlen) ? NULL
			: im__v1__ack__unpack(&p->pb_alloc, ed->payloadlen, ed->payload);
		if(req == NULL){
			ack_reply(p, ed, NULL, IM__V1__STATUS__BAD_REQUEST, "malformed Ack", false, 0, 0);
			return MOSQ_ERR_SUCCESS;
		}
		name = req->timeline;
		pa.has_seq = req->has_seq;
		pa.seq = req->seq;
	}else{
		params_from_props(ed->properties, "seq", &pa);
		name = pa.timeline;
	}
	st = authorise(p, name, user, &why);
	if(st == IM__V1__STATUS__OK && (pa.bad || !pa.has_seq)){
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "missing or invalid seq";
	}
	tl = st == IM__V1__STATUS__OK ? im_store__timeline(&p->store, name, strlen(name), true) : NULL;
	if(st == IM__V1__STATUS__OK && tl == NULL){
		st = IM__V1__STATUS__INTERNAL;
		why = "store failure";
	}
	if(st == IM__V1__STATUS__OK && pa.seq > tl->head){
		st = IM__V1__STATUS__BAD_REQUEST;
		why = "seq is beyond the timeline's head";
		im_store__cursor_get(&p->store, tl, user, mosquitto_client_id(ed->client), &now);
		have_state = true;
	}
	if(st == IM__V1__STATUS__OK && im_store__cursor_set(&p->store, tl, user, mosquitto_client_id(ed->client),
				pa.seq, &now) != MOSQ_ERR_SUCCESS){
		st = IM__V1__STATUS__INTERNAL;
		why = "store failure";
	}
	if(st == IM__V1__STATUS__OK) p->metrics.acks++;
	ack_reply(p, ed, name, st, why, have_state, now, tl ? tl->head : 0);
	if(req) im__v1__ack__free_unpacked(req, &p->pb_alloc);
	im_props__free(pa.timeline);
	return MOSQ_ERR_SUCCESS;
}
