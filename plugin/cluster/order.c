/*
 * Delivery in seq order per timeline [B] (cluster/cluster.c says why: NATS
 * delivers at most once, the store has everything). Per timeline this
 * broker hears it keeps the last seq delivered; a frame after a gap is
 * held until the gap closes by itself or a repair from the store brings
 * what is missing; a timeline gone quiet is checked against the store once
 * (was its last message lost?), and forgotten later if this broker no
 * longer hears it.
 *
 * What a frame from NATS proves is its origin (the MAC), not its age: a
 * frame recorded on the NATS network may be replayed at any time. It is
 * delivered only if its seq is past what this broker delivered: so the
 * state of a timeline this broker hears is kept for as long as it hears
 * it, and a frame from NATS for a timeline it does not hear is dropped.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "base/limits.h"
#include "base/util.h"
#include "cluster/order.h"

struct im__order_tl {
	char name[IM_TL_MAX + 1];
	uint64_t last;          /* highest seq delivered */
	uint64_t want;          /* highest seq known to exist */
	struct im__done *held;  /* frames after a gap, by seq */
	size_t n_held;
	int64_t gap_ms;         /* when the open gap was seen; 0 = none */
	int64_t retry_ms;       /* no repair before this */
	int64_t rx_ms;          /* last frame */
	int64_t idle_ms;        /* checked since */
	bool repairing;
	bool anchoring;         /* waiting to learn the head: where live delivery starts */
	int64_t since_ms;       /* anchoring since (wall clock): frames stored before are sync's */
	bool in_gaps;
	int list;               /* 0 none, 1 pending check, 2 idle */
	struct im__order_tl *prev, *next;        /* in its list */
	struct im__order_tl *gnext;              /* in the gap list */
};

void im_order__init(struct im__order *o, const struct im__order_hooks *hooks, struct im__metrics *metrics)
{
	memset(o, 0, sizeof(*o));
	o->hooks = *hooks;
	o->metrics = metrics;
}

static void unlink_list(struct im__order *o, struct im__order_tl *e)
{
	struct im__order_list *l = e->list == 1 ? &o->pending : e->list == 2 ? &o->idle : NULL;

	if(l == NULL) return;
	if(e->prev) e->prev->next = e->next;
	else l->head = e->next;
	if(e->next) e->next->prev = e->prev;
	else l->tail = e->prev;
	e->prev = e->next = NULL;
	e->list = 0;
}

static void append_list(struct im__order *o, struct im__order_tl *e, int which)
{
	struct im__order_list *l = which == 1 ? &o->pending : &o->idle;

	unlink_list(o, e);
	e->prev = l->tail;
	e->next = NULL;
	if(l->tail) l->tail->next = e;
	else l->head = e;
	l->tail = e;
	e->list = which;
}

static void free_held(struct im__order_tl *e)
{
	struct im__done *d, *next;

	for(d = e->held; d; d = next){
		next = d->next;
		free(d);
	}
	e->held = NULL;
	e->n_held = 0;
}

static void free_tl(void *v)
{
	struct im__order_tl *e = v;

	free_held(e);
	free(e);
}

/* Drops e (not in the gap list) and its held frames. */
static void forget(struct im__order *o, struct im__order_tl *e)
{
	unlink_list(o, e);
	im_map__del(&o->tls, e->name, strlen(e->name));
	free_tl(e);
}

void im_order__free(struct im__order *o)
{
	im_map__free(&o->tls, free_tl);
	o->pending.head = o->pending.tail = NULL;
	o->idle.head = o->idle.tail = NULL;
	o->gaps = NULL;
}

static struct im__order_tl *entry(struct im__order *o, const char *tl, uint64_t seq)
{
	struct im__order_tl *e = im_map__get(&o->tls, tl, strlen(tl));

	if(e) return e;
	if((e = im_calloc(1, sizeof(*e))) == NULL) return NULL;
	snprintf(e->name, sizeof(e->name), "%s", tl);
	/* First sight: deliver from here. What came before was either
	 * delivered before this broker cared, or is the client's to sync. */
	e->last = e->want = seq - 1;
	if(im_map__put(&o->tls, tl, strlen(tl), e) != MOSQ_ERR_SUCCESS){
		free(e);
		return NULL;
	}
	return e;
}

static void publish(struct im__order *o, struct im__done *d)
{
	d->kind = IM_DONE_FRAME;
	o->hooks.publish(o->hooks.ctx, d);
	free(d);
}

static void mark_gap(struct im__order *o, struct im__order_tl *e, int64_t now)
{
	if(e->gap_ms == 0) e->gap_ms = now;
	if(!e->in_gaps){
		e->in_gaps = true;
		e->gnext = o->gaps;
		o->gaps = e;
	}
}

/* Delivers held frames that now follow, and with upto (a repair's reach:
 * what it did not return is gone) those up to it too, in order: last
 * moves on to upto at least. A gap that is closed is closed. */
