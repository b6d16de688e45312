/*
 * What the plugin says on IM topics, and how it knows its own words.
 *
 * Completions from the worker are published here, on the broker thread,
 * in the order the worker produced them: frames of one timeline in seq
 * order, replies after the frames committed before them.
 *
 * "Is this ours?" is asked by the ACL check for every delivery on an IM
 * topic, because a will (sent at a session takeover or after a Will Delay)
 * and a retained message reach subscribers without passing the publish
 * path. Every frame the plugin sends carries a tag keyed with the store's
 * frame key (frame.c): a frame verifies or it is not ours, whoever
 * crafted it and whenever it is delivered (also from a persistent
 * session's queue after a reconnect, which the broker checks again).
 * Raw payloads (payload raw) and presence (JSON) carry no tag: they are
 * matched against keyed fingerprints of what the plugin published — the
 * current retained presence per user, and raw deliveries of the last
 * RAW_WINDOW_MS (two generations of a set).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mqtt_protocol.h>

#include "base/config.h"
#include "base/defs.h"
#include "base/map.h"
#include "base/siphash.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/deliver.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "cluster/cluster.h"
#include "codec/frame.h"
#include "codec/route.h"
#include "worker/job.h"
#include "worker/worker.h"

#define RAW_WINDOW_MS (10 * 60 * 1000)
#define RAW_MAX (1u << 20)      /* fingerprints per generation */

/* ---- fingerprints ---- */

struct gen {
	uint64_t *slots;        /* 0 = empty */
	size_t cap, count;
};

struct im__fpset {
	struct gen cur, prev;
	int64_t since_ms;
};

static uint64_t fingerprint(const struct im__plugin *p, const char *topic, const void *payload, size_t len)
{
	uint64_t fp = im_siphash(p->frame_key, topic, strlen(topic) + 1, payload, len);

	return fp ? fp : 1;
}

static bool gen_has(const struct gen *g, uint64_t fp)
{
	size_t i;

	if(g->cap == 0) return false;
	for(i = fp & (g->cap - 1); g->slots[i]; i = (i + 1) & (g->cap - 1)){
		if(g->slots[i] == fp) return true;
	}
	return false;
}

static void gen_add(struct gen *g, uint64_t fp)
{
	size_t i, ncap;
	uint64_t *ns;

	if((g->count + 1) * 2 > g->cap){
		ncap = g->cap ? g->cap * 2 : 1024;
		if((ns = im_calloc(ncap, sizeof(*ns))) == NULL) return;
		for(i = 0; i < g->cap; i++){
			size_t j;
			if(!g->slots[i]) continue;
			for(j = g->slots[i] & (ncap - 1); ns[j]; j = (j + 1) & (ncap - 1));
			ns[j] = g->slots[i];
		}
		free(g->slots);
		g->slots = ns;
		g->cap = ncap;
	}
	for(i = fp & (g->cap - 1); g->slots[i]; i = (i + 1) & (g->cap - 1)){
		if(g->slots[i] == fp) return;
	}
	g->slots[i] = fp;
	g->count++;
}

static void rotate(struct im__fpset *s, int64_t now)
{
	free(s->prev.slots);
	s->prev = s->cur;
	memset(&s->cur, 0, sizeof(s->cur));
	s->since_ms = now;
}

void im_deliver__tick(struct im__plugin *p, int64_t now_ms)
{
	struct im__fpset *s = p->raw_fps;

	if(s && (now_ms - s->since_ms >= RAW_WINDOW_MS || s->cur.count >= RAW_MAX)) rotate(s, now_ms);
}

static void remember_raw(struct im__plugin *p, const char *topic, const void *payload, size_t len)
{
	if(p->raw_fps == NULL){
		if((p->raw_fps = im_calloc(1, sizeof(*p->raw_fps))) == NULL) return;
		p->raw_fps->since_ms = im_mono_ms();
	}
	if(p->raw_fps->cur.count >= RAW_MAX) rotate(p->raw_fps, im_mono_ms());
	gen_add(&p->raw_fps->cur, fingerprint(p, topic, payload, len));
}

bool im_deliver__is_ours(struct im__plugin *p, const char *topic, const struct im__route *r, bool event,
		const void *payload, uint32_t len)
{
	const char *tl;
	size_t tl_len;
	uint64_t seq, fp;

	if(p->cfg.payload_mode == IM_PAYLOAD_RAW && !event){
		if(p->raw_fps == NULL) return false;
		fp = fingerprint(p, topic, payload, len);
		return gen_has(&p->raw_fps->cur, fp) || gen_has(&p->raw_fps->prev, fp);
	}
	/* Tagged by us, and for this topic's timeline: a genuine frame of
	 * another timeline replayed here is not ours either. A message has a
	 * seq, an event (on <prefix>/e/...) none: neither passes for the other. */
	return im_frame__verify(payload, len, p->frame_key)
		&& im_frame__peek(payload, len, &tl, &tl_len, &seq)
		&& tl_len == r->name_len + 2 && tl[0] == r->kind && tl[1] == '/'
		&& !memcmp(tl + 2, r->name, r->name_len)
		&& (event ? seq == 0 : seq > 0);
}

