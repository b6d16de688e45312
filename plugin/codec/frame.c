/*
 * The frame: what subscribers of im/u/... and im/g/... receive, and what
 * each element of SyncBatch.frames holds.
 *
 *   0..1  'I' 'M'
 *   2     frame version (IM_FRAME_VERSION)
 *   3..4  header length H, big-endian
 *   5..   H bytes of im.v1.Header, then the body, untouched
 *
 * The decoder trusts nothing: every length is checked against the buffer
 * before use, so it is safe on bytes from the network (and fuzzed).
 */
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <zlib.h>

#include "base/siphash.h"
#include "codec/frame.h"

size_t im_frame__size(const Im__V1__Header *hdr, size_t body_len)
{
	size_t h = im__v1__header__get_packed_size(hdr);

	if(h > UINT16_MAX) return 0;
	return IM_FRAME_FIXED + h + body_len;
}

size_t im_frame__encode(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len)
{
	size_t total = im_frame__size(hdr, body_len);
	size_t h;

	if(total == 0 || total > cap) return 0;
	h = total - IM_FRAME_FIXED - body_len;
	out[0] = 'I';
	out[1] = 'M';
	out[2] = IM_FRAME_VERSION;
	out[3] = (uint8_t)(h >> 8);
	out[4] = (uint8_t)(h & 0xFF);
	im__v1__header__pack(hdr, out + IM_FRAME_FIXED);
	if(body_len) memcpy(out + IM_FRAME_FIXED + h, body, body_len);
	return total;
}

int im_frame__decode(const uint8_t *buf, size_t len, ProtobufCAllocator *alloc,
		Im__V1__Header **hdr, const uint8_t **body, size_t *body_len)
{
	size_t h;
	Im__V1__Header *u;

	*hdr = NULL;
	if(buf == NULL || len < IM_FRAME_FIXED) return MOSQ_ERR_MALFORMED_PACKET;
	if(buf[0] != 'I' || buf[1] != 'M' || buf[2] != IM_FRAME_VERSION){
		return MOSQ_ERR_MALFORMED_PACKET;
	}
	h = ((size_t)buf[3] << 8) | buf[4];
	if(h > len - IM_FRAME_FIXED) return MOSQ_ERR_MALFORMED_PACKET;
	u = im__v1__header__unpack(alloc, h, buf + IM_FRAME_FIXED);
	if(u == NULL) return MOSQ_ERR_MALFORMED_PACKET;
	*hdr = u;
	*body = buf + IM_FRAME_FIXED + h;
	*body_len = len - IM_FRAME_FIXED - h;
	return MOSQ_ERR_SUCCESS;
}

uint8_t *im_frame__inflate(const uint8_t *body, size_t len, uint32_t raw_len)
{
	uint8_t *out;
	uLongf n = raw_len;

	if(raw_len > IM_INFLATE_MAX) return NULL;
	out = malloc(raw_len ? raw_len : 1);
	if(out == NULL) return NULL;
	if(uncompress(out, &n, body, (uLong)len) != Z_OK || n != raw_len){
		free(out);
		return NULL;
	}
	return out;
}

/* ---- the authentication tag ----
 * The last 9 bytes of a sealed frame's header are protobuf field 13
 * (fixed64 auth_tag): SipHash-2-4 under the store's frame key of every
 * other byte of the frame. Appending it by hand after the packed header is
 * valid protobuf (fields may come in any order) and keeps verification a
 * single pass over the bytes, with no re-encoding. */

#define TAG_KEY 0x69            /* (13 << 3) | wire type 1 (fixed64) */
#define TAG_LEN 9

static uint64_t tag_of(const uint8_t *frame, size_t len, size_t tag_at, const uint8_t key[16])
{
	return im_siphash(key, frame, tag_at, frame + tag_at + TAG_LEN, len - tag_at - TAG_LEN);
}

size_t im_frame__sealed_size(const Im__V1__Header *hdr, size_t body_len)
{
	size_t h = im__v1__header__get_packed_size(hdr);

	if(h + TAG_LEN > UINT16_MAX) return 0;
	return IM_FRAME_FIXED + h + TAG_LEN + body_len;
}

