/* Cluster delivery in seq order (cluster/order.c) without NATS or a
 * broker: frames in and out of order, duplicates, gaps that close by
 * themselves or by a repair, the hold's bound, anchoring a newly heard
 * timeline, tail checks and forgetting, replays. The clock is the test's. */
#include <stdarg.h>
#include <stdlib.h>

#include <mosquitto.h>

#include "base/stats.h"
#include "cluster/order.h"
#include "worker/job.h"
#include "tap.h"

#define T0 1000000              /* the test's clock starts here (ms) */
#define MAX_PUB (HOLD_MAX + 64)
#define MAX_REP 64

/* What the hooks saw. */
static struct {
	uint64_t pub[MAX_PUB];
	char pub_tl[MAX_PUB][16];
	bool pub_event[MAX_PUB];
	size_t n_pub;
	bool pub_not_frame;         /* a publish whose d->kind was not FRAME */
	struct {
		char tl[16];
		uint64_t after, upto;
		bool anchor;
	} rep[MAX_REP];
	size_t n_rep;
	bool refuse_repair;         /* the repair hook says "out of memory" */
	const char *heard[4];       /* timelines this broker hears */
} h;

static struct im__metrics metrics;

static void on_publish(void *ctx, struct im__done *d)
{
	(void)ctx;
	if(d->kind != IM_DONE_FRAME) h.pub_not_frame = true;
	if(h.n_pub == MAX_PUB) return;
	h.pub[h.n_pub] = d->seq;
	snprintf(h.pub_tl[h.n_pub], sizeof(h.pub_tl[0]), "%s", d->timeline);
	h.pub_event[h.n_pub] = d->event;
	h.n_pub++;
}

static bool on_repair(void *ctx, const char *tl, uint64_t after, uint64_t upto, bool anchor)
{
	(void)ctx;
	if(h.refuse_repair || h.n_rep == MAX_REP) return false;
	snprintf(h.rep[h.n_rep].tl, sizeof(h.rep[0].tl), "%s", tl);
	h.rep[h.n_rep].after = after;
	h.rep[h.n_rep].upto = upto;
	h.rep[h.n_rep].anchor = anchor;
	h.n_rep++;
	return true;
}

static bool on_heard(void *ctx, const char *tl)
{
	size_t i;

	(void)ctx;
	for(i = 0; i < sizeof(h.heard) / sizeof(h.heard[0]); i++){
		if(h.heard[i] && !strcmp(h.heard[i], tl)) return true;
	}
	return false;
}

static void setup(struct im__order *o)
{
	struct im__order_hooks hooks = {.ctx = NULL, .publish = on_publish, .repair = on_repair, .heard = on_heard};

	memset(&h, 0, sizeof(h));
	memset(&metrics, 0, sizeof(metrics));
	h.heard[0] = "u/a";
	h.heard[1] = "g/team";
	im_order__init(o, &hooks, &metrics);
}

/* A frame as the worker or the wire hands it over (freed with free()). */
static struct im__done *frame(const char *tl, uint64_t seq, bool repair)
{
	struct im__done *d = calloc(1, sizeof(*d) + strlen(tl) + 1);

	if(d == NULL) abort();
	memcpy(d->data, tl, strlen(tl) + 1);
	d->kind = IM_DONE_FRAME;
	d->timeline = d->data;
	d->seq = seq;
	d->repair = repair;
	return d;
}

static void in(struct im__order *o, const char *tl, uint64_t seq, int64_t now)
{
	im_order__deliver(o, frame(tl, seq, false), now);
}

/* The repair's frames from..to (what the store returned). */
static void repair_frames(struct im__order *o, const char *tl, uint64_t from, uint64_t to, int64_t now)
{
	uint64_t s;

	for(s = from; s <= to; s++) im_order__deliver(o, frame(tl, s, true), now);
}

