/*
 * Private to libmosquitto-im-client: the frame codec and helpers shared by
 * its files. The wire types are protobuf-c's, generated from proto/im.proto
 * at build time and compiled into the library with hidden visibility: none
 * of them is part of the public API (include/mosquitto-im/client.h).
 */
#ifndef MIM_INTERNAL_H
#define MIM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "mosquitto-im/client.h"

#define MIM_NAME_MAX 64                  /* PROTOCOL.md 1: names are 1..64 bytes */
#define MIM_TL_MAX (MIM_NAME_MAX + 2)    /* u/<name>, g/<name> */
#define MIM_CMID_MAX 128
#define MIM_INFLATE_MAX (256u << 20)     /* the reference reader's raw_len limit (PROTOCOL.md 4) */

/* A frame (PROTOCOL.md 4): magic "IM", version 1, a big-endian header
 * length, the Header, the body. 0, or -1 when buf is not a frame of
 * version 1. *h is the caller's to free (im__v1__header__free_unpacked);
 * *body points into buf. */
int mim__frame_decode(const uint8_t *buf, size_t len, Im__V1__Header **h, const uint8_t **body, size_t *blen);

/* The body of a FLAG_COMPRESSED frame inflated (zlib), raw_len bytes, or
 * NULL (too large, corrupt, out of memory). The caller frees. */
uint8_t *mim__inflate(const uint8_t *body, size_t len, uint32_t raw_len);

/* A valid name (PROTOCOL.md 1) / timeline ("u/<name>", "g/<name>"). */
int mim__valid_name(const char *n);
int mim__valid_timeline(const char *tl);

/* A new UUID v4 in out (37 bytes). */
void mim__uuid(char out[37]);

int64_t mim__now_ms(void);

#endif
