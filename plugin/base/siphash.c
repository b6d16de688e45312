/*
 * SipHash-2-4 (Aumasson and Bernstein, 2012): a keyed 64-bit hash, written
 * from the paper's description. It authenticates the frames the plugin
 * sends (frame.c, im_frame__seal) so the ACL check can tell them from
 * anything a client slipped past the publish path (a will), and keys the
 * fingerprints of raw-mode deliveries. Short inputs, so no SIMD tricks.
 */
#include <string.h>

#include "base/siphash.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for(i = 7; i >= 0; i--) v = (v << 8) | p[i];
	return v;
}

struct sip {
	uint64_t v0, v1, v2, v3;
	uint8_t tail[8];
	size_t tail_len, total;
};

static void round_(struct sip *s)
{
	s->v0 += s->v1; s->v1 = ROTL(s->v1, 13); s->v1 ^= s->v0; s->v0 = ROTL(s->v0, 32);
	s->v2 += s->v3; s->v3 = ROTL(s->v3, 16); s->v3 ^= s->v2;
	s->v0 += s->v3; s->v3 = ROTL(s->v3, 21); s->v3 ^= s->v0;
	s->v2 += s->v1; s->v1 = ROTL(s->v1, 17); s->v1 ^= s->v2; s->v2 = ROTL(s->v2, 32);
}

static void compress(struct sip *s, uint64_t m)
{
	s->v3 ^= m;
	round_(s);
	round_(s);
	s->v0 ^= m;
}

static void init(struct sip *s, const uint8_t key[16])
{
	uint64_t k0 = le64(key), k1 = le64(key + 8);

	s->v0 = k0 ^ 0x736f6d6570736575ULL;
	s->v1 = k1 ^ 0x646f72616e646f6dULL;
	s->v2 = k0 ^ 0x6c7967656e657261ULL;
	s->v3 = k1 ^ 0x7465646279746573ULL;
	s->tail_len = s->total = 0;
}

static void update(struct sip *s, const uint8_t *p, size_t n)
{
	s->total += n;
	while(n && s->tail_len){
		s->tail[s->tail_len++] = *p++;
		n--;
		if(s->tail_len == 8){
			compress(s, le64(s->tail));
			s->tail_len = 0;
		}
	}
	for(; n >= 8; p += 8, n -= 8) compress(s, le64(p));
	memcpy(s->tail, p, n);
	s->tail_len = n;
}

static uint64_t final(struct sip *s)
{
	uint64_t b = (uint64_t)(s->total & 0xff) << 56;
	size_t i;

	for(i = 0; i < s->tail_len; i++) b |= (uint64_t)s->tail[i] << (8 * i);
	compress(s, b);
	s->v2 ^= 0xff;
	round_(s);
	round_(s);
	round_(s);
	round_(s);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

uint64_t im_siphash(const uint8_t key[16], const void *a, size_t alen, const void *b, size_t blen)
{
	struct sip s;

	init(&s, key);
	update(&s, a, alen);
	if(blen) update(&s, b, blen);
	return final(&s);
}
