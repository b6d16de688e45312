/*
 * MOSQ_EVT_MESSAGE: a publish to an IM topic is sequenced, stored and
 * delivered here, on the broker's only thread.
 *
 * The plugin delivers frames itself (mosquitto_broker_publish) and
 * retargets the original publish in place to IM_SINK_TOPIC, where nobody
 * can subscribe. Why not let the broker deliver the rewritten original?
 * A QoS 2 publish reaches subscribers only when its PUBREL arrives, and
 * PUBRELs of concurrent senders arrive in any order: subscribers would see
 * seq 5 before seq 4. Plugin publishes leave in one FIFO, in seq order,
 * and sync replies travel the same FIFO. The publisher still gets a clean
 * acknowledgement (v5 QoS 1: 0x10 "no matching subscribers", a success).
 *
 * Returns: SUCCESS (stored, or a recognised repeat), ACL_DENIED (the
 * client's fault: bad name, no username), or UNKNOWN when the store
 * failed, which makes the broker drop the connection without
 * acknowledging, so the client sends the message again.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>
#include <zlib.h>

#include "im.h"

/* What the publisher told us in MQTT v5 properties. Owned strings. */
struct pub_props {
	char *cmid;
	char *content_type;
	bool receipt;               /* a Response Topic was given */
	int64_t expiry_s;
};

static void props_free(struct pub_props *pp)
{
	im_props__free(pp->cmid);
	im_props__free(pp->content_type);
}

/* Returns NULL, or a reason the properties are refused. */
static const char *props_read(const mosquitto_property *props, struct pub_props *pp)
{
	const mosquitto_property *it = props;
	char *k = NULL, *v = NULL;
	bool skip = false;

	memset(pp, 0, sizeof(*pp));
	if(props == NULL) return NULL;
	while((it = im_props__user(it, &k, &v, skip)) != NULL){
		skip = true;
		if(!strcmp(k, "im-cmid") && pp->cmid == NULL){
			pp->cmid = v;
			v = NULL;
		}else if(!strcmp(k, "im-expiry")){
			pp->expiry_s = strtoll(v, NULL, 10);
		}
		im_props__free(k);
		im_props__free(v);
	}
	pp->content_type = im_props__string(props, MQTT_PROP_CONTENT_TYPE);
	pp->receipt = im_props__has(props, MQTT_PROP_RESPONSE_TOPIC);
	if(pp->cmid && (pp->cmid[0] == '\0' || strlen(pp->cmid) > IM_CMID_MAX)) return "im-cmid must be 1..128 bytes";
	if(pp->content_type && strlen(pp->content_type) > IM_CTYPE_MAX) return "content type longer than 256 bytes";
	if(pp->expiry_s < 0) return "im-expiry must be a number of seconds";
	return NULL;
}

size_t im_message__frame(struct im__plugin *p, const char *tl, const struct im__msg *m, bool notify)
{
	Im__V1__Header h = IM__V1__HEADER__INIT;
	size_t body_len = notify ? 0 : m->body_len;
	size_t n;

	h.timeline = (char *)tl;
	h.has_seq = 1;
	h.seq = m->seq;
	h.sender = (char *)m->sender;
	h.has_ts_ms = 1;
	h.ts_ms = m->ts_ms;
	h.cmid = (char *)m->cmid;
	h.to = (char *)m->to;
	h.content_type = (char *)m->content_type;
	h.has_body_len = 1;
	h.body_len = (uint32_t)m->body_len;
	if(notify){
		h.has_body_omitted = 1;
		h.body_omitted = 1;
	}
	if(m->flags){
		h.has_flags = 1;
		h.flags = m->flags;
	}
	if(m->expires_ms){
		h.has_expires_ms = 1;
		h.expires_ms = m->expires_ms;
	}
	if(m->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED){
		h.has_raw_len = 1;
		h.raw_len = m->raw_len;
	}
	n = im_frame__size(&h, body_len);
	if(n == 0 || im_plugin__buf_reserve(&p->scratch, n) != MOSQ_ERR_SUCCESS) return 0;
	return im_frame__encode(p->scratch.data, p->scratch.cap, &h, m->body, body_len);
}

/* v5 subscribers see the metadata without decoding the frame. */
static mosquitto_property *delivery_props(const char *tl, const struct im__msg *m)
{
	mosquitto_property *props = NULL;
	char seq[24];
	int rc;

	snprintf(seq, sizeof(seq), "%" PRIu64, m->seq);
	rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-seq", seq);
	if(!rc) rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-timeline", tl);
	if(!rc) rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-from", m->sender);
	if(!rc && m->cmid) rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-cmid", m->cmid);
	if(!rc && m->content_type) rc = mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, m->content_type);
	if(!rc && m->expires_ms){
		int64_t left = (m->expires_ms - m->ts_ms) / 1000;
		rc = mosquitto_property_add_int32(&props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, (uint32_t)(left > 0 ? left : 1));
	}
	if(rc){
		mosquitto_property_free_all(&props);
		return NULL;
	}
	return props;
}