/* Published so far, exactly these seqs in this order (printed if not). */
static bool published(size_t n, ...)
{
	va_list ap;
	size_t i;
	bool same = h.n_pub == n;

	va_start(ap, n);
	for(i = 0; i < n; i++){
		uint64_t want = va_arg(ap, uint64_t);
		if(i < h.n_pub && h.pub[i] != want) same = false;
	}
	va_end(ap);
	if(!same){
		fprintf(stderr, "published:");
		for(i = 0; i < h.n_pub; i++) fprintf(stderr, " %llu", (unsigned long long)h.pub[i]);
		fprintf(stderr, "\n");
	}
	return same;
}

#define S(x) ((uint64_t)(x))

static void in_order(void)
{
	struct im__order o;

	setup(&o);
	CHECK(!im_order__busy(&o));
	in(&o, "u/a", 5, T0);   /* first sight: delivery starts here */
	in(&o, "u/a", 6, T0 + 1);
	in(&o, "u/a", 7, T0 + 2);
	CHECK(published(3, S(5), S(6), S(7)));
	CHECK_STR(h.pub_tl[2], "u/a");
	CHECK(!h.pub_not_frame);
	CHECK(im_order__busy(&o)); /* a tail check is due later */
	im_order__tick(&o, T0 + 10);
	CHECK_EQ(h.n_rep, 0);
	CHECK_EQ(metrics.cluster_duplicates, 0);
	im_order__free(&o);
}

static void duplicate(void)
{
	struct im__order o;

	setup(&o);
	in(&o, "u/a", 5, T0);
	in(&o, "u/a", 6, T0);
	in(&o, "u/a", 6, T0);   /* two paths through NATS */
	in(&o, "u/a", 5, T0);
	im_order__deliver(&o, frame("u/a", 6, true), T0); /* a repair's copy */
	in(&o, "u/a", 7, T0);
	CHECK(published(3, S(5), S(6), S(7)));
	CHECK_EQ(metrics.cluster_duplicates, 3);
	im_order__free(&o);
}

static void gap_closes_by_itself(void)
{
	struct im__order o;

	setup(&o);
	in(&o, "u/a", 7, T0);
	in(&o, "u/a", 9, T0 + 1);
	in(&o, "u/a", 10, T0 + 2);
	CHECK(published(1, S(7)));
	im_order__tick(&o, T0 + 1 + GAP_GRACE_MS - 1);
	CHECK_EQ(h.n_rep, 0);
	in(&o, "u/a", 8, T0 + 1 + GAP_GRACE_MS - 1);
	CHECK(published(4, S(7), S(8), S(9), S(10)));
	/* Past the grace: the gap is closed, nothing to ask. */
	im_order__tick(&o, T0 + 1 + GAP_GRACE_MS + 5);
	CHECK_EQ(h.n_rep, 0);
	CHECK_EQ(metrics.cluster_gaps, 0);
	CHECK_EQ(metrics.cluster_repairs, 0);
	im_order__free(&o);
}

static void gap_repaired(void)
{
	struct im__order o;

	setup(&o);
	in(&o, "g/team", 10, T0);
	in(&o, "g/team", 13, T0 + 2);
	in(&o, "g/team", 12, T0 + 3); /* held in seq order, whatever the arrival */
	CHECK(published(1, S(10)));
	im_order__tick(&o, T0 + 2 + GAP_GRACE_MS - 1);
	CHECK_EQ(h.n_rep, 0);
	im_order__tick(&o, T0 + 2 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 1);
	CHECK_STR(h.rep[0].tl, "g/team");
	CHECK_EQ(h.rep[0].after, 10);
	CHECK_EQ(h.rep[0].upto, 13);
	CHECK(!h.rep[0].anchor);
	CHECK_EQ(metrics.cluster_gaps, 1);
	CHECK_EQ(metrics.cluster_repairs, 1);
	/* One repair out at a time. */
	im_order__tick(&o, T0 + 2 + GAP_GRACE_MS + 50);
	CHECK_EQ(h.n_rep, 1);
	/* The store's frames, then its answer. */
	repair_frames(&o, "g/team", 11, 13, T0 + 60);
	CHECK(published(4, S(10), S(11), S(12), S(13)));
	im_order__repaired(&o, "g/team", 13, true, false, T0 + 61);
	CHECK(published(4, S(10), S(11), S(12), S(13)));
	in(&o, "g/team", 14, T0 + 62);
	CHECK(published(5, S(10), S(11), S(12), S(13), S(14)));
	im_order__tick(&o, T0 + 100);
	CHECK_EQ(h.n_rep, 1);
	CHECK_EQ(metrics.cluster_duplicates, 2); /* the repair's 12 and 13: delivered already */
	im_order__free(&o);
}

