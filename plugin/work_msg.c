/*
 * Applying a journaled message [W]: authorise against the store's truth
 * (group membership, the new-timeline budget), compress, append with seq
 * and dedup, and produce what the broker thread sends: the frames and the
 * Receipt.
 *
 * Refusals here come after the acknowledgement (the record was journaled
 * because the broker thread's view allowed it): they are rare races (a
 * member removed meanwhile) and budget limits, and the sender learns of
 * them from the Receipt, with the reason.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <zlib.h>

#include "worker.h"

#define SLEN(s) ((s) ? strlen(s) + 1 : 0)

static const char *nz(const char *s)
{
	return (s && s[0]) ? s : NULL;
}

static void header_of(const struct im__worker *w, Im__V1__Header *h, const char *tl, const struct im__msg *m, bool notify)
{
	im__v1__header__init(h);
	h->timeline = (char *)tl;
	h->has_seq = 1;
	h->seq = m->seq;
	h->sender = (char *)m->sender;
	h->has_ts_ms = 1;
	h->ts_ms = m->ts_ms;
	h->cmid = (char *)m->cmid;
	h->to = (char *)m->to;
	h->content_type = (char *)m->content_type;
	h->has_body_len = 1;
	h->body_len = (uint32_t)m->body_len;
	if(notify){
		h->has_body_omitted = 1;
		h->body_omitted = 1;
	}
	if(m->flags){
		h->has_flags = 1;
		h->flags = m->flags;
	}
	if(m->expires_ms){
		h->has_expires_ms = 1;
		h->expires_ms = m->expires_ms;
	}
	if(m->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED){
		h->has_raw_len = 1;
		h->raw_len = m->raw_len;
	}
	h->has_store_id = 1;
	h->store_id = w->st.store_id;
}

size_t im_work__sync_frame(struct im__worker *w, const char *tl, const struct im__msg *m, uint8_t *out, size_t cap)
{
	Im__V1__Header h;

	header_of(w, &h, tl, m, false);
	if(out == NULL) return im_frame__sealed_size(&h, m->body_len);
	return im_frame__encode_sealed(out, cap, &h, m->body, m->body_len, w->st.frame_key);
}

struct im__done *im_work__frame(struct im__worker *w, const char *tl, const struct im__msg *m,
		const void *raw_body, size_t raw_len)
{
	bool notify = w->cfg.delivery == IM_DELIVERY_NOTIFY, raw = w->cfg.payload_mode == IM_PAYLOAD_RAW;
	Im__V1__Header h;
	struct im__done *d;
	char topic[IM_TOPIC_MAX + 1];
	size_t n, used = 0;
	int64_t left;

	snprintf(topic, sizeof(topic), "%s/%s", w->cfg.prefix, tl);
	header_of(w, &h, tl, m, notify);
	if(raw) n = notify ? 0 : raw_len;
	else n = im_frame__sealed_size(&h, notify ? 0 : m->body_len);
	if(!raw && n == 0) return NULL;
	d = im_work__done(IM_DONE_FRAME, strlen(topic) + 1 + SLEN(tl) + SLEN(m->sender) + SLEN(m->cmid)
			+ SLEN(m->content_type) + n);
	if(d == NULL) return NULL;
	d->topic = im_work__str(d, &used, topic);
	d->timeline = im_work__str(d, &used, tl);
	d->sender = im_work__str(d, &used, m->sender);
	d->cmid = im_work__str(d, &used, m->cmid);
	d->ctype = im_work__str(d, &used, m->content_type);
	d->seq = m->seq;
	if(m->expires_ms){
		left = (m->expires_ms - m->ts_ms) / 1000;
		d->expiry_s = left < 1 ? 1 : left > UINT32_MAX ? UINT32_MAX : (uint32_t)left;
	}
	d->payload = d->data + used;
	if(raw){
		if(n) memcpy(d->data + used, raw_body, n);
		d->len = n;
	}else{
		d->len = im_frame__encode_sealed((uint8_t *)d->data + used, n, &h, m->body, notify ? 0 : m->body_len,
				w->st.frame_key);
	}
	return d;
}

/* Deflates m's body into w->zbuf when that is worth it: at least
 * compress_min bytes, and smaller afterwards. On any failure the body
 * stays as it is: compression is an optimisation, never a reason to
 * refuse a message. */
