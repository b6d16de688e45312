/* What cluster brokers say over NATS (cluster/wire.c): subjects that no
 * name can turn into a wildcard or make collide, messages that round-trip,
 * and nothing accepted that was not made with the key for that subject. */
#include <stdlib.h>

#include <mosquitto.h>

#include "base/limits.h"
#include "base/util.h"
#include "cluster/wire.h"
#include "worker/job.h"
#include "tap.h"

static const uint8_t key[16] = "0123456789abcdef";

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

	n = im_cwire__frame(&b, key, "im.01.u.bob", &in);
	CHECK(n > 0);
	out = im_cwire__decode(key, "im.01.u.bob", b.data, n, "im");
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
	CHECK(im_cwire__decode(key, "im.01.u.eve", b.data, n, "im") == NULL);
	CHECK(im_cwire__decode((const uint8_t *)"fedcba9876543210", "im.01.u.bob", b.data, n, "im") == NULL);
	for(i = 0; i < n; i++){
		b.data[i] ^= 0x01;
		CHECK(im_cwire__decode(key, "im.01.u.bob", b.data, n, "im") == NULL);
		b.data[i] ^= 0x01;
	}
	for(i = 0; i < n; i++) CHECK(im_cwire__decode(key, "im.01.u.bob", b.data, i, "im") == NULL);
	/* An event: seq 0 and its topic under <prefix>/e/. */
	in.event = true;
	in.seq = 0;
	in.timeline = "g/team";
	n = im_cwire__frame(&b, key, "im.01.g.team", &in);
	out = im_cwire__decode(key, "im.01.g.team", b.data, n, "chat");
	CHECK(out != NULL);
	if(out){
		CHECK_STR(out->topic, "chat/e/g/team");
		CHECK(out->event);
		free(out);
	}
	/* A message must have a seq and an event none, even when signed. */
	in.seq = 5;
	n = im_cwire__frame(&b, key, "im.01.g.team", &in);
	CHECK(im_cwire__decode(key, "im.01.g.team", b.data, n, "im") == NULL);
	in.event = false;
	in.seq = 0;
	n = im_cwire__frame(&b, key, "im.01.g.team", &in);
	CHECK(im_cwire__decode(key, "im.01.g.team", b.data, n, "im") == NULL);
	/* A signed message naming no valid timeline is refused too. */
	in.seq = 1;
	in.timeline = "u/a+b";
	n = im_cwire__frame(&b, key, "im.01.g.team", &in);
	CHECK(im_cwire__decode(key, "im.01.g.team", b.data, n, "im") == NULL);
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
	out = im_cwire__decode(key, "im.01.ctl", b.data, n, "im");
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
	out = im_cwire__decode(key, "im.01.ctl", b.data, n, "im");
	CHECK(out != NULL && out->n_users == 0);
	free(out);
	n = im_cwire__members(&b, key, "im.01.ctl", "team", IM_GROUP_ADD, "alice", bad, 2);
	CHECK(im_cwire__decode(key, "im.01.ctl", b.data, n, "im") == NULL);
	n = im_cwire__members(&b, key, "im.01.ctl", "team", (enum im_group_op)99, "alice", users, 2); /* an op no decoder knows */
	CHECK(im_cwire__decode(key, "im.01.ctl", b.data, n, "im") == NULL);
	im_buf__free(&b);
}

int main(void)
{
	subjects();
	frames();
	members();
	return TAP_DONE();
}
