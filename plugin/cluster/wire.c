/*
 * What brokers of one cluster say to each other over NATS [any thread].
 *
 * Subjects: "<root>.u.<name>" and "<root>.g.<name>" carry a timeline's
 * frames and its events; "<root>.ctl" carries membership changes. root is
 * "im.<store id, 16 hex digits>", so two clusters that share a NATS
 * server never hear each other. A name is escaped so that no user name can
 * make a NATS wildcard or a token separator: bytes [A-Za-z0-9_-] stand for
 * themselves, every other byte is "~" and two lower-case hex digits. The
 * escaping is one-to-one, so two names never share a subject.
 *
 * A message is
 *   u8 version (1) | u8 type | fields … | u64 SipHash-2-4(subject, message)
 * little-endian; a string is u16 length (0xFFFF = absent) + bytes, a
 * payload u32 length + bytes. The MAC is keyed with the store's frame key,
 * which only the brokers know (it lives in the shared store): whoever can
 * publish on the NATS server still cannot make a broker deliver anything,
 * and a message replayed onto another subject does not verify.
 *   FRAME   u64 seq | u32 expiry_s | u8 event (0) | timeline | sender |
 *           cmid | ctype | payload
 *   EVENT   u64 sent_ms | the FRAME fields, with seq 0 and event 1
 *   MEMBERS group | op | owner | u16 n | n × user
 *
 * The MAC proves who wrote a message, not when; what a replay could do is
 * bounded by each type on its own. A FRAME carries its seq: the receiver's
 * ordering (order.c) drops what it delivered already. A MEMBERS message is
 * only a sign to read the group from the store (cluster.c). An EVENT
 * (typing, read marks) has neither, so it carries the sender's wall clock
 * (sent_ms): it is taken only within IM_CWIRE_FRESH_MS of the receiver's
 * clock, and only once (a repeat has the same MAC; the receiver keeps the
 * MACs it took for as long as they could be fresh). Events once went as a
 * FRAME with the event flag set and no time: refused now, like any type
 * a receiver does not know (a broker of that release refuses EVENT).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/defs.h"
#include "base/map.h"
#include "base/siphash.h"
#include "base/util.h"
#include "cluster/wire.h"
#include "codec/frame.h"
#include "codec/route.h"
#include "worker/job.h"

#define WIRE_VERSION 1
#define NO_STR 0xFFFF
#define MAC_LEN 8

size_t im_cwire__subject(char *out, size_t cap, const char *root, const char *tl)
{
	static const char hex[] = "0123456789abcdef";
	size_t n, i;
	int w;

	if(tl[0] != 'u' && tl[0] != 'g') return 0;
	if(tl[1] != '/') return 0;
	w = snprintf(out, cap, "%s.%c.", root, tl[0]);
	if(w < 0 || (size_t)w >= cap) return 0;
	n = (size_t)w;
	for(i = 2; tl[i]; i++){
		unsigned char c = (unsigned char)tl[i];
		bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';

		if(n + (plain ? 1 : 3) >= cap) return 0;
		if(plain){
			out[n++] = (char)c;
		}else{
			out[n++] = '~';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		}
	}
	if(i == 2) return 0;
	out[n] = '\0';
	return n;
}

/* ---- writing ---- */

struct wr {
	struct im__buf *b;
	size_t n;
	bool oom;
};

static void put(struct wr *w, const void *p, size_t len)
{
	if(w->oom || im_buf__reserve(w->b, w->n + len) != MOSQ_ERR_SUCCESS){
		w->oom = true;
		return;
	}
	if(len) memcpy(w->b->data + w->n, p, len);
	w->n += len;
}

static void put_le(struct wr *w, uint64_t v, int bytes)
{
	uint8_t b[8];
	int i;

	for(i = 0; i < bytes; i++) b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, (size_t)bytes);
}

