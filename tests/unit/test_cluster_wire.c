/* What cluster brokers say over NATS (cluster/wire.c): subjects that no
 * name can turn into a wildcard or make collide, messages that round-trip,
 * nothing accepted that was not made with the key for that subject, and
 * events taken only while fresh, and once. */
#include <stdlib.h>

#include <mosquitto.h>

#include "base/limits.h"
#include "base/siphash.h"
#include "base/util.h"
#include "cluster/wire.h"
#include "worker/job.h"
#include "tap.h"

static const uint8_t key[16] = "0123456789abcdef";
#define NOW 1750000000000LL     /* the test's wall clock (ms) */
static struct im__cwire_seen seen;

static struct im__done *decode(const uint8_t *k, const char *subject, const void *data, size_t len,
		const char *prefix)
{
	return im_cwire__decode(k, subject, data, len, prefix, NOW, &seen);
}

static void subjects(void)
{
	char a[IM_CWIRE_SUBJECT_MAX], b[IM_CWIRE_SUBJECT_MAX];
	char name[IM_TL_MAX + 1];
	size_t i;

	CHECK(im_cwire__subject(a, sizeof(a), "im.01", "u/alice") > 0);
	CHECK_STR(a, "im.01.u.alice");
	CHECK(im_cwire__subject(a, sizeof(a), "im.01", "g/Team_1-x") > 0);
	CHECK_STR(a, "im.01.g.Team_1-x");
	/* NATS wildcards, separators, white space and the escape itself. */
	CHECK(im_cwire__subject(a, sizeof(a), "im.01", "u/a.b*c>d e~") > 0);
	CHECK_STR(a, "im.01.u.a~2eb~2ac~3ed~20e~7e");
	CHECK(strpbrk(a + strlen("im.01.u."), "*> .\t") == NULL);
	/* One-to-one: "~2e" spelled out is not the same as ".". */
	CHECK(im_cwire__subject(b, sizeof(b), "im.01", "u/a~2eb~2ac~3ed~20e~7e") > 0);
	CHECK(strcmp(a, b) != 0);
	/* UTF-8 bytes are escaped byte by byte. */
	CHECK(im_cwire__subject(a, sizeof(a), "im.01", "u/\xc3\xa9") > 0);
	CHECK_STR(a, "im.01.u.~c3~a9");
	/* Not a timeline. */
	CHECK_EQ(im_cwire__subject(a, sizeof(a), "im.01", "x/alice"), 0);
	CHECK_EQ(im_cwire__subject(a, sizeof(a), "im.01", "u/"), 0);
	CHECK_EQ(im_cwire__subject(a, sizeof(a), "im.01", "ualice"), 0);
	/* The longest name, every byte escaped, fits the declared size. */
	memcpy(name, "u/", 2);
	for(i = 0; i < IM_NAME_MAX; i++) name[2 + i] = '.';
	name[2 + IM_NAME_MAX] = '\0';
	CHECK(im_cwire__subject(a, sizeof(a), "im.0123456789abcdef", name) > 0);
	CHECK_EQ(im_cwire__subject(a, 20, "im.0123456789abcdef", name), 0);
}

static struct im__done frame_done(void)
{
	struct im__done d;

	memset(&d, 0, sizeof(d));
	d.kind = IM_DONE_FRAME;
	d.timeline = "u/bob";
	d.sender = "alice";
	d.cmid = "c-1";
	d.ctype = NULL;
	d.seq = 42;
	d.expiry_s = 7;
	d.payload = "IM\x01body";
	d.len = 7;
	return d;
}