/* Messages 14 and 15 expired (or were trimmed) before the repair read
 * them: the store returns 16 and 17 and says it covered up to 17. */
static void repaired_past_held(void)
{
	struct im__order o;

	setup(&o);
	in(&o, "u/a", 13, T0);
	in(&o, "u/a", 16, T0 + 1);
	in(&o, "u/a", 17, T0 + 2);
	in(&o, "u/a", 20, T0 + 3);
	im_order__tick(&o, T0 + 1 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 1);
	CHECK_EQ(h.rep[0].after, 13);
	CHECK_EQ(h.rep[0].upto, 20);
	repair_frames(&o, "u/a", 16, 17, T0 + 30);
	im_order__repaired(&o, "u/a", 17, true, false, T0 + 31);
	/* Nothing to wait for below 18: 16 and 17 go out in order, 20 waits. */
	CHECK(published(3, S(13), S(16), S(17)));
	/* The rest is fetched at once, from 17 on. */
	im_order__tick(&o, T0 + 31);
	CHECK_EQ(h.n_rep, 2);
	CHECK_EQ(h.rep[1].after, 17);
	CHECK_EQ(h.rep[1].upto, 20);
	/* 18 and 19 are gone too: last moves past them to 20. */
	im_order__repaired(&o, "u/a", 20, true, false, T0 + 40);
	CHECK(published(4, S(13), S(16), S(17), S(20)));
	in(&o, "u/a", 21, T0 + 41);
	CHECK(published(5, S(13), S(16), S(17), S(20), S(21)));
	im_order__tick(&o, T0 + 100);
	CHECK_EQ(h.n_rep, 2);
	CHECK(!h.pub_not_frame);
	im_order__free(&o);
}

/* Everything up to reached is gone, nothing held: last just moves on. */
static void repaired_nothing_returned(void)
{
	struct im__order o;

	setup(&o);
	in(&o, "u/a", 3, T0);
	in(&o, "u/a", 6, T0 + 1);
	im_order__tick(&o, T0 + 1 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 1);
	im_order__repaired(&o, "u/a", 5, true, false, T0 + 30);
	CHECK(published(2, S(3), S(6)));
	im_order__tick(&o, T0 + 40);
	CHECK_EQ(h.n_rep, 1);
	in(&o, "u/a", 7, T0 + 41);
	CHECK(published(3, S(3), S(6), S(7)));
	im_order__free(&o);
}