static void maybe_compress(struct im__worker *w, struct im__msg *m)
{
	uLongf out;

	if(w->cfg.compress_min == 0 || m->body_len < w->cfg.compress_min) return;
	out = compressBound((uLong)m->body_len);
	if(im_buf__reserve(&w->zbuf, out) != MOSQ_ERR_SUCCESS) return;
	if(compress2(w->zbuf.data, &out, m->body, (uLong)m->body_len, 6) != Z_OK || out >= m->body_len) return;
	m->raw_len = (uint32_t)m->body_len;
	m->body = w->zbuf.data;
	m->body_len = out;
	m->flags |= IM__V1__HEADER_FLAG__FLAG_COMPRESSED;
}

static void receipt(struct im__worker *w, const struct im__job *j, const struct im__rec *r,
		const struct im__appended *a, Im__V1__Status st, const char *why)
{
	Im__V1__Receipt rc = IM__V1__RECEIPT__INIT;

	if(j->to.client_id == NULL) return;
	rc.has_status = 1;
	rc.status = st;
	rc.reason = (char *)why;
	rc.cmid = (char *)nz(r->cmid);
	rc.has_store_id = 1;
	rc.store_id = w->st.store_id;
	if(a == NULL){
		rc.timeline = (char *)r->to;
	}else{
		rc.timeline = (char *)a->timeline;
		rc.has_seq = 1;
		rc.seq = a->seq;
		rc.has_ts_ms = 1;
		rc.ts_ms = a->ts_ms;
		rc.has_duplicate = 1;
		rc.duplicate = a->duplicate;
		if(a->own_seq){
			rc.has_own_seq = 1;
			rc.own_seq = a->own_seq;
		}
	}
	im_work__reply(w, j, &rc.base, false);
}

static void refuse(struct im__worker *w, const struct im__job *j, const struct im__rec *r, Im__V1__Status st, const char *why)
{
	IM_STAT_ADD(w->p->metrics.worker_refused, 1);
	im_log(MOSQ_LOG_NOTICE, "im: not stored: a message from \"%s\" to %s (journal record %" PRIu64 "): %s.",
			r->sender, r->to, j->lsn, why);
	receipt(w, j, r, NULL, st, why);
}

/* new_timelines_per_min: a user may open so many timelines a minute (a
 * message to an inbox nobody wrote to before creates it). */
static bool new_timeline_ok(struct im__worker *w, const char *sender)
{
	double rate = w->cfg.new_timelines_per_min / 60.0;
	struct im__bucket *b;

	if(w->cfg.new_timelines_per_min == 0) return true;
	b = im_map__get(&w->new_tl, sender, strlen(sender));
	if(b == NULL){
		b = im_calloc(1, sizeof(*b));
		if(b == NULL || im_map__put(&w->new_tl, sender, strlen(sender), b) != MOSQ_ERR_SUCCESS){
			free(b);
			return true;
		}
	}
	return im_bucket__take(b, rate, w->cfg.new_timelines_per_min, 1.0, im_now_ms());
}

/* The record's body as sent: opened if the journal holds it sealed. */
static bool body_of(struct im__worker *w, const struct im__job *j, const struct im__rec *r,
		const void **body, size_t *len)
{
	const void *out;
	size_t n;

	*body = r->body;
	*len = r->body_len;
	if(r->key_id == 0) return true;
	if(w->crypt == NULL || im_crypt__open(w->crypt, r->key_id, "", j->lsn, r->body, r->body_len, &out, &n) != MOSQ_ERR_SUCCESS
			|| im_buf__reserve(&w->plain, n + 1) != MOSQ_ERR_SUCCESS){
		return false;
	}
	/* Copied: sealing the row for the store reuses the keyring's buffer. */
	memcpy(w->plain.data, out, n);
	*body = w->plain.data;
	*len = n;
	return true;
}