static void frames(void)
{
	struct im__buf b = {0};
	struct im__done in = frame_done(), *out;
	size_t n, i;

	n = im_cwire__frame(&b, key, "im.01.u.bob", &in, NOW);
	CHECK(n > 0);
	out = decode(key, "im.01.u.bob", b.data, n, "im");
	CHECK(out != NULL);
	if(out){
		CHECK_EQ(out->kind, IM_DONE_FRAME);
		CHECK_STR(out->topic, "im/u/bob");
		CHECK_STR(out->timeline, "u/bob");
		CHECK_STR(out->sender, "alice");
		CHECK_STR(out->cmid, "c-1");
		CHECK(out->ctype == NULL);
		CHECK_EQ(out->seq, 42);
		CHECK_EQ(out->expiry_s, 7);
		CHECK(!out->event && out->remote && !out->repair);
		CHECK_EQ(out->len, 7);
		CHECK(memcmp(out->payload, "IM\x01body", 7) == 0);
		free(out);
	}
	/* Another subject (a replay elsewhere), another key, any flipped
	 * byte, any truncation: refused. */
	CHECK(decode(key, "im.01.u.eve", b.data, n, "im") == NULL);
	CHECK(decode((const uint8_t *)"fedcba9876543210", "im.01.u.bob", b.data, n, "im") == NULL);
	for(i = 0; i < n; i++){
		b.data[i] ^= 0x01;
		CHECK(decode(key, "im.01.u.bob", b.data, n, "im") == NULL);
		b.data[i] ^= 0x01;
	}
	for(i = 0; i < n; i++) CHECK(decode(key, "im.01.u.bob", b.data, i, "im") == NULL);
	/* An event: seq 0 and its topic under <prefix>/e/. */
	in.event = true;
	in.seq = 0;
	in.timeline = "g/team";
	n = im_cwire__frame(&b, key, "im.01.g.team", &in, NOW);
	out = decode(key, "im.01.g.team", b.data, n, "chat");
	CHECK(out != NULL);
	if(out){
		CHECK_STR(out->topic, "chat/e/g/team");
		CHECK(out->event);
		free(out);
	}
	/* A message must have a seq and an event none, even when signed. */
	in.seq = 5;
	n = im_cwire__frame(&b, key, "im.01.g.team", &in, NOW);
	CHECK(decode(key, "im.01.g.team", b.data, n, "im") == NULL);
	in.event = false;
	in.seq = 0;
	n = im_cwire__frame(&b, key, "im.01.g.team", &in, NOW);
	CHECK(decode(key, "im.01.g.team", b.data, n, "im") == NULL);
	/* A signed message naming no valid timeline is refused too. */
	in.seq = 1;
	in.timeline = "u/a+b";
	n = im_cwire__frame(&b, key, "im.01.g.team", &in, NOW);
	CHECK(decode(key, "im.01.g.team", b.data, n, "im") == NULL);
	im_buf__free(&b);
}

static void members(void)
{
	struct im__buf b = {0};
	const char *users[] = {"bob", "carol"};
	const char *bad[] = {"bob", "a/b"};
	struct im__done *out;
	size_t n;

	n = im_cwire__members(&b, key, "im.01.ctl", "team", IM_GROUP_ADD, "alice", users, 2);
	out = decode(key, "im.01.ctl", b.data, n, "im");
	CHECK(out != NULL);
	if(out){
		CHECK_EQ(out->kind, IM_DONE_MEMBERS);
		CHECK_STR(out->group, "team");
		CHECK_EQ(out->group_op, IM_GROUP_ADD);
		CHECK_STR(out->owner, "alice");
		CHECK_EQ(out->n_users, 2);
		CHECK_STR(out->users[0], "bob");
		CHECK_STR(out->users[1], "carol");
		free(out);
	}
	n = im_cwire__members(&b, key, "im.01.ctl", "team", IM_GROUP_ADD, "alice", NULL, 0);
	out = decode(key, "im.01.ctl", b.data, n, "im");
	CHECK(out != NULL && out->n_users == 0);
	free(out);
	n = im_cwire__members(&b, key, "im.01.ctl", "team", IM_GROUP_ADD, "alice", bad, 2);
	CHECK(decode(key, "im.01.ctl", b.data, n, "im") == NULL);
	n = im_cwire__members(&b, key, "im.01.ctl", "team", (enum im_group_op)99, "alice", users, 2); /* an op no decoder knows */
	CHECK(decode(key, "im.01.ctl", b.data, n, "im") == NULL);
	im_buf__free(&b);
}