static void release(struct im__order *o, struct im__order_tl *e, uint64_t upto)
{
	struct im__done *d;

	while((d = e->held) != NULL && d->seq <= (upto > e->last ? upto : e->last) + 1){
		e->held = d->next;
		e->n_held--;
		if(d->seq > e->last){
			e->last = d->seq;
			publish(o, d);
		}else{
			free(d);
		}
	}
	if(upto > e->last) e->last = upto;
	if(e->last > e->want) e->want = e->last;
	if(e->last >= e->want) e->gap_ms = 0;
}

static void hold(struct im__order *o, struct im__order_tl *e, struct im__done *d)
{
	struct im__done **pp = &e->held;

	while(*pp && (*pp)->seq < d->seq) pp = &(*pp)->next;
	if((*pp && (*pp)->seq == d->seq) || e->n_held >= HOLD_MAX){
		/* A repeat, or too many waiting: the repair brings it. */
		IM_STAT_ADD(o->metrics->cluster_duplicates, 1);
		free(d);
		return;
	}
	d->next = *pp;
	*pp = d;
	e->n_held++;
}

void im_order__deliver(struct im__order *o, struct im__done *d, int64_t now)
{
	struct im__order_tl *e;

	if(d->event){
		publish(o, d);
		return;
	}
	/* A timeline this broker does not hear (a local sender's message to
	 * someone with no device here): nothing comes from NATS to order it
	 * against, so it is handed on as it comes, and no state is kept (or
	 * checked against the store later) for it. */
	e = im_map__get(&o->tls, d->timeline, strlen(d->timeline));
	if(e == NULL && !d->repair && !o->hooks.heard(o->hooks.ctx, d->timeline)){
		/* From NATS, though: it was sent before this broker stopped
		 * hearing tl (nobody here wants it now), or it is a replay. */
		if(d->remote){
			IM_STAT_ADD(o->metrics->cluster_duplicates, 1);
			free(d);
			return;
		}
		publish(o, d);
		return;
	}
	if(e == NULL && (e = entry(o, d->timeline, d->seq)) == NULL){
		publish(o, d); /* out of memory: unordered rather than lost */
		return;
	}
	if(!d->repair){
		e->rx_ms = now;
		append_list(o, e, 1);
	}
	if(d->seq > e->want) e->want = d->seq;
	if(e->anchoring){
		hold(o, e, d);
	}else if(d->seq <= e->last){
		IM_STAT_ADD(o->metrics->cluster_duplicates, 1);
		free(d);
	}else if(d->seq == e->last + 1){
		e->last = d->seq;
		publish(o, d);
		release(o, e, 0);
	}else{
		hold(o, e, d);
		mark_gap(o, e, now);
	}
}

static void submit_repair(struct im__order *o, struct im__order_tl *e, uint64_t upto)
{
	if(!o->hooks.repair(o->hooks.ctx, e->name, e->last, upto, false)) return;
	e->repairing = true;
	IM_STAT_ADD(o->metrics->cluster_repairs, 1);
}

static void submit_anchor(struct im__order *o, struct im__order_tl *e)
{
	if(o->hooks.repair(o->hooks.ctx, e->name, 0, 0, true)) e->repairing = true;
}

/* This broker starts to hear tl (a user came online here). Live delivery
 * starts after the head as the worker sees it now: the worker reads it
 * before any sync the new device sends (while the anchor is out, a sync
 * of tl queues behind it in the writer's queue, not at a reader:
 * im_cluster__anchoring), so what the device's first sync does not
 * return is delivered live. Frames that
 * arrive meanwhile wait, and those stored from now on are delivered too
 * (im_order__repaired). A state this broker kept from its own messages
 * is stale (it heard nobody else's): it starts over. */
void im_order__anchor(struct im__order *o, const char *tl, int64_t wall_ms)
{
	struct im__order_tl *e = im_map__get(&o->tls, tl, strlen(tl));

	if(e && (e->repairing || e->in_gaps)) return;
	if(e) forget(o, e);
	if((e = entry(o, tl, 1)) == NULL) return;
	e->anchoring = true;
	e->since_ms = wall_ms;
	submit_anchor(o, e);
}

bool im_order__anchoring(const struct im__order *o, const char *tl)
{
	const struct im__order_tl *e = im_map__get(&o->tls, tl, strlen(tl));

	return e && e->anchoring;
}

