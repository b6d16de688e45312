/*
 * Encryption at rest (AES-256-GCM) [W, loaded on B].
 */
#ifndef IM_BASE_CRYPT_H
#define IM_BASE_CRYPT_H

#include <stddef.h>
#include <stdint.h>

#include "base/util.h"

#define IM_MAX_KEYS 16

struct im__key {
	uint16_t id;
	uint8_t key[32];
};

struct im__crypt {
	struct im__key keys[IM_MAX_KEYS];
	size_t n;               /* the last key seals */
	void *ctx;              /* EVP_CIPHER_CTX *, reused */
	struct im__buf buf;     /* sealed or opened body; valid until the next call */
};

/* Loads the key file. MOSQ_ERR_INVAL with a log line naming the line. */
int im_crypt__load(struct im__crypt *c, const char *path);
/* The same keys in a keyring of dst's own (a cipher context per thread). */
int im_crypt__clone(struct im__crypt *dst, const struct im__crypt *src);
void im_crypt__free(struct im__crypt *c);
/* Seals body in for (tl, seq) with the newest key. *out points into c->buf. */
int im_crypt__seal(struct im__crypt *c, const char *tl, uint64_t seq, const void *in, size_t len,
		const void **out, size_t *out_len, uint16_t *key_id);
/* Opens a sealed body. MOSQ_ERR_UNKNOWN if the key is unknown or the row
 * was altered or moved to another (tl, seq). *out points into c->buf. */
int im_crypt__open(struct im__crypt *c, uint16_t key_id, const char *tl, uint64_t seq,
		const void *in, size_t len, const void **out, size_t *out_len);

#endif