/* An event (typing, a read mark) is taken only while fresh: sent within
 * IM_CWIRE_FRESH_MS of the receiver's clock, either way; and only once. */
static size_t event_at(struct im__buf *b, int64_t sent, const char *cmid)
{
	struct im__done in = frame_done();

	in.cmid = cmid;
	in.event = true;
	in.seq = 0;
	return im_cwire__frame(b, key, "im.01.u.bob", &in, sent);
}

static bool taken(const struct im__buf *b, size_t n, int64_t now)
{
	struct im__done *out = im_cwire__decode(key, "im.01.u.bob", b->data, n, "im", now, &seen);
	bool ok = out != NULL;

	if(out){
		CHECK(out->event && out->seq == 0);
		CHECK_STR(out->topic, "im/e/u/bob");
	}
	free(out);
	return ok;
}

static void events_fresh_once(void)
{
	struct im__buf b = {0}, other = {0};
	uint8_t old[128];
	size_t n, m, i;
	int64_t t;

	im_cwire__seen_free(&seen);
	n = event_at(&b, NOW, "e-1");
	CHECK(n > 0 && b.data[1] == IM_CWIRE_EVENT);
	/* Stale (the replay, 6 s later) or too far ahead: refused,
	 * and nothing recorded. */
	CHECK(!taken(&b, n, NOW + 6000));
	CHECK(!taken(&b, n, NOW + IM_CWIRE_FRESH_MS + 1));
	CHECK(!taken(&b, n, NOW - IM_CWIRE_FRESH_MS - 1));
	CHECK_EQ(seen.gen[0].count + seen.gen[1].count, 0);
	/* Taken at the window's edge (the receiver's clock behind the
	 * sender's by the most allowed)... */
	CHECK(taken(&b, n, NOW - IM_CWIRE_FRESH_MS));
	/* ... then every replay of it is refused: while it is fresh, however
	 * many generations other events make go by meanwhile, ... */
	CHECK(!taken(&b, n, NOW - IM_CWIRE_FRESH_MS));
	for(t = NOW - IM_CWIRE_FRESH_MS + 250; t <= NOW + IM_CWIRE_FRESH_MS; t += 250){
		m = event_at(&other, t, "e-2");
		CHECK(taken(&other, m, t));
		CHECK(!taken(&b, n, t));
	}
	/* ... and after, as stale. */
	CHECK(!taken(&b, n, NOW + IM_CWIRE_FRESH_MS + 1));
	CHECK(!taken(&b, n, NOW + 60000));
	/* What is kept stays bounded: entries go once no replay of theirs
	 * could be fresh. */
	m = event_at(&other, NOW + 60000, "e-2");
	CHECK(taken(&other, m, NOW + 60000));
	CHECK_EQ(seen.gen[0].count + seen.gen[1].count, 1);
	/* A changed sending time does not verify. */
	n = event_at(&b, NOW, "e-1");
	b.data[2] ^= 0x01;
	CHECK(!taken(&b, n, NOW));
	/* Events as the previous release sent them (a FRAME with the event
	 * flag, no time), even with a valid MAC: refused. */
	n = event_at(&b, NOW, "e-1");
	CHECK(n - 8 - 8 <= sizeof(old));
	old[0] = 1;
	old[1] = IM_CWIRE_FRAME;
	memcpy(old + 2, b.data + 2 + 8, n - 2 - 8 - 8);
	m = n - 8 - 8;
	{
		uint64_t mac = im_siphash(key, "im.01.u.bob", strlen("im.01.u.bob") + 1, old, m);
		for(i = 0; i < 8; i++) old[m + i] = (uint8_t)(mac >> (8 * i));
	}
	CHECK(im_cwire__decode(key, "im.01.u.bob", old, m + 8, "im", NOW, &seen) == NULL);
	im_buf__free(&b);
	im_buf__free(&other);
	im_cwire__seen_free(&seen);
}

int main(void)
{
	subjects();
	frames();
	members();
	events_fresh_once();
	im_cwire__seen_free(&seen);
	return TAP_DONE();
}
