/*
 * The frame codec: the public header of mosquitto-im's wire format.
 *
 * A frame is 'I' 'M' <version> <header length, 16-bit big-endian>, then
 * an im.v1.Header (protobuf), then the message body exactly as sent
 * (docs/PROTOCOL.md section 4). The plugin encodes; examples/, clients and
 * the fuzz targets decode with the same functions. This header includes
 * nothing of the plugin's insides: only the generated im.pb-c.h.
 */
#ifndef IM_CODEC_FRAME_H
#define IM_CODEC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"

#define IM_FRAME_FIXED 5        /* 'I' 'M' version len_hi len_lo */
#define IM_FRAME_VERSION 1

/* Size of the frame for hdr and a body of body_len bytes, or 0 if the
 * encoded header does not fit the 16-bit length field. */
size_t im_frame__size(const Im__V1__Header *hdr, size_t body_len);

/* Writes the frame into out (cap bytes). Returns the frame length, or 0 if
 * cap is too small or the header too large. body may be NULL if body_len
 * is 0. */
size_t im_frame__encode(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len);

/* The same with the plugin's authentication tag (Header field 13) keyed
 * with key: what the plugin sends. im_frame__verify is true only for a
 * frame sealed with key and unchanged since. */
size_t im_frame__sealed_size(const Im__V1__Header *hdr, size_t body_len);
size_t im_frame__encode_sealed(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len, const uint8_t key[16]);
bool im_frame__verify(const uint8_t *buf, size_t len, const uint8_t key[16]);

/* Reads the timeline (field 1, pointing into buf) and seq of a frame's
 * header without unpacking it. False if buf is not a frame with a
 * timeline. */
/* Header.ts_ms of a frame (when it was sequenced), 0 if absent or not a
 * frame. */
int64_t im_frame__ts(const uint8_t *buf, size_t len);
bool im_frame__peek(const uint8_t *buf, size_t len, const char **tl, size_t *tl_len, uint64_t *seq);

/* Splits a frame. On success (MOSQ_ERR_SUCCESS) *hdr is an unpacked header
 * allocated with alloc (NULL = protobuf-c's default), free it with
 * im__v1__header__free_unpacked(*hdr, alloc); *body points into buf.
 * Returns MOSQ_ERR_MALFORMED_PACKET for a bad magic, an unknown version, a
 * truncated buffer or an undecodable header; nothing is allocated then. */
int im_frame__decode(const uint8_t *buf, size_t len, ProtobufCAllocator *alloc,
		Im__V1__Header **hdr, const uint8_t **body, size_t *body_len);

/* Inflates a body flagged FLAG_COMPRESSED to its raw_len bytes, for
 * readers (imcat, the reference client). Returns a malloc()ed buffer the
 * caller free()s, or NULL if the body does not inflate to exactly raw_len
 * bytes or raw_len is above IM_INFLATE_MAX (a decompression bomb). */
#define IM_INFLATE_MAX (256u * 1024 * 1024)
uint8_t *im_frame__inflate(const uint8_t *body, size_t len, uint32_t raw_len);

#endif
