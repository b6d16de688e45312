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

#include "im.h"

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