void im_deliver__presence(struct im__plugin *p, const char *user, const char *json, size_t len)
{
	char topic[IM_TOPIC_MAX + 1];
	uint64_t *fp;

	snprintf(topic, sizeof(topic), "%s/p/%s", p->cfg.prefix, user);
	fp = im_map__get(&p->presence_fps, user, strlen(user));
	if(fp == NULL && ((fp = im_malloc(sizeof(*fp))) == NULL
				|| im_map__put(&p->presence_fps, user, strlen(user), fp) != MOSQ_ERR_SUCCESS)){
		free(fp);
		fp = NULL;
	}
	if(fp) *fp = fingerprint(p, topic, json, len);
	mosquitto_broker_publish_copy(NULL, topic, (int)len, (void *)json, 1, true, NULL);
}

bool im_deliver__presence_is_ours(struct im__plugin *p, const char *user, const void *payload, uint32_t len)
{
	char topic[IM_TOPIC_MAX + 1];
	uint64_t *fp = im_map__get(&p->presence_fps, user, strlen(user));

	if(fp == NULL) return false;
	snprintf(topic, sizeof(topic), "%s/p/%s", p->cfg.prefix, user);
	return *fp == fingerprint(p, topic, payload, len);
}

void im_deliver__free(struct im__plugin *p)
{
	if(p->raw_fps){
		free(p->raw_fps->cur.slots);
		free(p->raw_fps->prev.slots);
		free(p->raw_fps);
		p->raw_fps = NULL;
	}
	im_map__free(&p->presence_fps, free);
}

/* ---- completions ---- */

/* v5 subscribers see the metadata without decoding the frame. */
static mosquitto_property *frame_props(const struct im__done *d)
{
	mosquitto_property *props = NULL;
	char seq[24];
	int rc;

	snprintf(seq, sizeof(seq), "%" PRIu64, d->seq);
	rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-seq", seq);
	if(!rc) rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-timeline", d->timeline);
	if(!rc) rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-from", d->sender);
	if(!rc && d->cmid) rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-cmid", d->cmid);
	if(!rc && d->ctype) rc = mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, d->ctype);
	if(!rc && d->expiry_s) rc = mosquitto_property_add_int32(&props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, d->expiry_s);
	if(rc){
		mosquitto_property_free_all(&props);
		return NULL;
	}
	return props;
}

/* Frames go out at delivery_qos, always: Mosquitto keeps order only
 * within one QoS (a QoS 0 frame overtakes QoS 1 frames waiting for the
 * in-flight window). Failing here loses no data: the message is stored
 * and sync returns it; so it is logged only. */
void im_deliver__frame(struct im__plugin *p, const struct im__done *d)
{
	mosquitto_property *props;
	int rc;

	/* Events (read marks): for who is online, at QoS 0 like typing. */
	if(d->event){
		mosquitto_broker_publish_copy(NULL, d->topic, (int)d->len, (void *)d->payload, 0, false, NULL);
		return;
	}
	props = frame_props(d);
	if(p->cfg.payload_mode == IM_PAYLOAD_RAW) remember_raw(p, d->topic, d->payload, d->len);
	rc = mosquitto_broker_publish_copy(NULL, d->topic, (int)d->len, (void *)d->payload, p->cfg.delivery_qos, false, props);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: cannot deliver %s seq %" PRIu64 " (sync will return it).", d->timeline, d->seq);
	}
}

static void publish_reply(struct im__plugin *p, const struct im__done *d)
{
	mosquitto_property *props = NULL;

	im_clients__replied(p, d);
	if(d->corr_len) mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, d->corr, d->corr_len);
	if(mosquitto_broker_publish_copy(d->client_id, d->topic, (int)d->len, (void *)d->payload,
				p->cfg.delivery_qos, false, props) != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
	}
}

void im_deliver__done(struct im__plugin *p, struct im__done *d)
{
	switch(d->kind){
		case IM_DONE_FRAME:
			/* A cluster broker orders what it delivers (cluster.c). */
			if(im_cluster__deliver(p->cluster, d)) return;
			im_deliver__frame(p, d);
			break;
		case IM_DONE_REPLY:
			publish_reply(p, d);
			break;
		case IM_DONE_MEMBERS:
			im_policy__members(p, d->group, d->group_op, d->owner, d->users, d->n_users);
			break;
		case IM_DONE_WROTE:
			im_policy__wrote(p, d->sender, d->timeline);
			break;
		case IM_DONE_LOG:
			mosquitto_log_printf(d->level, "%s", (const char *)d->payload);
			break;
		case IM_DONE_SUBSCRIBED: /* cluster.c's own, never queued here */
			break;
		case IM_DONE_REPAIRED:
			im_cluster__repaired(p->cluster, d->timeline, d->seq, d->level == 0, d->anchor);
			break;
	}
	free(d);
}

static void done_cb(void *ctx, struct im__done *d)
{
	im_deliver__done(ctx, d);
}

void im_deliver__drain(struct im__plugin *p)
{
	im_worker__drain(p->worker, done_cb, p);
}
