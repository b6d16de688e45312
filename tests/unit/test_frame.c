/* Frame codec: round trips, and refusal of truncated or hostile input. */
#include <stdlib.h>

#include <mosquitto.h>

#include "base/siphash.h"
#include "codec/frame.h"
#include "tap.h"

static size_t make(uint8_t *out, size_t cap, const char *body)
{
	Im__V1__Header h = IM__V1__HEADER__INIT;

	h.timeline = "u/bob";
	h.has_seq = 1;
	h.seq = 42;
	h.sender = "alice";
	h.has_ts_ms = 1;
	h.ts_ms = 1700000000123;
	h.cmid = "m1";
	h.to = "u/bob";
	h.content_type = "text/plain";
	return im_frame__encode(out, cap, &h, body, strlen(body));
}

static void round_trip(void)
{
	uint8_t buf[256];
	size_t n = make(buf, sizeof(buf), "hello");
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;

	CHECK(n > IM_FRAME_FIXED + 5);
	CHECK(buf[0] == 'I' && buf[1] == 'M' && buf[2] == 1);
	CHECK_EQ(((size_t)buf[3] << 8 | buf[4]) + IM_FRAME_FIXED + 5, n);
	CHECK_EQ(im_frame__decode(buf, n, NULL, &h, &body, &blen), MOSQ_ERR_SUCCESS);
	CHECK_STR(h->timeline, "u/bob");
	CHECK_EQ(h->seq, 42);
	CHECK_STR(h->sender, "alice");
	CHECK_EQ(h->ts_ms, 1700000000123LL);
	CHECK_STR(h->cmid, "m1");
	CHECK_STR(h->content_type, "text/plain");
	CHECK_EQ(blen, 5);
	CHECK(!memcmp(body, "hello", 5));
	im__v1__header__free_unpacked(h, NULL);
}

static void empty_body_and_small_cap(void)
{
	uint8_t buf[256];
	size_t n = make(buf, sizeof(buf), "");
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;

	CHECK_EQ(im_frame__decode(buf, n, NULL, &h, &body, &blen), MOSQ_ERR_SUCCESS);
	CHECK_EQ(blen, 0);
	im__v1__header__free_unpacked(h, NULL);
	/* A buffer one byte short is refused, not overrun. */
	CHECK_EQ(make(buf, n - 1, ""), 0);
}

static void hostile(void)
{
	uint8_t buf[256], bad[256];
	size_t n = make(buf, sizeof(buf), "hello"), i;
	Im__V1__Header *h = (Im__V1__Header *)1;
	const uint8_t *body;
	size_t blen;

	/* Every truncation that cuts into the header fails cleanly. */
	for(i = 0; i < n - 5; i++){
		CHECK_EQ(im_frame__decode(buf, i, NULL, &h, &body, &blen), MOSQ_ERR_MALFORMED_PACKET);
		CHECK(h == NULL);
	}
	memcpy(bad, buf, n);
	bad[0] = 'X';
	CHECK_EQ(im_frame__decode(bad, n, NULL, &h, &body, &blen), MOSQ_ERR_MALFORMED_PACKET);
	memcpy(bad, buf, n);
	bad[2] = 2; /* unknown frame version */
	CHECK_EQ(im_frame__decode(bad, n, NULL, &h, &body, &blen), MOSQ_ERR_MALFORMED_PACKET);
	memcpy(bad, buf, n);
	bad[3] = 0xFF; /* header length beyond the buffer */
	CHECK_EQ(im_frame__decode(bad, n, NULL, &h, &body, &blen), MOSQ_ERR_MALFORMED_PACKET);
	/* Garbage where the header should be: a varint that never ends. */
	memset(bad + IM_FRAME_FIXED, 0xFF, n - IM_FRAME_FIXED);
	bad[3] = 0; bad[4] = 10;
	CHECK_EQ(im_frame__decode(bad, n, NULL, &h, &body, &blen), MOSQ_ERR_MALFORMED_PACKET);
	CHECK_EQ(im_frame__decode(NULL, 0, NULL, &h, &body, &blen), MOSQ_ERR_MALFORMED_PACKET);
}