static void repair_retry(void)
{
	struct im__order o;
	int64_t failed = T0 + 40;

	setup(&o);
	in(&o, "u/a", 1, T0);
	in(&o, "u/a", 3, T0);
	im_order__tick(&o, T0 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 1);
	im_order__repaired(&o, "u/a", 0, false, false, failed);
	CHECK(published(1, S(1)));
	im_order__tick(&o, failed + 1);
	im_order__tick(&o, failed + REPAIR_RETRY_MS - 1);
	CHECK_EQ(h.n_rep, 1);
	im_order__tick(&o, failed + REPAIR_RETRY_MS);
	CHECK_EQ(h.n_rep, 2);
	CHECK_EQ(h.rep[1].after, 1);
	CHECK_EQ(h.rep[1].upto, 3);
	CHECK_EQ(metrics.cluster_gaps, 2);
	repair_frames(&o, "u/a", 2, 3, failed + REPAIR_RETRY_MS + 5);
	im_order__repaired(&o, "u/a", 3, true, false, failed + REPAIR_RETRY_MS + 6);
	CHECK(published(3, S(1), S(2), S(3)));
	/* A repair the owner could not even ask for is asked at the next tick. */
	in(&o, "u/a", 5, failed + REPAIR_RETRY_MS + 10);
	h.refuse_repair = true;
	im_order__tick(&o, failed + REPAIR_RETRY_MS + 10 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 2);
	CHECK_EQ(metrics.cluster_repairs, 2);
	h.refuse_repair = false;
	im_order__tick(&o, failed + REPAIR_RETRY_MS + 11 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 3);
	CHECK_EQ(h.rep[2].after, 3);
	CHECK_EQ(h.rep[2].upto, 5);
	im_order__free(&o);
}

static void hold_bound(void)
{
	struct im__order o;
	uint64_t s, last = 100, over = last + 2 + HOLD_MAX;
	size_t i;
	bool in_seq = true;

	setup(&o);
	in(&o, "u/a", last, T0);
	for(s = last + 2; s < over; s++) in(&o, "u/a", s, T0 + 1);
	CHECK_EQ(metrics.cluster_duplicates, 0);
	in(&o, "u/a", over, T0 + 1);  /* one more than the hold takes */
	CHECK_EQ(metrics.cluster_duplicates, 1);
	CHECK(published(1, last));
	im_order__tick(&o, T0 + 1 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 1);
	CHECK_EQ(h.rep[0].after, last);
	CHECK_EQ(h.rep[0].upto, over); /* the dropped one is asked for too */
	/* The repair brings the missing one, and the one dropped. */
	im_order__deliver(&o, frame("u/a", last + 1, true), T0 + 40);
	CHECK_EQ(h.n_pub, 2 + HOLD_MAX);   /* last, last + 1, and all held */
	im_order__deliver(&o, frame("u/a", over, true), T0 + 41);
	im_order__repaired(&o, "u/a", over, true, false, T0 + 42);
	CHECK_EQ(h.n_pub, 3 + HOLD_MAX);
	for(i = 0; i < h.n_pub; i++) if(h.pub[i] != last + i) in_seq = false;
	CHECK(in_seq);
	CHECK_EQ(h.pub[h.n_pub - 1], over);
	im_order__free(&o);
}

/* A device comes online here: delivery starts at the store's head, or at
 * the first frame heard meanwhile. */
static void anchoring(void)
{
	struct im__order o;
	uint64_t head = 2003;

	setup(&o);
	im_order__anchor(&o, "u/a", T0);
	CHECK_EQ(h.n_rep, 1);
	CHECK(h.rep[0].anchor);
	CHECK_STR(h.rep[0].tl, "u/a");
	CHECK_EQ(metrics.cluster_repairs, 0);
	im_order__subscribed(&o, "u/a", T0);
	in(&o, "u/a", 2002, T0 + 1);
	in(&o, "u/a", 5, T0 + 2);     /* an old frame replayed on NATS */
	in(&o, "u/a", 2001, T0 + 3);
	in(&o, "u/a", 2005, T0 + 4);
	CHECK_EQ(h.n_pub, 0);
	/* No gap repair nor tail check before the head is known. */
	im_order__tick(&o, T0 + 4 + GAP_GRACE_MS);
	im_order__tick(&o, T0 + 4 + TAIL_CHECK_MS);
	CHECK_EQ(h.n_rep, 1);
	CHECK_EQ(h.n_pub, 0);
	/* The head was 2003 when read: 2001..2003 were committed before, but
	 * 2001 and 2002 were heard here after subscribing: live. */
	im_order__repaired(&o, "u/a", head, true, true, T0 + 4 + TAIL_CHECK_MS + 1);
	CHECK(published(2, S(2001), S(2002)));
	/* 2003 (lost on the way) and 2005 remain: a repair from 2002. */
	im_order__tick(&o, T0 + 4 + TAIL_CHECK_MS + 1 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 2);
	CHECK(!h.rep[1].anchor);
	CHECK_EQ(h.rep[1].after, 2002);
	CHECK_EQ(h.rep[1].upto, 2005);
	repair_frames(&o, "u/a", 2003, 2005, T0 + 1100);
	im_order__repaired(&o, "u/a", 2005, true, false, T0 + 1101);
	CHECK(published(5, S(2001), S(2002), S(2003), S(2004), S(2005)));
	CHECK_EQ(metrics.cluster_duplicates, 2); /* the replayed 5, the repair's 2005 */
	im_order__free(&o);
}

