/*
 * MOSQ_EVT_MESSAGE: a publish to an IM topic, on the broker's only thread.
 *
 * Check, authorise, append the message to the journal with one write,
 * queue it for the store worker, return: the broker acknowledges it. The
 * journal is the durability point (journal.c); the seq, the frames and the
 * Receipt come from the worker once the message is stored.
 *
 * The plugin delivers frames itself (mosquitto_broker_publish) and
 * retargets the original publish to IM_SINK_TOPIC, where nobody can
 * subscribe. A QoS 2 publish reaches subscribers only when its PUBREL
 * arrives, and PUBRELs of concurrent senders arrive in any order:
 * subscribers would see seq 5 before seq 4. Plugin publishes leave in one
 * FIFO, in seq order, and sync replies travel the same FIFO. The publisher
 * still gets a clean acknowledgement (v5 QoS 1: 0x10 "no matching
 * subscribers", a success code).
 *
 * Returns: SUCCESS (journaled), ACL_DENIED (the client's fault: bad name,
 * no username, a limit; 2.1 answers a rate limit with QUOTA_EXCEEDED), or
 * UNKNOWN when the journal could not take it or the store is too far
 * behind, which makes the broker drop the connection without
 * acknowledging, so the client sends the message again.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "base/crypt.h"
#include "base/defs.h"
#include "base/stats.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/on_message.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/props.h"
#include "broker/reply.h"
#include "codec/record.h"
#include "codec/route.h"
#include "journal/journal.h"
#include "worker/job.h"
#include "worker/worker.h"

/* 2.1's "quota exceeded" (MQTT reason 0x97); 2.0 has no such code and
 * would drop the connection on it, so it is returned on 2.1 only. */
#define IM_ERR_QUOTA_EXCEEDED (-6)

/* What the publisher told us in MQTT v5 properties. Owned strings. */
struct pub_props {
	char *cmid;
	char *content_type;
	bool receipt;               /* a Response Topic was given */
	int64_t expiry_s;
	uint8_t op;                 /* enum im_rec_op: im-edit / im-recall */
	uint64_t ref_seq;
};

static void props_free(struct pub_props *pp)
{
	im_props__free(pp->cmid);
	im_props__free(pp->content_type);
}

/* Seconds, a plain decimal in 0..IM_EXPIRY_MAX (0: no expiry). */
static bool parse_expiry(const char *s, int64_t *out)
{
	int64_t v = 0;

	if(*s == '\0') return false;
	for(; *s; s++){
		if(*s < '0' || *s > '9') return false;
		v = v * 10 + (*s - '0');
		if(v > IM_EXPIRY_MAX) return false;
	}
	*out = v;
	return true;
}