static void unknown_fields_ignored(void)
{
	/* A newer writer adds field 99 to the header: readers still decode. */
	uint8_t buf[256];
	size_t n = make(buf, sizeof(buf), "x");
	size_t h = ((size_t)buf[3] << 8) | buf[4];
	uint8_t out[260];
	Im__V1__Header *hd;
	const uint8_t *body;
	size_t blen;

	memcpy(out, buf, IM_FRAME_FIXED + h);
	out[IM_FRAME_FIXED + h] = 0x98; /* field 99, varint: tag = 99<<3 = 792 = 0x98 0x06 */
	out[IM_FRAME_FIXED + h + 1] = 0x06;
	out[IM_FRAME_FIXED + h + 2] = 0x01;
	out[3] = (uint8_t)((h + 3) >> 8);
	out[4] = (uint8_t)((h + 3) & 0xFF);
	out[IM_FRAME_FIXED + h + 3] = 'x';
	CHECK_EQ(im_frame__decode(out, n + 3, NULL, &hd, &body, &blen), MOSQ_ERR_SUCCESS);
	CHECK_EQ(hd->seq, 42);
	CHECK_EQ(blen, 1);
	im__v1__header__free_unpacked(hd, NULL);
}

/* SipHash-2-4, the paper's test vector: key 00..0f, message 00..0e. */
static void siphash_vector(void)
{
	uint8_t key[16], msg[15];
	int i;

	for(i = 0; i < 16; i++) key[i] = (uint8_t)i;
	for(i = 0; i < 15; i++) msg[i] = (uint8_t)i;
	CHECK(im_siphash(key, msg, 15, NULL, 0) == 0xa129ca6149be45e5ULL);
	CHECK(im_siphash(key, msg, 7, msg + 7, 8) == 0xa129ca6149be45e5ULL); /* split input, same hash */
}

/* The plugin's tag: verifies only unchanged, only under its key; the
 * frame stays an ordinary frame for readers. */
static void sealed(void)
{
	Im__V1__Header h = IM__V1__HEADER__INIT, *u;
	uint8_t key[16] = {1, 2, 3}, other[16] = {9}, buf[256];
	const uint8_t *body;
	const char *tl;
	size_t n, i, blen, tl_len;
	uint64_t seq;

	h.timeline = "g/team";
	h.has_seq = 1;
	h.seq = 7;
	h.sender = "alice";
	n = im_frame__encode_sealed(buf, sizeof(buf), &h, "hi there", 8, key);
	CHECK(n == im_frame__sealed_size(&h, 8));
	CHECK(im_frame__verify(buf, n, key));
	CHECK(!im_frame__verify(buf, n, other));
	for(i = 0; i < n; i++){
		buf[i] ^= 0x01;
		CHECK(!im_frame__verify(buf, n, key));
		buf[i] ^= 0x01;
	}
	CHECK(!im_frame__verify(buf, n - 1, key));
	CHECK(im_frame__peek(buf, n, &tl, &tl_len, &seq));
	CHECK(tl_len == 6 && !memcmp(tl, "g/team", 6) && seq == 7);
	CHECK_EQ(im_frame__decode(buf, n, NULL, &u, &body, &blen), MOSQ_ERR_SUCCESS);
	CHECK(u->has_auth_tag);
	CHECK(blen == 8 && !memcmp(body, "hi there", 8));
	im__v1__header__free_unpacked(u, NULL);
	/* An unsealed frame never verifies. */
	n = im_frame__encode(buf, sizeof(buf), &h, "x", 1);
	CHECK(!im_frame__verify(buf, n, key));
}

int main(void)
{
	siphash_vector();
	sealed();
	round_trip();
	empty_body_and_small_cap();
	hostile();
	unknown_fields_ignored();
	return TAP_DONE();
}