/* A frame NATS carried late (stored before the device came online, held
 * while the head is read) is the device's sync's, not live: delivery
 * starts at the first frame stored since. (The nemesis found a device
 * given seq 26 live after 89: a stopped NATS node resumed.) */
static void anchoring_late_frame(void)
{
	struct im__order o;
	struct im__done *d;

	setup(&o);
	im_order__anchor(&o, "u/a", T0);
	d = frame("u/a", 1990, false);
	d->ts_ms = T0 - 6600;          /* stored before: carried late */
	im_order__deliver(&o, d, T0 + 1);
	d = frame("u/a", 2001, false);
	d->ts_ms = T0 + 2;             /* stored since */
	im_order__deliver(&o, d, T0 + 2);
	d = frame("u/a", 2002, false);
	d->ts_ms = T0 + 3;
	im_order__deliver(&o, d, T0 + 3);
	CHECK_EQ(h.n_pub, 0);
	im_order__repaired(&o, "u/a", 2003, true, true, T0 + 10);
	CHECK(published(2, S(2001), S(2002)));
	CHECK_EQ(metrics.cluster_duplicates, 1);
	/* Late again, now below what was delivered: dropped. */
	in(&o, "u/a", 1991, T0 + 11);
	CHECK_EQ(h.n_pub, 2);
	im_order__free(&o);
}

/* The head, no frame heard meanwhile: delivery starts after it. A head
 * that could not be read is asked again after REPAIR_RETRY_MS. */
static void anchoring_retry(void)
{
	struct im__order o;

	setup(&o);
	CHECK(!im_order__anchoring(&o, "g/team"));
	im_order__anchor(&o, "g/team", T0);
	CHECK_EQ(h.n_rep, 1);
	/* Meanwhile a sync of it queues behind the head read (worker). */
	CHECK(im_order__anchoring(&o, "g/team"));
	CHECK(!im_order__anchoring(&o, "g/other"));
	im_order__repaired(&o, "g/team", 0, false, true, T0);
	CHECK(im_order__anchoring(&o, "g/team"));
	im_order__tick(&o, T0 + REPAIR_RETRY_MS - 1);
	CHECK_EQ(h.n_rep, 1);
	im_order__tick(&o, T0 + REPAIR_RETRY_MS);
	CHECK_EQ(h.n_rep, 2);
	CHECK(h.rep[1].anchor);
	im_order__tick(&o, T0 + REPAIR_RETRY_MS + 1);
	CHECK_EQ(h.n_rep, 2);
	im_order__repaired(&o, "g/team", 40, true, true, T0 + REPAIR_RETRY_MS + 2);
	CHECK(!im_order__anchoring(&o, "g/team"));
	in(&o, "g/team", 40, T0 + REPAIR_RETRY_MS + 3); /* already the device's to sync */
	in(&o, "g/team", 41, T0 + REPAIR_RETRY_MS + 4);
	CHECK(published(1, S(41)));
	CHECK_EQ(metrics.cluster_duplicates, 1);
	im_order__tick(&o, T0 + REPAIR_RETRY_MS + 100);
	CHECK_EQ(h.n_rep, 2);
	im_order__free(&o);
}