static void put_str(struct wr *w, const char *s)
{
	size_t n;

	if(s == NULL){
		put_le(w, NO_STR, 2);
		return;
	}
	n = strlen(s);
	if(n >= NO_STR){
		w->oom = true;
		return;
	}
	put_le(w, n, 2);
	put(w, s, n);
}

static size_t finish(struct wr *w, const uint8_t key[16], const char *subject)
{
	uint64_t mac;

	if(w->oom) return 0;
	mac = im_siphash(key, subject, strlen(subject) + 1, w->b->data, w->n);
	put_le(w, mac, MAC_LEN);
	return w->oom ? 0 : w->n;
}

size_t im_cwire__frame(struct im__buf *b, const uint8_t key[16], const char *subject, const struct im__done *d,
		int64_t now_ms)
{
	struct wr w = {b, 0, false};

	if(d->len > UINT32_MAX) return 0;
	put_le(&w, WIRE_VERSION, 1);
	put_le(&w, d->event ? IM_CWIRE_EVENT : IM_CWIRE_FRAME, 1);
	if(d->event) put_le(&w, (uint64_t)now_ms, 8);
	put_le(&w, d->seq, 8);
	put_le(&w, d->expiry_s, 4);
	put_le(&w, d->event ? 1 : 0, 1);
	put_str(&w, d->timeline);
	put_str(&w, d->sender);
	put_str(&w, d->cmid);
	put_str(&w, d->ctype);
	put_le(&w, d->len, 4);
	put(&w, d->payload, d->len);
	return finish(&w, key, subject);
}

size_t im_cwire__members(struct im__buf *b, const uint8_t key[16], const char *subject, const char *group,
		enum im_group_op op, const char *owner, const char *const *users, size_t n)
{
	struct wr w = {b, 0, false};
	size_t i;

	if(n > UINT16_MAX) return 0;
	put_le(&w, WIRE_VERSION, 1);
	put_le(&w, IM_CWIRE_MEMBERS, 1);
	put_str(&w, group);
	put_str(&w, im_name__group_op(op));
	put_str(&w, owner);
	put_le(&w, n, 2);
	for(i = 0; i < n; i++) put_str(&w, users[i]);
	return finish(&w, key, subject);
}

/* ---- reading ---- */

static struct im__done *new_done(enum im_done_kind kind, size_t extra)
{
	struct im__done *d = im_calloc(1, sizeof(*d) + extra);

	if(d) d->kind = kind;
	return d;
}

struct rd {
	const uint8_t *p;
	size_t left;
	bool bad;
};

static uint64_t get_le(struct rd *r, int bytes)
{
	uint64_t v = 0;
	int i;

	if(r->bad || r->left < (size_t)bytes){
		r->bad = true;
		return 0;
	}
	for(i = bytes - 1; i >= 0; i--) v = (v << 8) | r->p[i];
	r->p += bytes;
	r->left -= (size_t)bytes;
	return v;
}

/* A string's bytes (not terminated) and length; absent: *s NULL. */
static void get_str(struct rd *r, const char **s, size_t *len)
{
	uint64_t n = get_le(r, 2);

	*s = NULL;
	*len = 0;
	if(r->bad || n == NO_STR) return;
	if(r->left < n || memchr(r->p, '\0', n)){
		r->bad = true;
		return;
	}
	*s = (const char *)r->p;
	*len = n;
	r->p += n;
	r->left -= n;
}

/* Copies a string into d's data block (terminated); NULL stays NULL. */
static const char *take(struct im__done *d, size_t *used, const char *s, size_t len)
{
	char *out;

	if(s == NULL) return NULL;
	out = d->data + *used;
	memcpy(out, s, len);
	out[len] = '\0';
	*used += len + 1;
	return out;
}

