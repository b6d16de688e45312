/*
 * A message record as journaled: what the broker thread acknowledged,
 * before it has a seq. Little-endian, length-prefixed:
 *
 *   u8 version (2) | u8 kind | i64 ts_ms | i64 expires_ms | u16 key_id
 *   u8 op | u64 ref_seq                      (version 2 on)
 *   u8 len sender | u8 len to | u8 len own | u8 len cmid | u16 len ctype
 *   the five strings in that order, each followed by a NUL byte
 *   u32 body length | body
 *
 * key_id is not 0 when the body is sealed (plugin_opt_store_key_file): the
 * journal holds no readable body either, as the database does not.
 *
 * The NULs let the decoder hand out C strings pointing into the record, no
 * copy. Every length is checked on decode: the journal is read back after
 * a crash, and a damaged record must be refused, not trusted.
 */
#include <string.h>

#include "codec/record.h"

#define REC_VERSION 2
#define REC_FIXED_V1 (1 + 1 + 8 + 8 + 2 + 4 + 2 + 5 + 4)
#define REC_FIXED (REC_FIXED_V1 + 1 + 8)

size_t im_rec__size(const struct im__rec *r)
{
	return REC_FIXED + strlen(r->sender) + strlen(r->to) + strlen(r->own) + strlen(r->cmid)
		+ strlen(r->ctype) + r->body_len;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
	int i;

	for(i = 0; i < 8; i++) *p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for(i = 7; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}

void im_rec__encode(uint8_t *out, const struct im__rec *r)
{
	const char *s[5] = {r->sender, r->to, r->own, r->cmid, r->ctype};
	size_t l[5], i;
	uint8_t *p = out;

	for(i = 0; i < 5; i++) l[i] = strlen(s[i]);
	*p++ = REC_VERSION;
	*p++ = r->kind;
	p = put64(p, (uint64_t)r->ts_ms);
	p = put64(p, (uint64_t)r->expires_ms);
	*p++ = (uint8_t)(r->key_id & 0xff);
	*p++ = (uint8_t)(r->key_id >> 8);
	*p++ = r->op;
	p = put64(p, r->ref_seq);
	for(i = 0; i < 4; i++) *p++ = (uint8_t)l[i];
	*p++ = (uint8_t)(l[4] & 0xff);
	*p++ = (uint8_t)(l[4] >> 8);
	for(i = 0; i < 5; i++){
		memcpy(p, s[i], l[i]);
		p += l[i];
		*p++ = '\0';
	}
	for(i = 0; i < 4; i++) *p++ = (uint8_t)(r->body_len >> (8 * i));
	if(r->body_len) memcpy(p, r->body, r->body_len);
}

bool im_rec__decode(const uint8_t *buf, size_t len, struct im__rec *r)
{
	const char **s[5] = {&r->sender, &r->to, &r->own, &r->cmid, &r->ctype};
	size_t l[5], i, at;
	uint32_t body = 0;

	memset(r, 0, sizeof(*r));
	/* Version 1 records (before edits and recalls) are still read: a
	 * journal written by the previous release is replayed after an upgrade. */
	if(len < REC_FIXED_V1 || (buf[0] != 1 && buf[0] != REC_VERSION) || buf[1] > IM_REC_SYSTEM) return false;
	if(buf[0] == REC_VERSION && len < REC_FIXED) return false;
	r->kind = buf[1];
	r->ts_ms = (int64_t)get64(buf + 2);
	r->expires_ms = (int64_t)get64(buf + 10);
	r->key_id = (uint16_t)(buf[18] | (buf[19] << 8));
	at = 20;
	if(buf[0] == REC_VERSION){
		r->op = buf[20];
		r->ref_seq = get64(buf + 21);
		if(r->op > IM_REC_RECALL || (r->op != IM_REC_PLAIN && r->ref_seq == 0)) return false;
		at = 29;
	}
	for(i = 0; i < 4; i++) l[i] = buf[at + i];
	l[4] = (size_t)buf[at + 4] | ((size_t)buf[at + 5] << 8);
	at += 6;
	for(i = 0; i < 5; i++){
		if(l[i] + 1 > len - at || buf[at + l[i]] != '\0' || memchr(buf + at, 0, l[i])) return false;
		*s[i] = (const char *)buf + at;
		at += l[i] + 1;
	}
	if(len - at < 4) return false;
	for(i = 0; i < 4; i++) body |= (uint32_t)buf[at + i] << (8 * i);
	at += 4;
	if(body != len - at) return false;
	r->body = buf + at;
	r->body_len = body;
	return l[0] > 0 && l[1] > 2;
}