static void not_heard(void)
{
	struct im__order o;

	setup(&o);
	in(&o, "u/z", 50, T0);
	in(&o, "u/z", 40, T0);        /* no order kept: out as it comes */
	in(&o, "u/z", 40, T0);
	CHECK(published(3, S(50), S(40), S(40)));
	CHECK_EQ(o.tls.count, 0);
	CHECK(!im_order__busy(&o));
	im_order__tick(&o, T0 + IDLE_FORGET_MS);
	CHECK_EQ(h.n_rep, 0);
	im_order__free(&o);
}

static void tail_check_and_forget(void)
{
	struct im__order o;
	int64_t checked = T0 + 1 + TAIL_CHECK_MS;

	setup(&o);
	in(&o, "u/a", 6, T0);
	in(&o, "u/a", 7, T0 + 1);
	im_order__tick(&o, checked - 1);
	CHECK_EQ(h.n_rep, 0);
	im_order__tick(&o, checked);
	CHECK_EQ(h.n_rep, 1);
	CHECK_EQ(h.rep[0].after, 7);
	CHECK_EQ(h.rep[0].upto, 0);   /* to the head */
	CHECK(!h.rep[0].anchor);
	CHECK(!im_order__busy(&o));
	/* The last message was lost on the way: the check brings it. */
	repair_frames(&o, "u/a", 8, 8, checked + 5);
	im_order__repaired(&o, "u/a", 8, true, false, checked + 6);
	CHECK(published(3, S(6), S(7), S(8)));
	/* Checked once, not again. */
	im_order__tick(&o, checked + 2 * TAIL_CHECK_MS);
	CHECK_EQ(h.n_rep, 1);
	CHECK_EQ(o.tls.count, 1);
	/* Quiet for long, but still heard here: kept. */
	im_order__tick(&o, checked + IDLE_FORGET_MS);
	CHECK_EQ(o.tls.count, 1);
	/* No longer heard (its users went): forgotten, IDLE_FORGET_MS after it
	 * was last looked at. */
	h.heard[0] = NULL;
	im_order__tick(&o, checked + 2 * IDLE_FORGET_MS - 1);
	CHECK_EQ(o.tls.count, 1);
	im_order__tick(&o, checked + 2 * IDLE_FORGET_MS);
	CHECK_EQ(o.tls.count, 0);
	/* Forgotten: the next frame (the broker's own) goes out as it comes,
	 * no gap. */
	in(&o, "u/a", 30, checked + 2 * IDLE_FORGET_MS + 1);
	CHECK(published(4, S(6), S(7), S(8), S(30)));
	im_order__tick(&o, checked + 2 * IDLE_FORGET_MS + 1 + GAP_GRACE_MS);
	CHECK_EQ(h.n_rep, 1);
	im_order__free(&o);
}

/* What NATS brings proves its origin, not its age: an old frame replayed
 * is never delivered again, even after a long quiet while a user still
 * hears the timeline (its state stays), nor once nobody here hears it. */
