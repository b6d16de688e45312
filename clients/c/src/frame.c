/*
 * The frame codec of the client library: a frame is 5 bytes and a
 * protobuf Header (PROTOCOL.md section 4), so this small reader replaces
 * the plugin's private codec/frame.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zlib.h>

#include "internal.h"

int mim__frame_decode(const uint8_t *buf, size_t len, Im__V1__Header **h, const uint8_t **body, size_t *blen)
{
	size_t hlen;

	*h = NULL;
	if(buf == NULL || len < 5 || buf[0] != 'I' || buf[1] != 'M' || buf[2] != 1) return -1;
	hlen = ((size_t)buf[3] << 8) | buf[4];
	if(5 + hlen > len) return -1;
	*h = im__v1__header__unpack(NULL, hlen, buf + 5);
	if(*h == NULL) return -1;
	*body = buf + 5 + hlen;
	*blen = len - 5 - hlen;
	return 0;
}

uint8_t *mim__inflate(const uint8_t *body, size_t len, uint32_t raw_len)
{
	uLongf out_len = raw_len;
	uint8_t *out;

	if(raw_len > MIM_INFLATE_MAX) return NULL;
	out = malloc(raw_len ? raw_len : 1);
	if(out == NULL) return NULL;
	if(uncompress(out, &out_len, body, (uLong)len) != Z_OK || out_len != raw_len){
		free(out);
		return NULL;
	}
	return out;
}

int mim__valid_name(const char *n)
{
	size_t len, i;

	if(n == NULL) return 0;
	len = strlen(n);
	if(len < 1 || len > MIM_NAME_MAX) return 0;
	for(i = 0; i < len; i++){
		unsigned char ch = (unsigned char)n[i];

		if(ch < 0x20 || ch == 0x7f || ch == '/' || ch == '+' || ch == '#' || ch == '$') return 0;
	}
	return 1;
}

int mim__valid_timeline(const char *tl)
{
	return tl && (tl[0] == 'u' || tl[0] == 'g') && tl[1] == '/' && mim__valid_name(tl + 2);
}

void mim__uuid(char out[37])
{
	uint8_t b[16];
	FILE *f = fopen("/dev/urandom", "rb");
	size_t i;

	if(f == NULL || fread(b, 1, sizeof(b), f) != sizeof(b)){
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		srand((unsigned)(ts.tv_nsec ^ ts.tv_sec));
		for(i = 0; i < sizeof(b); i++) b[i] = (uint8_t)rand();
	}
	if(f) fclose(f);
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int64_t mim__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the public decoder ---- */

struct frame_priv {
	struct mim_frame pub;
	Im__V1__Header *h;
	uint8_t *raw;
};

struct mim_frame *mim_frame_parse(const void *buf, size_t len)
{
	struct frame_priv *f;
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;

	if(mim__frame_decode(buf, len, &h, &body, &blen) != 0) return NULL;
	f = calloc(1, sizeof(*f));
	if(f == NULL){
		im__v1__header__free_unpacked(h, NULL);
		return NULL;
	}
	f->h = h;
	f->pub.wire_body_len = blen;
	if(h->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED){
		f->raw = mim__inflate(body, blen, h->raw_len);
		if(f->raw == NULL){
			f->pub.not_inflated = true;
			body = NULL;
			blen = 0;
		}else{
			body = f->raw;
			blen = h->raw_len;
		}
	}
	f->pub.msg.timeline = h->timeline;
	f->pub.msg.seq = h->seq;
	f->pub.msg.sender = h->sender;
	f->pub.msg.ts_ms = h->ts_ms;
	f->pub.msg.cmid = h->cmid;
	f->pub.msg.to = h->to;
	f->pub.msg.content_type = h->content_type;
	f->pub.msg.flags = h->flags;
	f->pub.msg.ref_seq = h->has_ref_seq ? h->ref_seq : 0;
	f->pub.msg.peer_seq = h->has_peer_seq ? h->peer_seq : 0;
	f->pub.msg.expires_ms = h->expires_ms;
	f->pub.msg.store_id = h->store_id;
	f->pub.msg.body_omitted = h->body_omitted;
	f->pub.msg.body_len = h->body_len;
	f->pub.msg.body = body;
	f->pub.msg.len = blen;
	if(h->event){
		f->pub.event_kind = h->event->kind;
		f->pub.event_user = h->event->user;
		f->pub.event_timeline = h->event->timeline;
		f->pub.event_seq = h->event->seq;
		f->pub.has_event_seq = h->event->has_seq;
		f->pub.event_typing = h->event->typing;
		f->pub.event_has_typing = h->event->has_typing;
		f->pub.event_member = h->event->member;
		f->pub.event_ts_ms = h->event->ts_ms;
	}
	return &f->pub;
}

void mim_frame_free(struct mim_frame *pub)
{
	struct frame_priv *f = (struct frame_priv *)pub;

	if(f == NULL) return;
	if(f->h) im__v1__header__free_unpacked(f->h, NULL);
	free(f->raw);
	free(f);
}