/* A seq named by im-edit / im-recall: a plain decimal, 1..2^63-1. */
static bool parse_seq(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if(*s == '\0' || *s == '0') return false;
	for(; *s; s++){
		if(*s < '0' || *s > '9' || v > (uint64_t)INT64_MAX / 10) return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	if(v > (uint64_t)INT64_MAX) return false;
	*out = v;
	return true;
}

/* Returns NULL, or a reason the properties are refused. */
static const char *props_read(const mosquitto_property *props, struct pub_props *pp)
{
	const mosquitto_property *it = props;
	char *k = NULL, *v = NULL;
	bool skip = false, bad_expiry = false, bad_ref = false;
	int ops = 0;

	memset(pp, 0, sizeof(*pp));
	if(props == NULL) return NULL;
	while((it = im_props__user(it, &k, &v, skip)) != NULL){
		skip = true;
		if(!strcmp(k, "im-cmid") && pp->cmid == NULL){
			pp->cmid = v;
			v = NULL;
		}else if(!strcmp(k, "im-expiry")){
			bad_expiry |= !parse_expiry(v, &pp->expiry_s);
		}else if(!strcmp(k, "im-edit") || !strcmp(k, "im-recall")){
			pp->op = k[3] == 'e' ? IM_REC_EDIT : IM_REC_RECALL;
			bad_ref |= !parse_seq(v, &pp->ref_seq);
			ops++;
		}
		im_props__free(k);
		im_props__free(v);
	}
	pp->content_type = im_props__string(props, MQTT_PROP_CONTENT_TYPE);
	pp->receipt = im_props__has(props, MQTT_PROP_RESPONSE_TOPIC);
	if(pp->cmid && (pp->cmid[0] == '\0' || strlen(pp->cmid) > IM_CMID_MAX)) return "im-cmid must be 1..128 bytes";
	if(pp->content_type && strlen(pp->content_type) > IM_CTYPE_MAX) return "content type longer than 256 bytes";
	if(bad_expiry) return "im-expiry must be a whole number of seconds from 0 to 315360000";
	if(bad_ref) return "im-edit and im-recall name a seq: a whole number from 1";
	if(ops > 1) return "one im-edit or im-recall per message";
	return NULL;
}

/* Makes the broker deliver the original publish to no one. On 2.1 the
 * plugin may hand the broker a new topic (it frees the old one); on 2.0
 * who frees a replaced topic pointer differs across releases (2.0.11 leaks
 * it, 2.0.15 frees it), so the sink name is written over the original,
 * which is never shorter. */
static void retarget(struct im__plugin *p, struct mosquitto_evt_message *ed)
{
	char *t;

	if(p->v21 && (t = mosquitto_strdup(IM_SINK_TOPIC)) != NULL){
		ed->topic = t;
		return;
	}
	memcpy(ed->topic, IM_SINK_TOPIC, sizeof(IM_SINK_TOPIC));
}

/* messages per second per user (user_msg_rate). */
static bool user_rate_ok(struct im__plugin *p, const char *user)
{
	struct im__user *u;

	if(p->cfg.user_msg_rate == 0 || (u = im_clients__user(p, user)) == NULL) return true;
	return im_bucket__take(&u->msg, p->cfg.user_msg_rate, p->cfg.user_msg_rate, 1.0, im_mono_ms());
}

/* One warning a second at most: a failing disk must not flood the log. */
static void warn(struct im__plugin *p, const char *fmt, const char *a, const char *b)
{
	int64_t now = im_mono_ms();

	if(now - p->last_backlog_log_ms < 1000) return;
	p->last_backlog_log_ms = now;
	mosquitto_log_printf(MOSQ_LOG_WARNING, fmt, a, b);
}

static int submit(struct im__plugin *p, struct im__rec *rec, struct mosquitto *client, const mosquitto_property *reply_props)
{
	struct im__job *j;
	const void *sealed;
	size_t len, sealed_len;
	int64_t t0 = im_mono_us();

	if(im_worker__backlog(p->worker) >= p->cfg.backlog_max){
		warn(p, "im: the store is behind by more than plugin_opt_backlog_max bytes: refusing (not acknowledging) a message from \"%s\"%s.",
				client ? mosquitto_client_id(client) : rec->sender, "");
		return MOSQ_ERR_UNKNOWN;
	}
	/* Encrypted at rest also in the journal: bound to its LSN. */
	if(p->crypt.n){
		if(im_crypt__seal(&p->crypt, "", p->journal.next_lsn, rec->body, rec->body_len, &sealed, &sealed_len, &rec->key_id) != MOSQ_ERR_SUCCESS){
			return MOSQ_ERR_UNKNOWN;
		}
		rec->body = sealed;
		rec->body_len = (uint32_t)sealed_len;
	}
	len = im_rec__size(rec);
	j = reply_props ? im_reply__job(client, IM_JOB_MSG, len, "receipt", reply_props)
		: im_job__new(IM_JOB_MSG, len, NULL, NULL, NULL, NULL, 0);
	if(j == NULL) return MOSQ_ERR_UNKNOWN;
	im_rec__encode(j->data, rec);
	snprintf(j->user, sizeof(j->user), "%s", rec->sender);
	if(im_journal__append(&p->journal, j->data, len, &j->lsn) != MOSQ_ERR_SUCCESS){
		p->metrics.journal_errors++;
		warn(p, "im: journal: cannot append (%s); disconnecting \"%s\" without acknowledging its message.",
				strerror(errno), client ? mosquitto_client_id(client) : rec->sender);
		im_job__free(j);
		return MOSQ_ERR_UNKNOWN;
	}
	im_stats__hist(p->metrics.journal_us_hist, im_mono_us() - t0);
	im_worker__submit(p->worker, j);
	return MOSQ_ERR_SUCCESS;
}

int im_message__submit(struct im__plugin *p, struct im__rec *rec)
{
	return submit(p, rec, NULL, NULL);
}

int im_message__cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct im__plugin *p = userdata;
	struct im__route r;
	struct pub_props pp;
	struct im__rec rec;
	const char *user, *why = NULL;
	char to_tl[IM_TL_MAX + 1], own_tl[IM_TL_MAX + 1];
	int rc;

	(void)event;
	p->disconnecting = NULL;
	if(!im_route__in_namespace(&p->cfg, ed->topic)) return MOSQ_ERR_SUCCESS;
	/* The ACL check let this through; these hold unless another plugin
	 * decided before ours, so check again rather than trust. */
	if((user = im_policy__user(ed->client, &why)) == NULL
			|| im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS
			|| ed->retain || ed->payloadlen > p->cfg.max_body
			|| (r.kind == 'g' && !im_policy__is_member(p, r.name, r.name_len, user))){
		p->metrics.refused++;
		return MOSQ_ERR_ACL_DENIED;
	}
	if((why = props_read(ed->properties, &pp)) != NULL || !user_rate_ok(p, user)){
		p->metrics.refused++;
		if(why == NULL) p->metrics.rate_limited++;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: refused publish from \"%s\" to \"%s\": %s.",
				mosquitto_client_id(ed->client), ed->topic, why ? why : "more messages a second than plugin_opt_user_msg_rate");
		props_free(&pp);
		return (why == NULL && p->v21) ? IM_ERR_QUOTA_EXCEEDED : MOSQ_ERR_ACL_DENIED;
	}
	im_route__timeline(&r, to_tl, sizeof(to_tl));
	own_tl[0] = '\0';
	if(r.kind == 'u') snprintf(own_tl, sizeof(own_tl), "u/%s", user);

	memset(&rec, 0, sizeof(rec));
	rec.kind = IM_REC_MESSAGE;
	rec.ts_ms = im_now_ms();
	rec.expires_ms = pp.expiry_s ? rec.ts_ms + pp.expiry_s * 1000 : 0;
	rec.sender = user;
	rec.to = to_tl;
	rec.own = own_tl;
	rec.cmid = pp.cmid ? pp.cmid : "";
	rec.ctype = pp.content_type ? pp.content_type : "";
	rec.op = pp.op;
	rec.ref_seq = pp.ref_seq;
	rec.body = ed->payload;
	rec.body_len = pp.op == IM_REC_RECALL ? 0 : ed->payloadlen;
	rc = submit(p, &rec, ed->client, pp.receipt ? ed->properties : NULL);
	props_free(&pp);
	if(rc != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	retarget(p, ed);
	im_tick__settle(p);
	return MOSQ_ERR_SUCCESS;
}
