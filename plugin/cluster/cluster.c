/*
 * Cluster mode: several brokers, one set of timelines (plugin_opt_nats_servers).
 *
 * PostgreSQL holds the timelines and gives every message its seq (store_pg*.c);
 * core NATS carries what each broker stored to the brokers that have
 * devices waiting for it. NATS delivers at most once, so a broker keeps the
 * last seq it delivered per timeline and, on a gap, reads what is missing
 * from the store before it delivers past it. That repair is what makes
 * delivery whole; NATS only makes it fast.
 *
 * Threads:
 *   [W] the store worker, after a commit, encodes the batch's frames,
 *       events and membership changes and queues them for C
 *       (im_cluster__ship). The broker thread adds typing events.
 *   [C] one thread of this file owns the NATS connection: it publishes
 *       what is queued and subscribes and unsubscribes as the broker
 *       thread asks. Nothing else calls libnats, so neither the broker
 *       thread nor the worker ever waits on the network.
 *   [N] libnats's delivery thread checks and decodes each message and
 *       hands it to the broker thread (a queue and a wake-up).
 *   [B] the broker thread delivers in seq order (im_cluster__deliver,
 *       the logic in order.c), decides which subjects this broker needs
 *       (interest), and asks the worker for repairs.
 *
 * Interest: a broker subscribes to u/<user> of every user with a device
 * online here (presence.c's definition: a client that subscribed to an IM
 * topic), and to g/<group> of every group with such a member. That is a
 * little more than the subscriptions (a device subscribed to its inbox
 * alone also brings its groups), and it follows membership changes and
 * wildcard subscriptions without tracking filters.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/map.h"
#include "base/util.h"
#include "base/wake.h"
#include "cluster/cluster.h"
#include "cluster/order.h"
#include "cluster/wire.h"
#include "worker/worker.h"

#define OUT_MAX (64u << 20)     /* bytes queued for NATS before the oldest are dropped */
#define POKE_QUIET_US 1000
#define LOST_RESYNC_MS 5000     /* after NATS dropped messages: a whole check, at most this often */
#define FORGET_EVERY_MS 1000    /* a group is read again at most this often, however many signs come */

enum op_kind { OP_PUB, OP_SUB, OP_UNSUB };

/* [B/W -> C] one thing to do on the connection, in one block. */
struct op {
	struct op *next;
	enum op_kind kind;
	size_t len;             /* OP_PUB: bytes of data */
	char *subject;          /* into block */
	char *timeline;         /* OP_SUB/OP_UNSUB: the map key */
	uint8_t *data;
};

struct ugroups {
	size_t n, cap;
	char **names;
};

/* [B] a group read again from the store lately (members()). */
struct forget {
	struct forget *next;    /* in the order they were read */
	int64_t at_ms;          /* when (monotonic) */
	bool again;             /* another sign came since: read it once more at at_ms + FORGET_EVERY_MS */
	char group[];
};

struct im__cluster {
	const struct im__config *cfg;   /* the plugin's, read-only here */
	struct im__metrics *metrics;
	struct im__cluster_hooks hooks;
	struct im__worker *worker;      /* from start on */
	uint8_t frame_key[16];          /* from start on, read-only: N reads it */
	char root[32];                  /* im.<store id> */
	char ctl[40];                   /* <root>.ctl */
	/* [C] */
	pthread_t thread;
	bool started;
	natsConnection *nc;
	natsOptions *opts;
	struct im__map subs;            /* timeline -> natsSubscription * */
	natsSubscription *ctl_sub;
	/* B/W -> C */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct op *ohead, **otail;
	size_t obytes;
	bool stop;
	/* N -> B */
	pthread_mutex_t in_mu;
	struct im__done *ihead, **itail;
	int in_flag;                    /* atomic: ihead may be non-empty */
	int reconnected;                /* atomic: the connection came back */
	int lost;                       /* atomic: NATS dropped messages for us */
	int64_t drained_us;             /* atomic: when B last drained */
	int64_t poked_us;               /* [N] */
	pthread_mutex_t seen_mu;        /* [N] decoding: events taken lately */
	struct im__cwire_seen seen;
	/* [B] */
	struct im__map interest;        /* timeline -> (void *)(intptr_t)count */
	struct im__map ugroups;         /* user -> struct ugroups */
	struct im__order order;         /* delivery in seq order (order.c) */
	struct im__map forgets;         /* group -> struct forget */
	struct forget *fhead, **ftail;
	size_t forgets_owed;            /* of them, with again set */
	int64_t resync_ms;              /* the last whole check */
	struct im__buf wbuf;            /* [W] encoding */
	struct im__buf bbuf;            /* [B] encoding */
	char **servers;
	int n_servers;
};