size_t im_frame__encode_sealed(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len, const uint8_t key[16])
{
	size_t total = im_frame__sealed_size(hdr, body_len), h, at, i;
	uint64_t tag;

	if(total == 0 || total > cap) return 0;
	h = total - IM_FRAME_FIXED - TAG_LEN - body_len;
	out[0] = 'I';
	out[1] = 'M';
	out[2] = IM_FRAME_VERSION;
	out[3] = (uint8_t)((h + TAG_LEN) >> 8);
	out[4] = (uint8_t)((h + TAG_LEN) & 0xFF);
	im__v1__header__pack(hdr, out + IM_FRAME_FIXED);
	at = IM_FRAME_FIXED + h;
	if(body_len) memcpy(out + at + TAG_LEN, body, body_len);
	tag = tag_of(out, total, at, key);
	out[at] = TAG_KEY;
	for(i = 0; i < 8; i++) out[at + 1 + i] = (uint8_t)(tag >> (8 * i));
	return total;
}

bool im_frame__verify(const uint8_t *buf, size_t len, const uint8_t key[16])
{
	size_t h, at, i;
	uint64_t tag = 0;

	if(buf == NULL || len < IM_FRAME_FIXED + TAG_LEN) return false;
	if(buf[0] != 'I' || buf[1] != 'M' || buf[2] != IM_FRAME_VERSION) return false;
	h = ((size_t)buf[3] << 8) | buf[4];
	if(h < TAG_LEN || h > len - IM_FRAME_FIXED) return false;
	at = IM_FRAME_FIXED + h - TAG_LEN;
	if(buf[at] != TAG_KEY) return false;
	for(i = 0; i < 8; i++) tag |= (uint64_t)buf[at + 1 + i] << (8 * i);
	return tag == tag_of(buf, len, at, key);
}

/* Reads a protobuf varint; NULL if it runs past end. */
static const uint8_t *varint(const uint8_t *b, const uint8_t *end, uint64_t *v)
{
	int shift;

	for(*v = 0, shift = 0; b < end && shift < 64; shift += 7){
		*v |= (uint64_t)(*b & 0x7F) << shift;
		if(!(*b++ & 0x80)) return b;
	}
	return NULL;
}

/* The header's timeline (field 1), seq (2) and ts_ms (4), read in place. */
static bool scan(const uint8_t *buf, size_t len, const char **tl, size_t *tl_len, uint64_t *seq, int64_t *ts)
{
	const uint8_t *h, *end;
	uint64_t key, v;
	size_t hl;

	*tl = NULL;
	*tl_len = 0;
	*seq = 0;
	*ts = 0;
	if(buf == NULL || len < IM_FRAME_FIXED || buf[0] != 'I' || buf[1] != 'M' || buf[2] != IM_FRAME_VERSION) return false;
	hl = ((size_t)buf[3] << 8) | buf[4];
	if(hl > len - IM_FRAME_FIXED) return false;
	h = buf + IM_FRAME_FIXED;
	end = h + hl;
	while(h < end){
		if((h = varint(h, end, &key)) == NULL) return false;
		switch(key & 7){
			case 0:
				if((h = varint(h, end, &v)) == NULL) return false;
				if((key >> 3) == 2) *seq = v;
				if((key >> 3) == 4) *ts = (int64_t)v;
				break;
			case 1: if(end - h < 8) return false; h += 8; break;
			case 5: if(end - h < 4) return false; h += 4; break;
			case 2:
				if((h = varint(h, end, &v)) == NULL || v > (uint64_t)(end - h)) return false;
				if((key >> 3) == 1){
					*tl = (const char *)h;
					*tl_len = (size_t)v;
				}
				h += v;
				break;
			default: return false;
		}
	}
	return *tl != NULL;
}

bool im_frame__peek(const uint8_t *buf, size_t len, const char **tl, size_t *tl_len, uint64_t *seq)
{
	int64_t ts;

	return scan(buf, len, tl, tl_len, seq, &ts);
}

int64_t im_frame__ts(const uint8_t *buf, size_t len)
{
	const char *tl;
	size_t tl_len;
	uint64_t seq;
	int64_t ts;

	return scan(buf, len, &tl, &tl_len, &seq, &ts) ? ts : 0;
}