/* A FRAME's fields; event: what the type says the flag must be. */
static struct im__done *decode_frame(struct rd *r, const char *prefix, bool event_type)
{
	const char *tl, *sender, *cmid, *ctype;
	size_t tl_len, sender_len, cmid_len, ctype_len, plen, used = 0, topic_len;
	uint64_t seq = get_le(r, 8), len;
	uint32_t expiry = (uint32_t)get_le(r, 4);
	bool event = get_le(r, 1) != 0;
	struct im__route route;
	struct im__done *d;
	char tlbuf[IM_TL_MAX + 1];

	get_str(r, &tl, &tl_len);
	get_str(r, &sender, &sender_len);
	get_str(r, &cmid, &cmid_len);
	get_str(r, &ctype, &ctype_len);
	len = get_le(r, 4);
	if(r->bad || tl == NULL || tl_len > IM_TL_MAX || len != r->left || event != event_type) return NULL;
	plen = (size_t)len;
	memcpy(tlbuf, tl, tl_len);
	tlbuf[tl_len] = '\0';
	if(im_route__parse_timeline(tlbuf, &route) != MOSQ_ERR_SUCCESS) return NULL;
	/* A message has a seq, an event none: as on the broker's own path. */
	if(event ? seq != 0 : seq == 0) return NULL;
	topic_len = strlen(prefix) + 1 + (event ? 2 : 0) + tl_len;
	d = new_done(IM_DONE_FRAME, topic_len + 1 + tl_len + 1 + (sender ? sender_len + 1 : 0)
			+ (cmid ? cmid_len + 1 : 0) + (ctype ? ctype_len + 1 : 0) + plen);
	if(d == NULL) return NULL;
	snprintf(d->data, topic_len + 1, "%s/%s%s", prefix, event ? "e/" : "", tlbuf);
	d->topic = d->data;
	used = topic_len + 1;
	d->timeline = take(d, &used, tl, tl_len);
	d->sender = take(d, &used, sender, sender_len);
	d->cmid = take(d, &used, cmid, cmid_len);
	d->ctype = take(d, &used, ctype, ctype_len);
	d->seq = seq;
	d->expiry_s = expiry;
	d->event = event;
	d->remote = true;
	if(plen) memcpy(d->data + used, r->p, plen);
	d->payload = d->data + used;
	d->len = plen;
	/* When it was sequenced: the order filter tells a frame stored after
	 * a device came online from one NATS carried late (payload raw: 0,
	 * unknown). */
	if(!event) d->ts_ms = im_frame__ts(d->payload, plen);
	return d;
}

static struct im__done *decode_members(struct rd *r)
{
	const char *group, *op, *owner, *u;
	size_t glen, oplen, olen, ulen, n, i, used, strings;
	enum im_group_op gop;
	struct rd scan;
	struct im__done *d;
	const char **users;

	get_str(r, &group, &glen);
	get_str(r, &op, &oplen);
	get_str(r, &owner, &olen);
	n = (size_t)get_le(r, 2);
	if(r->bad || group == NULL || op == NULL || owner == NULL || glen > IM_NAME_MAX || olen > IM_NAME_MAX) return NULL;
	if(!im_name__group_op_parse(op, oplen, &gop)) return NULL;
	/* First pass: check the users and size the block. */
	scan = *r;
	strings = 0;
	for(i = 0; i < n; i++){
		get_str(&scan, &u, &ulen);
		if(scan.bad || u == NULL || ulen > IM_NAME_MAX) return NULL;
		strings += ulen + 1;
	}
	if(scan.left != 0) return NULL;
	d = new_done(IM_DONE_MEMBERS, n * sizeof(char *) + glen + 1 + olen + 1 + strings);
	if(d == NULL) return NULL;
	users = (const char **)(void *)d->data;
	used = n * sizeof(char *);
	d->group = take(d, &used, group, glen);
	d->group_op = gop;
	d->owner = take(d, &used, owner, olen);
	for(i = 0; i < n; i++){
		get_str(r, &u, &ulen);
		users[i] = take(d, &used, u, ulen);
	}
	d->users = users;
	d->n_users = n;
	d->remote = true;
	if(!im_name__valid(d->group, glen) || !im_name__valid(d->owner, olen)){
		free(d);
		return NULL;
	}
	for(i = 0; i < n; i++){
		if(!im_name__valid(users[i], strlen(users[i]))){
			free(d);
			return NULL;
		}
	}
	return d;
}

