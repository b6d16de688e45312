/*
 * Cluster delivery in seq order per timeline, gaps repaired from the
 * store [B]: what cluster/cluster.c does with each frame it delivers,
 * apart from NATS and the broker (unit-tested without either). Time is
 * given, never read: every now_ms is the caller's im_mono_ms() (it only
 * schedules: a step of the system time must not hold repairs up); only
 * im_order__anchor's wall_ms is wall time, compared with frames' times.
 */
#ifndef IM_CLUSTER_ORDER_H
#define IM_CLUSTER_ORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/map.h"
#include "base/stats.h"
#include "worker/job.h"

#define GAP_GRACE_MS 20         /* a gap may close by itself (two paths through NATS) */
#define TAIL_CHECK_MS 1000      /* after a timeline went quiet: was its last message lost? */
#define IDLE_FORGET_MS (10 * 60 * 1000) /* then its state goes, once no longer heard */
#define HOLD_MAX 1024           /* frames held per timeline while a gap is open */
#define CHECKS_PER_TICK 256
#define REPAIR_RETRY_MS 500
#define SUB_SETTLE_MS 250       /* a new subscription reaches the other NATS servers */

/* What the ordering asks of its owner. */
struct im__order_hooks {
	void *ctx;
	/* Delivers one frame now (d->kind is IM_DONE_FRAME); does not take d,
	 * which is freed when it returns. */
	void (*publish)(void *ctx, struct im__done *d);
	/* Asks the store for tl: the seqs after `after` up to upto (0: to the
	 * head), or with anchor its head alone. The answer comes back as
	 * im_order__repaired(); false: not asked (out of memory), and no
	 * answer is waited for. */
	bool (*repair)(void *ctx, const char *tl, uint64_t after, uint64_t upto, bool anchor);
	/* Does this broker hear tl (a device here wants it)? */
	bool (*heard)(void *ctx, const char *tl);
};

struct im__order_tl;            /* per timeline delivered here (order.c) */

struct im__order_list {
	struct im__order_tl *head, *tail;
};

struct im__order {
	struct im__order_hooks hooks;
	struct im__metrics *metrics;    /* cluster_duplicates, cluster_gaps, cluster_repairs */
	struct im__map tls;             /* timeline -> struct im__order_tl */
	struct im__order_list pending, idle;
	struct im__order_tl *gaps;
};

/* o zeroed or not: made empty. metrics must outlive o. */
void im_order__init(struct im__order *o, const struct im__order_hooks *hooks, struct im__metrics *metrics);
/* Frees every state and held frame. */
void im_order__free(struct im__order *o);
/* A FRAME completion, local or remote: published at once, later or never
 * (a duplicate, or from NATS for a timeline this broker does not hear).
 * Takes d. */
void im_order__deliver(struct im__order *o, struct im__done *d, int64_t now_ms);
/* This broker starts to hear tl: live delivery starts at the store's head,
 * or at a frame heard meanwhile that was stored after wall_ms (the wall
 * clock now, im_now_ms(); frames carry the storing broker's). */
void im_order__anchor(struct im__order *o, const char *tl, int64_t wall_ms);
/* Is tl's head still being read (an anchor out)? */
bool im_order__anchoring(const struct im__order *o, const char *tl);
/* The store's answer to a repair (reached: the last seq it covered) or to
 * an anchor (reached: the head). */
void im_order__repaired(struct im__order *o, const char *tl, uint64_t reached, bool ok, bool anchor, int64_t now_ms);
/* NATS forwards tl to this broker now. */
void im_order__subscribed(struct im__order *o, const char *tl, int64_t now_ms);
/* Messages may have been lost on NATS: every timeline is checked again. */
void im_order__resync(struct im__order *o);
/* Repairs gaps past their grace, checks quiet timelines, forgets idle ones
 * no longer heard. */
void im_order__tick(struct im__order *o, int64_t now_ms);
/* Gaps open or checks due: the tick should come soon. */
bool im_order__busy(const struct im__order *o);

#endif