/* Queues the message for every subscriber of topic, always at
 * delivery_qos: Mosquitto keeps order only within one QoS (a QoS 0 frame
 * overtakes QoS 1 frames waiting for the in-flight window), so frames of
 * one timeline must not mix QoS levels, whatever the senders used. Failing here loses no
 * data (the message is committed; sync returns it), so it is logged only. */
void im_message__deliver(struct im__plugin *p, const char *topic, const char *tl, const struct im__msg *m)
{
	mosquitto_property *props = delivery_props(tl, m);
	const void *payload = m->body;
	size_t len = m->body_len;
	int rc;

	if(p->cfg.payload_mode == IM_PAYLOAD_FRAME){
		len = im_message__frame(p, tl, m, p->cfg.delivery == IM_DELIVERY_NOTIFY);
		payload = p->scratch.data;
		if(len == 0){
			mosquitto_property_free_all(&props);
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: cannot build frame for %s seq %" PRIu64 ".", tl, m->seq);
			return;
		}
	}else if(p->cfg.delivery == IM_DELIVERY_NOTIFY){
		len = 0;
	}
	rc = mosquitto_broker_publish_copy(NULL, topic, (int)len, (void *)payload, p->cfg.delivery_qos, false, props);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: cannot deliver %s seq %" PRIu64 ": %s (sync will return it).",
				tl, m->seq, mosquitto_strerror(rc));
	}
}

/* The Receipt goes where the publish's Response Topic says, with its
 * Correlation Data: the same routing as a request's reply. */
static void send_receipt(struct im__plugin *p, const struct mosquitto_evt_message *ed, const struct pub_props *pp,
		const char *tl, const struct im__appended *a)
{
	Im__V1__Receipt r = IM__V1__RECEIPT__INIT;

	r.has_status = 1;
	r.status = IM__V1__STATUS__OK;
	r.timeline = (char *)tl;
	r.has_seq = 1;
	r.seq = a->seq;
	r.cmid = pp->cmid;
	r.has_ts_ms = 1;
	r.ts_ms = a->ts_ms;
	r.has_duplicate = 1;
	r.duplicate = a->duplicate;
	if(a->own_seq){
		r.has_own_seq = 1;
		r.own_seq = a->own_seq;
	}
	im_control__reply_msg(p, ed->client, "receipt", ed->properties, &r.base);
}

/* Makes the broker deliver the original publish to no one, in place: the
 * topic buffer is the broker's, and whether the broker frees a replaced
 * topic pointer differs across 2.0.x releases (2.0.11 leaks it, 2.0.15
 * frees it). Writing over it works the same on all of them. */
static void retarget(struct mosquitto_evt_message *ed)
{
	memcpy(ed->topic, IM_SINK_TOPIC, sizeof(IM_SINK_TOPIC));
}

void im_message__system(struct im__msg *m, const char *sender, const char *to, const char *body, size_t len)
{
	memset(m, 0, sizeof(*m));
	m->ts_ms = im_store__now_ms();
	m->sender = sender;
	m->to = to;
	m->content_type = "application/json";
	m->flags = IM__V1__HEADER_FLAG__FLAG_SYSTEM;
	m->body = body;
	m->body_len = len;
}

/* Deflates m's body into p->zbuf when that is worth it: at least
 * compress_min bytes, and smaller afterwards. On any failure the body
 * stays as it is: compression is an optimisation, never a reason to
 * refuse a message. */
static void maybe_compress(struct im__plugin *p, struct im__msg *m)
{
	uLongf out;

	if(p->cfg.compress_min == 0 || m->body_len < p->cfg.compress_min) return;
	out = compressBound((uLong)m->body_len);
	if(im_plugin__buf_reserve(&p->zbuf, out) != MOSQ_ERR_SUCCESS) return;
	if(compress2(p->zbuf.data, &out, m->body, (uLong)m->body_len, 6) != Z_OK || out >= m->body_len) return;
	m->raw_len = (uint32_t)m->body_len;
	m->body = p->zbuf.data;
	m->body_len = out;
	m->flags |= IM__V1__HEADER_FLAG__FLAG_COMPRESSED;
}

/* The timelines a publish goes to: the addressed one, and for a direct
 * message the sender's inbox (its copy). NULL on a store failure. */