/* ---- C: the connection ---- */

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

static void enqueue(struct im__cluster *c, struct op *o)
{
	struct op *drop = NULL, *next;

	o->next = NULL;
	pthread_mutex_lock(&c->mu);
	*c->otail = o;
	c->otail = &o->next;
	c->obytes += o->len;
	/* NATS is far behind (down, slow): drop the oldest publishes. What
	 * they carried is in the store; the receivers repair it. */
	while(c->obytes > OUT_MAX && c->ohead && c->ohead->kind == OP_PUB && c->ohead != o){
		struct op *x = c->ohead;
		c->ohead = x->next;
		c->obytes -= x->len;
		x->next = drop;
		drop = x;
	}
	if(c->ohead == NULL) c->otail = &c->ohead;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	for(; drop; drop = next){
		next = drop->next;
		IM_STAT_ADD(c->metrics->cluster_dropped, 1);
		free(drop);
	}
}

static struct op *op_new(enum op_kind kind, const char *subject, const char *timeline, const void *data, size_t len)
{
	size_t sl = strlen(subject) + 1, tl = timeline ? strlen(timeline) + 1 : 0;
	struct op *o = im_calloc(1, sizeof(*o) + sl + tl + len);

	if(o == NULL) return NULL;
	o->kind = kind;
	o->subject = (char *)(o + 1);
	memcpy(o->subject, subject, sl);
	if(timeline){
		o->timeline = o->subject + sl;
		memcpy(o->timeline, timeline, tl);
	}
	o->data = (uint8_t *)(o->subject + sl + tl);
	if(len) memcpy(o->data, data, len);
	o->len = len;
	return o;
}

static void push_in(struct im__cluster *c, struct im__done *d);

static void run_op(struct im__cluster *c, struct op *o)
{
	natsSubscription *sub;
	struct im__done *d;
	natsStatus s;

	switch(o->kind){
		case OP_PUB:
			s = natsConnection_Publish(c->nc, o->subject, o->data, (int)o->len);
			if(s == NATS_OK) IM_STAT_ADD(c->metrics->cluster_sent, 1);
			else IM_STAT_ADD(c->metrics->cluster_dropped, 1);
			break;
		case OP_SUB:
			if(im_map__get(&c->subs, o->timeline, strlen(o->timeline))) break;
			if(natsConnection_Subscribe(&sub, c->nc, o->subject, on_msg, c) != NATS_OK){
				im_log(MOSQ_LOG_WARNING, "im: cluster: cannot subscribe to %s: %s (its messages arrive by repair only).",
						o->subject, nats_GetLastError(NULL));
				break;
			}
			natsSubscription_SetPendingLimits(sub, -1, 64 * 1024 * 1024);
			if(im_map__put(&c->subs, o->timeline, strlen(o->timeline), sub) != MOSQ_ERR_SUCCESS){
				natsSubscription_Unsubscribe(sub);
				natsSubscription_Destroy(sub);
				break;
			}
			/* What was committed before NATS forwards to us is checked
			 * against the store once the subscription has spread. */
			if((d = im_calloc(1, sizeof(*d) + strlen(o->timeline) + 1)) != NULL){
				d->kind = IM_DONE_SUBSCRIBED;
				memcpy(d->data, o->timeline, strlen(o->timeline) + 1);
				d->timeline = d->data;
				push_in(c, d);
			}
			break;
		case OP_UNSUB:
			if((sub = im_map__del(&c->subs, o->timeline, strlen(o->timeline))) != NULL){
				natsSubscription_Unsubscribe(sub);
				natsSubscription_Destroy(sub);
			}
			break;
	}
}