int im_work__message(struct im__worker *w, struct im__job *j)
{
	struct im__rec r;
	struct im__msg m;
	struct im__appended a;
	struct im__tl *to, *own = NULL;
	const void *body;
	size_t body_len;
	bool err = false, member, first;

	if(!im_rec__decode(j->data, j->len, &r) || !body_of(w, j, &r, &body, &body_len)){
		/* Cannot be applied however often it is tried: say so and go on
		 * rather than stall every message behind it. */
		im_log(MOSQ_LOG_ERR, "im: journal record %" PRIu64 " cannot be read (damaged, or sealed with a key no longer in plugin_opt_store_key_file): skipped.",
				j->lsn);
		IM_STAT_ADD(w->p->metrics.store_errors, 1);
		return MOSQ_ERR_SUCCESS;
	}
	if(r.kind == IM_REC_MESSAGE && r.to[0] == 'g'){
		member = im_work__is_member(w, r.to + 2, strlen(r.to + 2), r.sender, &err);
		if(err) return IM_WORK_RETRY;
		if(!member){
			refuse(w, j, &r, IM__V1__STATUS__FORBIDDEN, "not a member of the group");
			return MOSQ_ERR_SUCCESS;
		}
	}
	to = w->st.ops->timeline(&w->st, r.to, strlen(r.to), false, &err);
	if(err) return IM_WORK_RETRY;
	if(to == NULL){
		/* Not at replay: those were never judged (a crash) or already
		 * accepted once (a roll-forward), and the budget's clock is now. */
		if(r.kind == IM_REC_MESSAGE && !w->replaying && !new_timeline_ok(w, r.sender)){
			refuse(w, j, &r, IM__V1__STATUS__TOO_MANY, "too many new conversations a minute (plugin_opt_new_timelines_per_min)");
			return MOSQ_ERR_SUCCESS;
		}
		if((to = w->st.ops->timeline(&w->st, r.to, strlen(r.to), true, &err)) == NULL) return IM_WORK_RETRY;
	}
	if(r.own[0] && (own = w->st.ops->timeline(&w->st, r.own, strlen(r.own), true, &err)) == NULL) return IM_WORK_RETRY;

	memset(&m, 0, sizeof(m));
	m.ts_ms = r.ts_ms;
	m.sender = r.sender;
	m.cmid = nz(r.cmid);
	m.to = r.to;
	m.content_type = nz(r.ctype);
	m.expires_ms = r.expires_ms;
	m.flags = r.kind == IM_REC_SYSTEM ? IM__V1__HEADER_FLAG__FLAG_SYSTEM : 0;
	m.body = body;
	m.body_len = body_len;
	maybe_compress(w, &m);
	if(w->st.ops->append(&w->st, to, own, &m, &a) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;

	if(a.duplicate){
		IM_STAT_ADD(w->p->metrics.duplicates, 1);
	}else{
		IM_STAT_ADD(w->p->metrics.sequenced, 1);
		m.seq = a.seq;
		im_work__emit(w, im_work__frame(w, to->name, &m, body, body_len));
		if(own){
			m.seq = a.own_seq;
			im_work__emit(w, im_work__frame(w, own->name, &m, body, body_len));
		}
		if(own && w->cfg.presence == IM_PRESENCE_CONTACTS && r.kind == IM_REC_MESSAGE){
			if(w->st.ops->wrote(&w->st, r.sender, r.to + 2, &first) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
			if(first){
				struct im__done *d = im_work__done(IM_DONE_WROTE, strlen(r.sender) + strlen(r.to) + 2);
				size_t used = 0;
				if(d){
					d->sender = im_work__str(d, &used, r.sender);
					d->timeline = im_work__str(d, &used, r.to + 2);
					im_work__emit(w, d);
				}
			}
		}
	}
	receipt(w, j, &r, &a, IM__V1__STATUS__OK, NULL);
	return MOSQ_ERR_SUCCESS;
}
