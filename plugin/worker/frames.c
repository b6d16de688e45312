/*
 * What the worker builds for the broker thread to send [W]: a stored
 * message's frame (live, or as sync returns it), an event frame, and who
 * may read a group by the store's truth. Every handler uses these; they
 * use nothing of the handlers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "worker/internal.h"
#include "codec/frame.h"

#define SLEN(s) ((s) ? strlen(s) + 1 : 0)

bool im_work__is_member(struct im__worker *w, const char *group, size_t glen, const char *user, bool *err)
{
	struct im__group *g = w->st.ops->group(&w->st, group, glen, err);

	return g && im_map__get(&g->members, user, strlen(user)) != NULL;
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
	if(m->ref_seq){
		h->has_ref_seq = 1;
		h->ref_seq = m->ref_seq;
	}
	if(m->peer_seq){
		h->has_peer_seq = 1;
		h->peer_seq = m->peer_seq;
	}
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
	d->ts_ms = m->ts_ms;
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

struct im__done *im_work__event(struct im__worker *w, const char *tl, const Im__V1__Event *ev)
{
	Im__V1__Header h = IM__V1__HEADER__INIT;
	char topic[IM_TOPIC_MAX + 3];
	struct im__done *d;
	size_t n, used = 0;

	snprintf(topic, sizeof(topic), "%s/e/%s", w->cfg.prefix, tl);
	h.timeline = (char *)tl;
	h.sender = ev->user;
	h.has_ts_ms = 1;
	h.ts_ms = ev->ts_ms;
	h.has_store_id = 1;
	h.store_id = w->st.store_id;
	h.event = (Im__V1__Event *)ev;
	n = im_frame__sealed_size(&h, 0);
	if(n == 0 || (d = im_work__done(IM_DONE_FRAME, strlen(topic) + 1 + strlen(tl) + 1 + n)) == NULL) return NULL;
	d->topic = im_work__str(d, &used, topic);
	d->timeline = im_work__str(d, &used, tl);
	d->event = true;
	d->payload = d->data + used;
	d->len = im_frame__encode_sealed((uint8_t *)d->data + used, n, &h, NULL, 0, w->st.frame_key);
	return d;
}