/* ---- events: fresh, and once ---- */

#define SEEN_GEN_MS (2 * IM_CWIRE_FRESH_MS)

void im_cwire__seen_free(struct im__cwire_seen *s)
{
	im_map__free(&s->gen[0], NULL);
	im_map__free(&s->gen[1], NULL);
	s->rotated_ms = 0;
}

/* An event taken at now was sent at most IM_CWIRE_FRESH_MS ahead of now,
 * so a replay of it is fresh until 2 × IM_CWIRE_FRESH_MS after now at the
 * latest: its MAC must be kept that long. The current generation is at
 * most SEEN_GEN_MS old (rotation is checked before each entry is added),
 * so what the previous one holds is older than SEEN_GEN_MS when it goes. */
static void seen_rotate(struct im__cwire_seen *s, int64_t now)
{
	if(now - s->rotated_ms < SEEN_GEN_MS) return;
	im_map__free(&s->gen[1], NULL);
	if(now - s->rotated_ms < 2 * SEEN_GEN_MS){
		s->gen[1] = s->gen[0];
	}else{
		im_map__free(&s->gen[0], NULL);
	}
	memset(&s->gen[0], 0, sizeof(s->gen[0]));
	s->rotated_ms = now;
}

/* Records mac; false if it was there (a replay) or cannot be recorded. */
static bool seen_once(struct im__cwire_seen *s, uint64_t mac, int64_t now)
{
	char k[MAC_LEN];
	int i;

	for(i = 0; i < MAC_LEN; i++) k[i] = (char)(mac >> (8 * i));
	seen_rotate(s, now);
	if(im_map__get(&s->gen[0], k, MAC_LEN) || im_map__get(&s->gen[1], k, MAC_LEN)) return false;
	return im_map__put(&s->gen[0], k, MAC_LEN, (void *)1) == MOSQ_ERR_SUCCESS;
}

static struct im__done *decode_event(struct rd *r, const char *prefix, uint64_t mac, int64_t now,
		struct im__cwire_seen *seen)
{
	uint64_t sent = get_le(r, 8);
	struct im__done *d;

	if(r->bad || sent > (uint64_t)INT64_MAX) return NULL;
	if(now - (int64_t)sent > IM_CWIRE_FRESH_MS || (int64_t)sent - now > IM_CWIRE_FRESH_MS) return NULL;
	if((d = decode_frame(r, prefix, true)) == NULL) return NULL;
	if(!seen_once(seen, mac, now)){
		free(d);
		return NULL;
	}
	return d;
}

struct im__done *im_cwire__decode(const uint8_t key[16], const char *subject, const void *data, size_t len,
		const char *prefix, int64_t now_ms, struct im__cwire_seen *seen)
{
	const uint8_t *p = data;
	struct rd r;
	uint64_t mac = 0;
	int i;

	if(len < 2 + MAC_LEN) return NULL;
	for(i = MAC_LEN - 1; i >= 0; i--) mac = (mac << 8) | p[len - MAC_LEN + (size_t)i];
	if(mac != im_siphash(key, subject, strlen(subject) + 1, p, len - MAC_LEN)) return NULL;
	r.p = p + 2;
	r.left = len - MAC_LEN - 2;
	r.bad = false;
	if(p[0] != WIRE_VERSION) return NULL;
	switch(p[1]){
		case IM_CWIRE_FRAME: return decode_frame(&r, prefix, false);
		case IM_CWIRE_EVENT: return decode_event(&r, prefix, mac, now_ms, seen);
		case IM_CWIRE_MEMBERS: return decode_members(&r);
		default: return NULL;
	}
}
