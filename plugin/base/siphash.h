/*
 * SipHash-2-4 [any thread]: the frame tag, fingerprints, NATS MACs.
 */
#ifndef IM_BASE_SIPHASH_H
#define IM_BASE_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/* SipHash-2-4 of a || b under key. */
uint64_t im_siphash(const uint8_t key[16], const void *a, size_t alen, const void *b, size_t blen);

#endif