static void on_reconnected(natsConnection *nc, void *closure)
{
	struct im__cluster *c = closure;

	(void)nc;
	__atomic_store_n(&c->reconnected, 1, __ATOMIC_RELEASE);
	im_wake__poke();
}

static void on_disconnected(natsConnection *nc, void *closure)
{
	(void)nc;
	(void)closure;
	im_log(MOSQ_LOG_WARNING, "im: cluster: lost the NATS connection; reconnecting (deliveries from other brokers are repaired from the store afterwards).");
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
	struct im__cluster *c = closure;

	(void)nc;
	(void)sub;
	/* A slow consumer: NATS dropped messages for us, of any timeline or
	 * a membership change. Gap and tail checks see only timelines that
	 * go on: everything is checked as after a reconnect (B, at most
	 * every LOST_RESYNC_MS). */
	IM_STAT_ADD(c->metrics->cluster_dropped, 1);
	if(err == NATS_SLOW_CONSUMER) __atomic_store_n(&c->lost, 1, __ATOMIC_RELEASE);
	im_log(MOSQ_LOG_WARNING, "im: cluster: NATS: %s.", natsStatus_GetText(err));
}

static int connect_nats(struct im__cluster *c)
{
	natsStatus s;

	s = natsOptions_Create(&c->opts);
	if(s == NATS_OK) s = natsOptions_SetServers(c->opts, (const char **)c->servers, c->n_servers);
	if(s == NATS_OK) s = natsOptions_SetName(c->opts, "mosquitto-im");
	if(s == NATS_OK) s = natsOptions_SetNoEcho(c->opts, true);
	if(s == NATS_OK) s = natsOptions_SetMaxReconnect(c->opts, -1);
	if(s == NATS_OK) s = natsOptions_SetReconnectWait(c->opts, 250);
	if(s == NATS_OK) s = natsOptions_SetReconnectBufSize(c->opts, 8 * 1024 * 1024);
	if(s == NATS_OK) s = natsOptions_SetPingInterval(c->opts, 2000);
	if(s == NATS_OK) s = natsOptions_SetMaxPingsOut(c->opts, 2);
	if(s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(c->opts, true);
	if(s == NATS_OK) s = natsOptions_SetReconnectedCB(c->opts, on_reconnected, c);
	if(s == NATS_OK) s = natsOptions_SetDisconnectedCB(c->opts, on_disconnected, c);
	if(s == NATS_OK) s = natsOptions_SetErrorHandler(c->opts, on_error, c);
	/* The broker starts whether NATS is up or not; the library keeps
	 * trying in the background and the first connect counts as a
	 * reconnect (everything is checked against the store then). */
	if(s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(c->opts, true, on_reconnected, c);
	if(s == NATS_OK){
		s = natsConnection_Connect(&c->nc, c->opts);
		if(s == NATS_NOT_YET_CONNECTED){
			im_log(MOSQ_LOG_WARNING, "im: cluster: no NATS server of nats_servers answers yet; retrying in the background.");
			s = NATS_OK;
		}
	}
	if(s == NATS_OK) s = natsConnection_Subscribe(&c->ctl_sub, c->nc, c->ctl, on_msg, c);
	if(s != NATS_OK){
		im_log(MOSQ_LOG_ERR, "im: cluster: cannot use NATS (nats_servers): %s.", nats_GetLastError(NULL));
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

static void *run(void *arg)
{
	struct im__cluster *c = arg;
	struct op *list, *next;
	sigset_t all;

	/* Threads the library starts inherit this: process signals stay the
	 * broker's. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	/* On failure (logged) the broker keeps serving from the store alone;
	 * what is queued for NATS is thrown away as it comes, so the queue
	 * stays bounded. */
	if(connect_nats(c) != MOSQ_ERR_SUCCESS && c->nc){
		natsConnection_Destroy(c->nc);
		c->nc = NULL;
	}
	for(;;){
		pthread_mutex_lock(&c->mu);
		while(c->ohead == NULL && !c->stop) pthread_cond_wait(&c->cv, &c->mu);
		list = c->ohead;
		c->ohead = NULL;
		c->otail = &c->ohead;
		c->obytes = 0;
		if(list == NULL && c->stop){
			pthread_mutex_unlock(&c->mu);
			break;
		}
		pthread_mutex_unlock(&c->mu);
		for(; list; list = next){
			next = list->next;
			if(c->nc) run_op(c, list);
			free(list);
		}
	}
	if(c->nc) natsConnection_FlushTimeout(c->nc, 1000);
	return NULL;
}

/* ---- N: what arrives ---- */

/* [N, C] Hands d to the broker thread. */
static void push_in(struct im__cluster *c, struct im__done *d)
{
	int64_t now, drained;
	bool was_empty;

	d->next = NULL;
	pthread_mutex_lock(&c->in_mu);
	was_empty = c->ihead == NULL;
	*c->itail = d;
	c->itail = &d->next;
	__atomic_store_n(&c->in_flag, 1, __ATOMIC_RELEASE);
	/* Wake the broker thread unless a wake-up is on its way already (one
	 * sent since its last drain): at most one signal per drain, not one
	 * per message. "Probably asleep" judged by time alone (no drain and
	 * no poke for POKE_QUIET_US) missed the commonest case, a steady
	 * trickle: the broker drained less than 1 ms ago and went back to
	 * epoll_wait, the last poke was less than 1 ms ago, and nothing woke
	 * it until Mosquitto 2.0's 100 ms timeout (cross-broker DMs at
	 * 2,900/s: p50 45 ms and p99 105 ms A->B against 2.5 and 12-38 ms
	 * A->A, docs/PERFORMANCE.md). A poke that lands just before
	 * epoll_wait is lost: sent again with a later message once it is
	 * POKE_QUIET_US old and still not drained. */
	now = im_mono_us();
	drained = __atomic_load_n(&c->drained_us, __ATOMIC_RELAXED);
	if((was_empty && c->poked_us <= drained) || (c->poked_us > drained && now - c->poked_us >= POKE_QUIET_US)){
		c->poked_us = now;
		pthread_mutex_unlock(&c->in_mu);
		im_wake__poke();
		return;
	}
	pthread_mutex_unlock(&c->in_mu);
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	struct im__cluster *c = closure;
	struct im__done *d;

	(void)nc;
	(void)sub;
	pthread_mutex_lock(&c->seen_mu);
	d = im_cwire__decode(c->frame_key, natsMsg_GetSubject(msg), natsMsg_GetData(msg),
			(size_t)natsMsg_GetDataLength(msg), c->cfg->prefix, im_now_ms(), &c->seen);
	pthread_mutex_unlock(&c->seen_mu);
	natsMsg_Destroy(msg);
	if(d == NULL){
		IM_STAT_ADD(c->metrics->cluster_rejected, 1);
		return;
	}
	push_in(c, d);
}

/* ---- W: shipping what was stored ---- */

static void name_root(struct im__cluster *c, uint64_t store_id)
{
	snprintf(c->root, sizeof(c->root), "im.%016" PRIx64, store_id);
	snprintf(c->ctl, sizeof(c->ctl), "%s.ctl", c->root);
}

void im_cluster__ship(struct im__cluster *c, uint64_t store_id, const uint8_t key[16], const struct im__done *list)
{
	char subject[IM_CWIRE_SUBJECT_MAX];
	const struct im__done *d;
	struct op *o;
	size_t n;

	if(c == NULL) return;
	if(c->root[0] == '\0') name_root(c, store_id); /* replaying at start */
	for(d = list; d; d = d->next){
		if(d->remote || d->repair) continue;
		if(d->kind == IM_DONE_FRAME){
			if(im_cwire__subject(subject, sizeof(subject), c->root, d->timeline) == 0) continue;
			n = im_cwire__frame(&c->wbuf, key, subject, d, im_now_ms());
		}else if(d->kind == IM_DONE_MEMBERS && d->group_op != IM_GROUP_SET){
			snprintf(subject, sizeof(subject), "%s", c->ctl);
			n = im_cwire__members(&c->wbuf, key, subject, d->group, d->group_op, d->owner, d->users, d->n_users);
		}else{
			continue;
		}
		if(n && (o = op_new(OP_PUB, subject, NULL, c->wbuf.data, n)) != NULL) enqueue(c, o);
	}
}

void im_cluster__event(struct im__cluster *c, const char *tl, const void *frame, size_t len)
{
	char subject[IM_CWIRE_SUBJECT_MAX];
	struct im__done d;
	struct op *o;
	size_t n;

	if(c == NULL || im_cwire__subject(subject, sizeof(subject), c->root, tl) == 0) return;
	memset(&d, 0, sizeof(d));
	d.kind = IM_DONE_FRAME;
	d.timeline = tl;
	d.event = true;
	d.payload = frame;
	d.len = len;
	n = im_cwire__frame(&c->bbuf, c->frame_key, subject, &d, im_now_ms());
	if(n && (o = op_new(OP_PUB, subject, NULL, c->bbuf.data, n)) != NULL) enqueue(c, o);
}

/* ---- B: interest ---- */

static void interest(struct im__cluster *c, const char *tl, int delta)
{
	intptr_t n = (intptr_t)im_map__get(&c->interest, tl, strlen(tl)) + delta;
	char subject[IM_CWIRE_SUBJECT_MAX];
	struct op *o;

	if(n < 0) n = 0;
	if(n == 0) im_map__del(&c->interest, tl, strlen(tl));
	else if(im_map__put(&c->interest, tl, strlen(tl), (void *)n) != MOSQ_ERR_SUCCESS) return;
	/* 0 -> 1 subscribes, 1 -> 0 unsubscribes. */
	if(!((delta > 0 && n == delta) || (delta < 0 && n == 0))) return;
	if(im_cwire__subject(subject, sizeof(subject), c->root, tl) == 0) return;
	if(delta > 0) im_order__anchor(&c->order, tl, im_now_ms());
	if((o = op_new(delta > 0 ? OP_SUB : OP_UNSUB, subject, tl, NULL, 0)) != NULL) enqueue(c, o);
}

static bool online_here(struct im__cluster *c, const char *user)
{
	return c->hooks.online && c->hooks.online(c->hooks.ctx, user);
}

void im_cluster__user(struct im__cluster *c, const char *user, bool online)
{
	struct ugroups *g;
	char tl[IM_TL_MAX + 1];
	size_t i;

	if(c == NULL) return;
	snprintf(tl, sizeof(tl), "u/%s", user);
	interest(c, tl, online ? 1 : -1);
	if((g = im_map__get(&c->ugroups, user, strlen(user))) == NULL) return;
	for(i = 0; i < g->n; i++){
		snprintf(tl, sizeof(tl), "g/%s", g->names[i]);
		interest(c, tl, online ? 1 : -1);
	}
}

void im_cluster__member(struct im__cluster *c, const char *group, const char *user, bool joined)
{
	struct ugroups *g;
	char tl[IM_TL_MAX + 1], **nn;
	size_t i;

	if(c == NULL) return;
	g = im_map__get(&c->ugroups, user, strlen(user));
	if(joined){
		if(g == NULL){
			if((g = im_calloc(1, sizeof(*g))) == NULL) return;
			if(im_map__put(&c->ugroups, user, strlen(user), g) != MOSQ_ERR_SUCCESS){
				free(g);
				return;
			}
		}
		for(i = 0; i < g->n; i++) if(!strcmp(g->names[i], group)) return;
		if(g->n == g->cap){
			if((nn = realloc(g->names, (g->cap ? g->cap * 2 : 4) * sizeof(*nn))) == NULL) return;
			g->names = nn;
			g->cap = g->cap ? g->cap * 2 : 4;
		}
		if((g->names[g->n] = im_strdup(group)) == NULL) return;
		g->n++;
	}else{
		if(g == NULL) return;
		for(i = 0; i < g->n && strcmp(g->names[i], group); i++);
		if(i == g->n) return;
		free(g->names[i]);
		g->names[i] = g->names[--g->n];
	}
	if(online_here(c, user)){
		snprintf(tl, sizeof(tl), "g/%s", group);
		interest(c, tl, joined ? 1 : -1);
	}
}

/* ---- B: delivery in seq order (order.c) ---- */

static void order_publish(void *ctx, struct im__done *d)
{
	struct im__cluster *c = ctx;

	c->hooks.deliver(c->hooks.ctx, d);
}

static bool order_repair(void *ctx, const char *tl, uint64_t after, uint64_t upto, bool anchor)
{
	struct im__cluster *c = ctx;
	struct im__job *j = im_job__new(IM_JOB_REPAIR, 0, NULL, "repair", NULL, NULL, 0);

	if(j == NULL) return false;
	snprintf(j->u.repair.timeline, sizeof(j->u.repair.timeline), "%s", tl);
	if(anchor){
		j->u.repair.anchor = true;
		mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: %s: now heard here; asking the store for its head.", tl);
	}else{
		j->u.repair.after = after;
		j->u.repair.upto = upto;
		mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: %s: reading seqs %" PRIu64 "..%s%.0" PRIu64 " from the store.",
				tl, after + 1, upto ? "" : "head", upto);
	}
	im_worker__submit(c->worker, j);
	return true;
}

static bool order_heard(void *ctx, const char *tl)
{
	struct im__cluster *c = ctx;

	return im_map__get(&c->interest, tl, strlen(tl)) != NULL;
}

bool im_cluster__deliver(struct im__cluster *c, struct im__done *d)
{
	if(c == NULL) return false;
	im_order__deliver(&c->order, d, im_mono_ms());
	return true;
}

void im_cluster__repaired(struct im__cluster *c, const char *tl, uint64_t reached, bool ok, bool anchor)
{
	if(c) im_order__repaired(&c->order, tl, reached, ok, anchor, im_mono_ms());
}

/* ---- B: the tick ---- */

static void read_group(struct im__cluster *c, const char *group)
{
	struct im__job *j;

	mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: group %s changed on another broker; reading its members from the store.", group);
	if((j = im_job__new(IM_JOB_FORGET, 0, NULL, "forget", NULL, NULL, 0)) != NULL){
		snprintf(j->u.forget.group, sizeof(j->u.forget.group), "%s", group);
		im_worker__submit(c->worker, j);
	}
}

static void forget_queue(struct im__cluster *c, struct forget *f, int64_t now)
{
	f->at_ms = now;
	f->again = false;
	f->next = NULL;
	*c->ftail = f;
	c->ftail = &f->next;
}

/* Another broker changed a group. Its message is taken as a sign, not
 * as the change: the worker drops its cached copy and reads the members
 * from the store, and this broker's view follows that ("set"). A message
 * replayed on NATS (the MAC proves its origin, not its age) then cannot
 * put a removed member back; and however many signs come, replayed or
 * not, a group is read at most once per FORGET_EVERY_MS: a sign within
 * that time is answered by one more reading at its end. */
static void members(struct im__cluster *c, struct im__done *d)
{
	size_t len = strlen(d->group);
	struct forget *f = im_map__get(&c->forgets, d->group, len);

	if(f){
		if(!f->again) c->forgets_owed++;
		f->again = true;
		free(d);
		return;
	}
	read_group(c, d->group);
	if((f = im_calloc(1, sizeof(*f) + len + 1)) != NULL){
		memcpy(f->group, d->group, len + 1);
		if(im_map__put(&c->forgets, f->group, len, f) == MOSQ_ERR_SUCCESS) forget_queue(c, f, im_mono_us() / 1000);
		else free(f);
	}
	free(d);
}

static void forget_tick(struct im__cluster *c)
{
	int64_t now = im_mono_us() / 1000;
	struct forget *f;

	while((f = c->fhead) != NULL && now - f->at_ms >= FORGET_EVERY_MS){
		if((c->fhead = f->next) == NULL) c->ftail = &c->fhead;
		if(f->again){
			c->forgets_owed--;
			read_group(c, f->group);
			forget_queue(c, f, now);
		}else{
			im_map__del(&c->forgets, f->group, strlen(f->group));
			free(f);
		}
	}
}

static void resync(struct im__cluster *c)
{
	struct im__job *j;

	/* Whatever other brokers published while we were away is lost to
	 * NATS: check every timeline we deliver against the store, and
	 * reload the groups (a membership change may be lost too). */
	im_order__resync(&c->order);
	if((j = im_job__new(IM_JOB_FORGET, 0, NULL, "forget", NULL, NULL, 0)) != NULL) im_worker__submit(c->worker, j);
	im_log(MOSQ_LOG_NOTICE, "im: cluster: connected to NATS; checking delivered timelines against the store.");
}

void im_cluster__tick(struct im__cluster *c, int64_t now)
{
	struct im__done *d, *next;

	if(c == NULL) return;
	__atomic_store_n(&c->drained_us, im_mono_us(), __ATOMIC_RELAXED);
	if(__atomic_exchange_n(&c->reconnected, 0, __ATOMIC_ACQ_REL)){
		resync(c);
		c->resync_ms = now;
	}else if(__atomic_load_n(&c->lost, __ATOMIC_ACQUIRE) && now - c->resync_ms >= LOST_RESYNC_MS){
		__atomic_store_n(&c->lost, 0, __ATOMIC_RELAXED);
		resync(c);
		c->resync_ms = now;
	}
	if(__atomic_load_n(&c->in_flag, __ATOMIC_ACQUIRE)){
		pthread_mutex_lock(&c->in_mu);
		d = c->ihead;
		c->ihead = NULL;
		c->itail = &c->ihead;
		__atomic_store_n(&c->in_flag, 0, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&c->in_mu);
		for(; d; d = next){
			next = d->next;
			if(d->kind == IM_DONE_SUBSCRIBED){
				im_order__subscribed(&c->order, d->timeline, now);
				free(d);
				continue;
			}
			IM_STAT_ADD(c->metrics->cluster_received, 1);
			if(d->kind == IM_DONE_MEMBERS) members(c, d);
			else if(!im_cluster__deliver(c, d)) free(d);
		}
	}
	forget_tick(c);
	im_order__tick(&c->order, now);
}

bool im_cluster__anchoring(const struct im__cluster *c, const char *tl)
{
	return c && im_order__anchoring(&c->order, tl);
}

bool im_cluster__busy(const struct im__cluster *c)
{
	return c && (im_order__busy(&c->order) || c->forgets_owed);
}

/* ---- start and stop ---- */

/* nats://[user[:password]@]host[:port] (or tls://): checked here, at
 * start, because libnats only parses it on its own thread later, where a
 * mistake would leave a broker running without the cluster. */
static bool server_url_ok(const char *u)
{
	const char *host, *at, *colon, *q;

	if(!strncmp(u, "nats://", 7)) host = u + 7;
	else if(!strncmp(u, "tls://", 6)) host = u + 6;
	else return false;
	if((at = strrchr(host, '@')) != NULL) host = at + 1;
	if(*host == '\0' || *host == ':' || strpbrk(host, "/?#")) return false;
	if(*host == '['){
		if((q = strchr(host, ']')) == NULL) return false;
		colon = q[1] == ':' ? q + 1 : (q[1] ? NULL : q + 1);
		if(colon == NULL) return false;
	}else{
		colon = strchr(host, ':');
		if(colon && strchr(colon + 1, ':')) return false;
	}
	if(colon && *colon == ':'){
		if(colon[1] == '\0' || strlen(colon + 1) > 5) return false;
		for(q = colon + 1; *q; q++) if(*q < '0' || *q > '9') return false;
		if(atoi(colon + 1) < 1 || atoi(colon + 1) > 65535) return false;
	}
	return true;
}

/* The list as logged: user and password of each URL replaced by "***". */
static void servers_shown(const struct im__cluster *c, char *out, size_t cap)
{
	size_t used = 0;
	int i, n;
	const char *at, *scheme_end;

	out[0] = '\0';
	for(i = 0; i < c->n_servers && used < cap; i++){
		scheme_end = strstr(c->servers[i], "://");
		at = strrchr(c->servers[i], '@');
		if(scheme_end && at){
			n = snprintf(out + used, cap - used, "%s%.*s***@%s", i ? "," : "",
					(int)(scheme_end + 3 - c->servers[i]), c->servers[i], at + 1);
		}else{
			n = snprintf(out + used, cap - used, "%s%s", i ? "," : "", c->servers[i]);
		}
		if(n < 0) break;
		used += (size_t)n;
	}
}

static int split_servers(struct im__cluster *c, const char *list)
{
	char *copy = im_strdup(list), *tok, *save = NULL;

	if(copy == NULL) return MOSQ_ERR_NOMEM;
	for(tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)){
		if(!server_url_ok(tok)){
			free(copy);
			return MOSQ_ERR_INVAL;
		}
		char **n = realloc(c->servers, (size_t)(c->n_servers + 1) * sizeof(char *));
		if(n == NULL || (n[c->n_servers] = im_strdup(tok)) == NULL){
			if(n) c->servers = n;
			free(copy);
			return MOSQ_ERR_NOMEM;
		}
		c->servers = n;
		c->n_servers++;
	}
	free(copy);
	return c->n_servers ? MOSQ_ERR_SUCCESS : MOSQ_ERR_INVAL;
}

int im_cluster__init(const struct im__config *cfg, struct im__metrics *metrics, const struct im__cluster_hooks *hooks,
		struct im__cluster **out)
{
	struct im__cluster *c;

	*out = NULL;
	if(cfg->nats_servers == NULL) return MOSQ_ERR_SUCCESS;
	if((c = im_calloc(1, sizeof(*c))) == NULL) return MOSQ_ERR_NOMEM;
	c->cfg = cfg;
	c->metrics = metrics;
	c->hooks = *hooks;
	c->otail = &c->ohead;
	c->itail = &c->ihead;
	c->ftail = &c->fhead;
	im_order__init(&c->order, &(struct im__order_hooks){.ctx = c, .publish = order_publish, .repair = order_repair,
			.heard = order_heard}, metrics);
	pthread_mutex_init(&c->mu, NULL);
	im_cond__init(&c->cv);
	pthread_mutex_init(&c->in_mu, NULL);
	pthread_mutex_init(&c->seen_mu, NULL);
	if(split_servers(c, cfg->nats_servers) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_nats_servers: expected a comma-separated list of NATS URLs (nats://[user:password@]host[:port], or tls://).");
		im_cluster__stop(c);
		return MOSQ_ERR_INVAL;
	}
	*out = c;
	return MOSQ_ERR_SUCCESS;
}

int im_cluster__start(struct im__cluster *c, struct im__worker *w, uint64_t store_id, const uint8_t key[16])
{
	char shown[1024];

	if(c == NULL) return MOSQ_ERR_SUCCESS;
	c->worker = w;
	memcpy(c->frame_key, key, sizeof(c->frame_key));
	name_root(c, store_id);
	if(pthread_create(&c->thread, NULL, run, c) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: cluster: cannot start a thread.");
		return MOSQ_ERR_UNKNOWN;
	}
	c->started = true;
	servers_shown(c, shown, sizeof(shown));
	mosquitto_log_printf(MOSQ_LOG_INFO, "im: cluster: sharing timelines over NATS (%s) as %s.", shown, c->root);
	return MOSQ_ERR_SUCCESS;
}

static void free_ugroups(void *v)
{
	struct ugroups *g = v;
	size_t i;

	for(i = 0; i < g->n; i++) free(g->names[i]);
	free(g->names);
	free(g);
}

static void unsub_one(void *v)
{
	natsSubscription *sub = v;

	natsSubscription_Destroy(sub);
}

void im_cluster__stop(struct im__cluster *c)
{
	struct op *o, *next;
	struct im__done *d, *dn;
	int i;

	if(c == NULL) return;
	if(c->started){
		pthread_mutex_lock(&c->mu);
		c->stop = true;
		pthread_cond_signal(&c->cv);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->thread, NULL);
	}
	if(c->ctl_sub) natsSubscription_Destroy(c->ctl_sub);
	im_map__free(&c->subs, unsub_one);
	if(c->nc){
		natsConnection_Close(c->nc);
		natsConnection_Destroy(c->nc);
	}
	if(c->opts) natsOptions_Destroy(c->opts);
	if(c->started) nats_CloseAndWait(2000);
	for(o = c->ohead; o; o = next){
		next = o->next;
		free(o);
	}
	for(d = c->ihead; d; d = dn){
		dn = d->next;
		free(d);
	}
	im_map__free(&c->interest, NULL);
	im_map__free(&c->ugroups, free_ugroups);
	im_map__free(&c->forgets, free);
	im_cwire__seen_free(&c->seen);
	im_order__free(&c->order);
	im_buf__free(&c->wbuf);
	im_buf__free(&c->bbuf);
	for(i = 0; i < c->n_servers; i++) free(c->servers[i]);
	free(c->servers);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->in_mu);
	pthread_mutex_destroy(&c->seen_mu);
	free(c);
}
