/* The journal: append and replay, exactly the records after the applied
 * position, a torn tail dropped, damage before the end refused, segments
 * cut once applied, and a store rolled back behind the journal detected.
 * Also the record codec it carries. */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <mosquitto.h>

#include "codec/record.h"
#include "journal/journal.h"
#include "tap.h"

static char dir[256];

struct seen { uint64_t lsn[64]; char body[64][32]; int n; int fail_at; };

static int collect(void *ctx, uint64_t lsn, const uint8_t *payload, size_t len)
{
	struct seen *s = ctx;

	if(s->fail_at && s->n + 1 == s->fail_at) return -1;
	s->lsn[s->n] = lsn;
	snprintf(s->body[s->n], sizeof(s->body[0]), "%.*s", (int)len, (const char *)payload);
	s->n++;
	return 0;
}

static int segments(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while(d && (e = readdir(d))) n += strstr(e->d_name, ".log") != NULL;
	if(d) closedir(d);
	return n;
}

static void wipe(void)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK_EQ(system(cmd), 0);
}

static void append_replay(void)
{
	struct im__journal j;
	struct seen s = {0};
	uint64_t lsn;
	bool gap;
	char b[16];
	int i;

	wipe();
	CHECK_EQ(im_journal__open(&j, dir, false, 0, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK_EQ(s.n, 0);
	CHECK(!gap);
	for(i = 1; i <= 5; i++){
		snprintf(b, sizeof(b), "rec%d", i);
		CHECK_EQ(im_journal__append(&j, b, strlen(b), &lsn), MOSQ_ERR_SUCCESS);
		CHECK_EQ(lsn, i);
	}
	im_journal__close(&j);
	/* Everything after the applied position, in order, once. */
	CHECK_EQ(im_journal__open(&j, dir, false, 2, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK_EQ(s.n, 3);
	CHECK_EQ(s.lsn[0], 3);
	CHECK_STR(s.body[2], "rec5");
	CHECK(!gap);
	CHECK_EQ(im_journal__append(&j, "next", 4, &lsn), MOSQ_ERR_SUCCESS);
	CHECK_EQ(lsn, 6); /* numbering continues */
	im_journal__close(&j);
	/* A replay function that fails fails the open. */
	memset(&s, 0, sizeof(s));
	s.fail_at = 2;
	CHECK(im_journal__open(&j, dir, false, 0, collect, &s, &gap) != MOSQ_ERR_SUCCESS);
	im_journal__close(&j);
}

static void last_segment(char *path, size_t cap)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char best[256] = "";

	while(d && (e = readdir(d))){
		if(strstr(e->d_name, ".log") && strcmp(e->d_name, best) > 0) snprintf(best, sizeof(best), "%s", e->d_name);
	}
	if(d) closedir(d);
	snprintf(path, cap, "%s/%s", dir, best);
}

static void torn_tail(void)
{
	struct im__journal j;
	struct seen s = {0};
	char path[600];
	uint64_t lsn;
	bool gap;
	int fd;

	wipe();
	CHECK_EQ(im_journal__open(&j, dir, false, 0, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK_EQ(im_journal__append(&j, "whole", 5, &lsn), MOSQ_ERR_SUCCESS);
	im_journal__close(&j);
	/* Half a record at the end (a write cut short): never acknowledged. */
	last_segment(path, sizeof(path));
	fd = open(path, O_WRONLY | O_APPEND);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, "\x40\x00\x00\x00\x01\x02", 6), 6);
	close(fd);
	CHECK_EQ(im_journal__open(&j, dir, false, 0, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK_EQ(s.n, 1);
	CHECK_STR(s.body[0], "whole");
	CHECK_EQ(im_journal__append(&j, "after", 5, &lsn), MOSQ_ERR_SUCCESS);
	CHECK_EQ(lsn, 2);
	im_journal__close(&j);
	memset(&s, 0, sizeof(s));
	CHECK_EQ(im_journal__open(&j, dir, false, 0, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK_EQ(s.n, 2);
	CHECK_STR(s.body[1], "after");
	im_journal__close(&j);
}

static void damage_and_cut(void)
{
	struct im__journal j;
	struct seen s = {0};
	char first[400], cmd[900];
	uint64_t lsn;
	bool gap;
	int i, fd;

	wipe();
	CHECK_EQ(im_journal__open(&j, dir, false, 0, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	j.rotate_bytes = 64; /* a segment per record or two */
	for(i = 0; i < 8; i++) CHECK_EQ(im_journal__append(&j, "0123456789abcdef0123456789", 26, &lsn), MOSQ_ERR_SUCCESS);
	im_journal__close(&j);
	CHECK(segments() >= 4);
	/* Segments whose records are all applied go; the newest stays. */
	im_journal__cut(dir, 5);
	CHECK(segments() >= 2);
	memset(&s, 0, sizeof(s));
	CHECK_EQ(im_journal__open(&j, dir, false, 5, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK(!gap);
	CHECK_EQ(s.n, 3);
	CHECK_EQ(s.lsn[0], 6);
	im_journal__close(&j);
	/* A store rolled back to before what the journal still holds. */
	memset(&s, 0, sizeof(s));
	CHECK_EQ(im_journal__open(&j, dir, false, 1, collect, &s, &gap), MOSQ_ERR_SUCCESS);
	CHECK(gap);
	im_journal__close(&j);
	/* Damage in a segment that is not the last: refused, not skipped. */
	snprintf(cmd, sizeof(cmd), "ls %s/*.log | head -1", dir);
	{
		FILE *p = popen(cmd, "r");
		CHECK(p && fgets(first, sizeof(first), p));
		if(p) pclose(p);
		first[strcspn(first, "\n")] = '\0';
	}
	fd = open(first, O_WRONLY);
	CHECK(fd >= 0);
	CHECK_EQ(pwrite(fd, "XXXX", 4, 20), 4);
	close(fd);
	memset(&s, 0, sizeof(s));
	CHECK(im_journal__open(&j, dir, false, 0, collect, &s, &gap) != MOSQ_ERR_SUCCESS);
	im_journal__close(&j);
}

static void records(void)
{
	struct im__rec r = {0}, d;
	uint8_t buf[512];
	size_t n, i;

	r.kind = IM_REC_MESSAGE;
	r.ts_ms = 1700000000123;
	r.expires_ms = 1700000060123;
	r.key_id = 7;
	r.op = IM_REC_EDIT;
	r.ref_seq = 42;
	r.sender = "alice";
	r.to = "u/bob";
	r.own = "u/alice";
	r.cmid = "c-1";
	r.ctype = "text/plain";
	r.body = "hello\0world";
	r.body_len = 11;
	n = im_rec__size(&r);
	CHECK(n < sizeof(buf));
	im_rec__encode(buf, &r);
	CHECK(im_rec__decode(buf, n, &d));
	CHECK_EQ(d.ts_ms, r.ts_ms);
	CHECK_EQ(d.expires_ms, r.expires_ms);
	CHECK_EQ(d.key_id, 7);
	CHECK_EQ(d.op, IM_REC_EDIT);
	CHECK_EQ(d.ref_seq, 42);
	CHECK_STR(d.sender, "alice");
	CHECK_STR(d.to, "u/bob");
	CHECK_STR(d.own, "u/alice");
	CHECK_STR(d.cmid, "c-1");
	CHECK_STR(d.ctype, "text/plain");
	CHECK_EQ(d.body_len, 11);
	CHECK(!memcmp(d.body, "hello\0world", 11));
	/* Every shorter length, and a longer one, is refused. */
	for(i = 0; i < n; i++) CHECK(!im_rec__decode(buf, i, &d));
	CHECK(!im_rec__decode(buf, n + 1, &d));
	/* A string length pointing past its NUL is refused. */
	buf[29]++;
	CHECK(!im_rec__decode(buf, n, &d));
	buf[29]--;
	/* An edit without the seq it changes is refused. */
	memset(buf + 21, 0, 8);
	CHECK(!im_rec__decode(buf, n, &d));
	r.op = IM_REC_PLAIN;
	r.ref_seq = 0;
	im_rec__encode(buf, &r);
	CHECK(im_rec__decode(buf, n, &d));
	/* A version 1 record (the release before) still reads: no op, no ref. */
	{
		uint8_t v1[512];
		memcpy(v1, buf, 20);
		v1[0] = 1;
		memcpy(v1 + 20, buf + 29, n - 29);
		CHECK(im_rec__decode(v1, n - 9, &d));
		CHECK_STR(d.cmid, "c-1");
		CHECK_EQ(d.op, IM_REC_PLAIN);
		CHECK(d.body_len == 11 && !memcmp(d.body, "hello\0world", 11));
	}
	buf[0] = 9; /* unknown version */
	CHECK(!im_rec__decode(buf, n, &d));
}

int main(void)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	snprintf(dir, sizeof(dir), "%s/im-test-journal-%d", tmp, (int)getpid());
	append_replay();
	torn_tail();
	damage_and_cut();
	records();
	wipe();
	return TAP_DONE();
}