static struct im__tl *timelines(struct im__plugin *p, const struct im__route *r, const char *user,
		char *to_tl, struct im__tl **own)
{
	char own_tl[IM_TL_MAX + 1];

	*own = NULL;
	im_route__timeline(r, to_tl, IM_TL_MAX + 1);
	if(r->kind == 'u'){
		snprintf(own_tl, sizeof(own_tl), "u/%s", user);
		if((*own = im_store__timeline(&p->store, own_tl, strlen(own_tl), true)) == NULL) return NULL;
	}
	return im_store__timeline(&p->store, to_tl, strlen(to_tl), true);
}

/* Live delivery of a stored message: to the addressed topic, and the
 * sender's copy to its own inbox. */
static void deliver_stored(struct im__plugin *p, const struct mosquitto_evt_message *ed, struct im__msg *m,
		const struct im__appended *a, struct im__tl *own)
{
	char own_topic[IM_TL_MAX + 70];

	m->seq = a->seq;
	if(p->cfg.payload_mode == IM_PAYLOAD_RAW){
		/* Raw subscribers know no frame flags: they get the body as sent. */
		m->body = ed->payload;
		m->body_len = ed->payloadlen;
		m->flags &= ~(uint32_t)IM__V1__HEADER_FLAG__FLAG_COMPRESSED;
	}
	im_message__deliver(p, ed->topic, m->to, m);
	if(a->own_seq){
		snprintf(own_topic, sizeof(own_topic), "%s/%s", p->cfg.prefix, own->name);
		m->seq = a->own_seq;
		im_message__deliver(p, own_topic, own->name, m);
	}
}

int im_message__cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct im__plugin *p = userdata;
	struct im__route r;
	struct pub_props pp;
	struct im__tl *to, *own;
	struct im__msg m;
	struct im__appended a;
	const char *user, *why;
	int64_t t0;
	char to_tl[IM_TL_MAX + 1];
	int rc;

	(void)event;
	p->disconnecting = NULL;
	p->read_ptr = NULL; /* a new message: no READ verdict carries over */
	if(!im_route__in_namespace(&p->cfg, ed->topic)) return MOSQ_ERR_SUCCESS;
	user = mosquitto_client_username(ed->client);
	/* The ACL check let this through; these hold unless another plugin
	 * decided before ours, so check again rather than trust. */
	if(user == NULL || im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS
			|| ed->retain || ed->payloadlen > p->cfg.max_body
			|| (r.kind == 'g' && !im_store__is_member(&p->store, r.name, r.name_len, user))){
		p->metrics.refused++;
		return MOSQ_ERR_ACL_DENIED;
	}
	why = props_read(ed->properties, &pp);
	if(why){
		p->metrics.refused++;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: refused publish from \"%s\" to \"%s\": %s.",
				mosquitto_client_id(ed->client), ed->topic, why);
		props_free(&pp);
		return MOSQ_ERR_ACL_DENIED;
	}
	if((to = timelines(p, &r, user, to_tl, &own)) == NULL){
		p->metrics.store_errors++;
		props_free(&pp);
		return MOSQ_ERR_UNKNOWN;
	}

	memset(&m, 0, sizeof(m));
	m.ts_ms = im_store__now_ms();
	m.sender = user;
	m.cmid = pp.cmid;
	m.to = to_tl;
	m.content_type = pp.content_type;
	m.expires_ms = pp.expiry_s ? m.ts_ms + pp.expiry_s * 1000 : 0;
	m.body = ed->payload;
	m.body_len = ed->payloadlen;
	maybe_compress(p, &m);
	t0 = im_store__mono_us();
	rc = im_store__append(&p->store, to, own, &m, &a);
	im_metrics__commit_us(&p->metrics, im_store__mono_us() - t0);
	if(rc != MOSQ_ERR_SUCCESS){
		p->metrics.store_errors++;
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: store failed; disconnecting \"%s\" without acknowledging its message to \"%s\".",
				mosquitto_client_id(ed->client), ed->topic);
		props_free(&pp);
		return MOSQ_ERR_UNKNOWN;
	}

	if(a.duplicate){
		p->metrics.duplicates++;
	}else{
		p->metrics.sequenced++;
		if(a.own_seq && p->cfg.presence == IM_PRESENCE_CONTACTS) im_store__contact_note(&p->store, user, r.name);
		deliver_stored(p, ed, &m, &a, own);
	}
	if(pp.receipt) send_receipt(p, ed, &pp, to_tl, &a);
	retarget(ed);
	props_free(&pp);
	return MOSQ_ERR_SUCCESS;
}