static void replayed_after_quiet(void)
{
	struct im__order o;
	struct im__done *d;
	int64_t t = T0;

	setup(&o);
	in(&o, "u/a", 6, t);
	in(&o, "u/a", 7, t);
	im_order__tick(&o, t + TAIL_CHECK_MS);
	im_order__repaired(&o, "u/a", 7, true, false, t + TAIL_CHECK_MS + 1);
	CHECK(published(2, S(6), S(7)));
	for(t = T0 + TAIL_CHECK_MS; t <= T0 + 3 * IDLE_FORGET_MS; t += IDLE_FORGET_MS / 4) im_order__tick(&o, t);
	d = frame("u/a", 7, false);
	d->remote = true;
	im_order__deliver(&o, d, t);
	d = frame("u/a", 6, false);
	d->remote = true;
	im_order__deliver(&o, d, t);
	CHECK(published(2, S(6), S(7)));
	/* A new message still follows. */
	in(&o, "u/a", 8, t);
	CHECK(published(3, S(6), S(7), S(8)));
	/* Nobody here hears u/a any more: its state goes, and a frame from
	 * NATS for it (a late one, or a replay) is dropped. */
	h.heard[0] = NULL;
	im_order__tick(&o, t + TAIL_CHECK_MS);
	im_order__repaired(&o, "u/a", 8, true, false, t + TAIL_CHECK_MS + 1);
	im_order__tick(&o, t + TAIL_CHECK_MS + IDLE_FORGET_MS);
	CHECK_EQ(o.tls.count, 0);
	d = frame("u/a", 7, false);
	d->remote = true;
	im_order__deliver(&o, d, t + TAIL_CHECK_MS + IDLE_FORGET_MS + 1);
	CHECK(published(3, S(6), S(7), S(8)));
	CHECK_EQ(o.tls.count, 0);
	im_order__free(&o);
}

/* After a reconnect every idle timeline is checked again at the next tick;
 * a new subscription's check comes SUB_SETTLE_MS later. */
static void resync_and_subscribed(void)
{
	struct im__order o;
	int64_t checked = T0 + TAIL_CHECK_MS;

	setup(&o);
	in(&o, "u/a", 6, T0);
	im_order__tick(&o, checked);
	CHECK_EQ(h.n_rep, 1);
	im_order__repaired(&o, "u/a", 6, true, false, checked + 1);
	im_order__tick(&o, checked + 5000);
	CHECK_EQ(h.n_rep, 1);
	im_order__resync(&o);
	CHECK(im_order__busy(&o));
	im_order__tick(&o, checked + 5001);
	CHECK_EQ(h.n_rep, 2);
	CHECK_EQ(h.rep[1].after, 6);
	CHECK_EQ(h.rep[1].upto, 0);
	im_order__repaired(&o, "u/a", 6, true, false, checked + 5002);
	im_order__subscribed(&o, "u/a", checked + 6000);
	im_order__subscribed(&o, "u/nobody", checked + 6000); /* no state: nothing */
	CHECK_EQ(o.tls.count, 1);
	im_order__tick(&o, checked + 6000 + SUB_SETTLE_MS - 1);
	CHECK_EQ(h.n_rep, 2);
	im_order__tick(&o, checked + 6000 + SUB_SETTLE_MS);
	CHECK_EQ(h.n_rep, 3);
	CHECK_EQ(h.rep[2].upto, 0);
	im_order__free(&o);
}

static void events(void)
{
	struct im__order o;
	struct im__done *d;

	setup(&o);
	im_order__anchor(&o, "u/a", T0);  /* frames of u/a wait now */
	in(&o, "u/a", 9, T0);
	d = frame("u/a", 0, false);
	d->event = true;
	d->kind = IM_DONE_SUBSCRIBED; /* published as a FRAME whatever it was */
	im_order__deliver(&o, d, T0);
	d = frame("u/z", 0, false);
	d->event = true;
	im_order__deliver(&o, d, T0);
	CHECK(published(2, S(0), S(0)));
	CHECK(h.pub_event[0] && h.pub_event[1]);
	CHECK_STR(h.pub_tl[0], "u/a");
	CHECK_STR(h.pub_tl[1], "u/z");
	CHECK(!h.pub_not_frame);
	CHECK_EQ(o.tls.count, 1);
	im_order__free(&o); /* frees the held 9 */
}

int main(void)
{
	in_order();
	duplicate();
	gap_closes_by_itself();
	gap_repaired();
	repaired_past_held();
	repaired_nothing_returned();
	repair_retry();
	hold_bound();
	anchoring();
	anchoring_late_frame();
	anchoring_retry();
	not_heard();
	tail_check_and_forget();
	replayed_after_quiet();
	resync_and_subscribed();
	events();
	return TAP_DONE();
}