void im_order__repaired(struct im__order *o, const char *tl, uint64_t reached, bool ok, bool anchor_done, int64_t now)
{
	struct im__done *d;
	struct im__order_tl *e;

	if((e = im_map__get(&o->tls, tl, strlen(tl))) == NULL) return;
	e->repairing = false;
	im_log(MOSQ_LOG_DEBUG, "im: cluster: %s: %s %s at seq %" PRIu64 " (delivered up to %" PRIu64 ", %zu held).",
			tl, anchor_done ? "head" : "repair", ok ? "answered" : "failed", reached, e->last, e->n_held);
	if(anchor_done && e->anchoring){
		if(!ok){
			e->retry_ms = now + REPAIR_RETRY_MS;
			mark_gap(o, e, now);
			return;
		}
		e->anchoring = false;
		/* Frames held meanwhile that were stored after the device came
		 * online here are live for it, even those committed before the
		 * worker got round to reading the head (under load, many):
		 * delivery starts at the first of them. Those stored before it
		 * came online are its first sync's: NATS can carry a frame
		 * seconds late (a stopped NATS node resumed), and delivered live
		 * now it would follow newer ones the device already had from
		 * its session (the nemesis found it: seed 1802864005). So are
		 * those further back than a hold's worth (a replay). By the
		 * storing broker's clock: a skew only moves a frame between
		 * live and sync, which returns every one at or below the head. */
		while((d = e->held) != NULL && d->seq <= reached
				&& (d->seq + HOLD_MAX <= reached || (d->ts_ms && d->ts_ms < e->since_ms))){
			e->held = d->next;
			e->n_held--;
			IM_STAT_ADD(o->metrics->cluster_duplicates, 1);
			free(d);
		}
		if(e->held && e->held->seq - 1 < reached) reached = e->held->seq - 1;
		if(reached > e->last) e->last = reached;
		if(e->last > e->want) e->want = e->last;
		release(o, e, 0);
		if(e->last < e->want) mark_gap(o, e, now);
		return;
	}
	if(!ok){
		e->retry_ms = now + REPAIR_RETRY_MS;
		if(e->last < e->want) mark_gap(o, e, e->gap_ms ? e->gap_ms : now);
		return;
	}
	/* Everything up to reached that the store did not return is gone
	 * (expired, trimmed): nothing to wait for. What it did return after
	 * such a hole is held here (and frames heard meanwhile): delivered. */
	release(o, e, reached);
	if(e->last < e->want) mark_gap(o, e, 1); /* more to fetch: at once */
}

void im_order__subscribed(struct im__order *o, const char *tl, int64_t now)
{
	struct im__order_tl *e = im_map__get(&o->tls, tl, strlen(tl));

	if(e == NULL) return;
	/* A tail check SUB_SETTLE_MS from now: whatever was committed before
	 * NATS forwarded tl to this broker is read from the store. */
	e->rx_ms = now - TAIL_CHECK_MS + SUB_SETTLE_MS;
	append_list(o, e, 1);
}

void im_order__resync(struct im__order *o)
{
	struct im__order_tl *e;

	while((e = o->idle.head) != NULL){
		e->rx_ms = 0;
		append_list(o, e, 1);
	}
}

void im_order__tick(struct im__order *o, int64_t now)
{
	struct im__order_tl *e, **pp;
	int checks = 0;

	/* Gaps that did not close by themselves within the grace. */
	for(pp = &o->gaps; (e = *pp) != NULL;){
		if(e->anchoring){
			if(!e->repairing && now >= e->retry_ms) submit_anchor(o, e);
			pp = &e->gnext;
			continue;
		}
		if(e->gap_ms == 0 || e->last >= e->want){
			e->gap_ms = 0;
			e->in_gaps = false;
			*pp = e->gnext;
			continue;
		}
		if(!e->repairing && now - e->gap_ms >= GAP_GRACE_MS && now >= e->retry_ms){
			IM_STAT_ADD(o->metrics->cluster_gaps, 1);
			submit_repair(o, e, e->want);
		}
		pp = &e->gnext;
	}
	/* Timelines that went quiet: was their last message lost on the way? */
	while((e = o->pending.head) != NULL && now - e->rx_ms >= TAIL_CHECK_MS && checks < CHECKS_PER_TICK){
		if(e->anchoring || e->repairing){
			/* Not before live delivery has a start, nor while a repair is
			 * out (it may leave a later tail unread): again shortly. */
			e->rx_ms = now - TAIL_CHECK_MS + 100;
			append_list(o, e, 1);
			if(o->pending.head == e) break;
			continue;
		}
		submit_repair(o, e, 0);
		checks++;
		e->idle_ms = now;
		append_list(o, e, 2);
	}
	/* And those quiet for long are forgotten, once this broker no longer
	 * hears them (an old frame replayed later would open a new state and
	 * be delivered again); the others are looked at again later. */
	while((e = o->idle.head) != NULL && now - e->idle_ms >= IDLE_FORGET_MS && !e->repairing && !e->in_gaps){
		if(o->hooks.heard(o->hooks.ctx, e->name)){
			e->idle_ms = now;
			append_list(o, e, 2);
		}else{
			forget(o, e);
		}
	}
}

bool im_order__busy(const struct im__order *o)
{
	return o->gaps || o->pending.head;
}
