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
 *   [B] the broker thread delivers in seq order (im_cluster__deliver),
 *       decides which subjects this broker needs (interest), and asks the
 *       worker for repairs.
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

#include "im.h"

#define GAP_GRACE_MS 20         /* a gap may close by itself (two paths through NATS) */
#define TAIL_CHECK_MS 1000      /* after a timeline went quiet: was its last message lost? */
#define IDLE_FORGET_MS (10 * 60 * 1000) /* then its state goes */
#define HOLD_MAX 1024           /* frames held per timeline while a gap is open */
#define CHECKS_PER_TICK 256
#define OUT_MAX (64u << 20)     /* bytes queued for NATS before the oldest are dropped */
#define REPAIR_RETRY_MS 500
#define POKE_QUIET_US 1000
#define SUB_SETTLE_MS 250       /* a new subscription reaches the other NATS servers */
#define LOST_RESYNC_MS 5000     /* after NATS dropped messages: a whole check, at most this often */

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

/* [B] per timeline delivered here. */
struct tls {
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
	bool in_gaps;
	int list;               /* 0 none, 1 pending check, 2 idle */
	struct tls *prev, *next;        /* in its list */
	struct tls *gnext;              /* in the gap list */
};

struct tlist {
	struct tls *head, *tail;
};

struct ugroups {
	size_t n, cap;
	char **names;
};

struct im__cluster {
	struct im__plugin *p;
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
	/* [B] */
	struct im__map interest;        /* timeline -> (void *)(intptr_t)count */
	struct im__map ugroups;         /* user -> struct ugroups */
	struct im__map tls;             /* timeline -> struct tls */
	struct tlist pending, idle;
	struct tls *gaps;
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
		IM_STAT_ADD(c->p->metrics.cluster_dropped, 1);
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
			if(s == NATS_OK) IM_STAT_ADD(c->p->metrics.cluster_sent, 1);
			else IM_STAT_ADD(c->p->metrics.cluster_dropped, 1);
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
	IM_STAT_ADD(c->p->metrics.cluster_dropped, 1);
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
	int64_t now;
	bool was_empty;

	d->next = NULL;
	pthread_mutex_lock(&c->in_mu);
	was_empty = c->ihead == NULL;
	*c->itail = d;
	c->itail = &d->next;
	__atomic_store_n(&c->in_flag, 1, __ATOMIC_RELEASE);
	/* Wake the broker thread only if it is probably asleep, as the
	 * worker does (worker.c): a signal per message costs it dearly. */
	now = im_mono_us();
	if(was_empty && (now - __atomic_load_n(&c->drained_us, __ATOMIC_RELAXED) >= POKE_QUIET_US
				|| now - c->poked_us >= POKE_QUIET_US)){
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
	d = im_cwire__decode(c->p->frame_key, natsMsg_GetSubject(msg), natsMsg_GetData(msg),
			(size_t)natsMsg_GetDataLength(msg), c->p->cfg.prefix);
	natsMsg_Destroy(msg);
	if(d == NULL){
		IM_STAT_ADD(c->p->metrics.cluster_rejected, 1);
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

void im_cluster__ship(struct im__plugin *p, uint64_t store_id, const uint8_t key[16], const struct im__done *list)
{
	struct im__cluster *c = p->cluster;
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
			n = im_cwire__frame(&c->wbuf, key, subject, d);
		}else if(d->kind == IM_DONE_MEMBERS && strcmp(d->op, "set")){
			snprintf(subject, sizeof(subject), "%s", c->ctl);
			n = im_cwire__members(&c->wbuf, key, subject, d->group, d->op, d->owner, d->users, d->n_users);
		}else{
			continue;
		}
		if(n && (o = op_new(OP_PUB, subject, NULL, c->wbuf.data, n)) != NULL) enqueue(c, o);
	}
}

void im_cluster__event(struct im__plugin *p, const char *tl, const void *frame, size_t len)
{
	struct im__cluster *c = p->cluster;
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
	n = im_cwire__frame(&c->bbuf, p->frame_key, subject, &d);
	if(n && (o = op_new(OP_PUB, subject, NULL, c->bbuf.data, n)) != NULL) enqueue(c, o);
}

/* ---- B: interest ---- */

static void anchor(struct im__cluster *c, const char *tl);

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
	if(delta > 0) anchor(c, tl);
	if((o = op_new(delta > 0 ? OP_SUB : OP_UNSUB, subject, tl, NULL, 0)) != NULL) enqueue(c, o);
}

static bool online_here(struct im__plugin *p, const char *user)
{
	return im_map__get(&p->users_online, user, strlen(user)) != NULL;
}

void im_cluster__user(struct im__plugin *p, const char *user, bool online)
{
	struct im__cluster *c = p->cluster;
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

void im_cluster__member(struct im__plugin *p, const char *group, const char *user, bool joined)
{
	struct im__cluster *c = p->cluster;
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
	if(online_here(p, user)){
		snprintf(tl, sizeof(tl), "g/%s", group);
		interest(c, tl, joined ? 1 : -1);
	}
}

/* ---- B: delivery in seq order ---- */

static void unlink_list(struct im__cluster *c, struct tls *e)
{
	struct tlist *l = e->list == 1 ? &c->pending : e->list == 2 ? &c->idle : NULL;

	if(l == NULL) return;
	if(e->prev) e->prev->next = e->next;
	else l->head = e->next;
	if(e->next) e->next->prev = e->prev;
	else l->tail = e->prev;
	e->prev = e->next = NULL;
	e->list = 0;
}

static void append_list(struct im__cluster *c, struct tls *e, int which)
{
	struct tlist *l = which == 1 ? &c->pending : &c->idle;

	unlink_list(c, e);
	e->prev = l->tail;
	e->next = NULL;
	if(l->tail) l->tail->next = e;
	else l->head = e;
	l->tail = e;
	e->list = which;
}

static void free_held(struct tls *e)
{
	struct im__done *d, *next;

	for(d = e->held; d; d = next){
		next = d->next;
		free(d);
	}
	e->held = NULL;
	e->n_held = 0;
}

static struct tls *entry(struct im__cluster *c, const char *tl, uint64_t seq)
{
	struct tls *e = im_map__get(&c->tls, tl, strlen(tl));

	if(e) return e;
	if((e = im_calloc(1, sizeof(*e))) == NULL) return NULL;
	snprintf(e->name, sizeof(e->name), "%s", tl);
	/* First sight: deliver from here. What came before was either
	 * delivered before this broker cared, or is the client's to sync. */
	e->last = e->want = seq - 1;
	if(im_map__put(&c->tls, tl, strlen(tl), e) != MOSQ_ERR_SUCCESS){
		free(e);
		return NULL;
	}
	return e;
}

static void publish(struct im__plugin *p, struct im__done *d)
{
	d->kind = IM_DONE_FRAME;
	im_deliver__frame(p, d);
	free(d);
}

static void mark_gap(struct im__cluster *c, struct tls *e, int64_t now)
{
	if(e->gap_ms == 0) e->gap_ms = now;
	if(!e->in_gaps){
		e->in_gaps = true;
		e->gnext = c->gaps;
		c->gaps = e;
	}
}

/* Delivers held frames that now follow; a gap that is closed is closed. */
static void release(struct im__plugin *p, struct tls *e)
{
	struct im__done *d;

	while((d = e->held) != NULL && d->seq <= e->last + 1){
		e->held = d->next;
		e->n_held--;
		if(d->seq == e->last + 1){
			e->last = d->seq;
			publish(p, d);
		}else{
			free(d);
		}
	}
	if(e->last >= e->want) e->gap_ms = 0;
}

static void hold(struct im__cluster *c, struct tls *e, struct im__done *d)
{
	struct im__done **pp = &e->held;

	while(*pp && (*pp)->seq < d->seq) pp = &(*pp)->next;
	if((*pp && (*pp)->seq == d->seq) || e->n_held >= HOLD_MAX){
		/* A repeat, or too many waiting: the repair brings it. */
		IM_STAT_ADD(c->p->metrics.cluster_duplicates, 1);
		free(d);
		return;
	}
	d->next = *pp;
	*pp = d;
	e->n_held++;
}

bool im_cluster__deliver(struct im__plugin *p, struct im__done *d)
{
	struct im__cluster *c = p->cluster;
	struct tls *e;
	int64_t now;

	if(c == NULL) return false;
	if(d->event){
		publish(p, d);
		return true;
	}
	/* A timeline this broker does not hear (a local sender's message to
	 * someone with no device here): nothing comes from NATS to order it
	 * against, so it is handed on as it comes, and no state is kept (or
	 * checked against the store later) for it. */
	e = im_map__get(&c->tls, d->timeline, strlen(d->timeline));
	if(e == NULL && !d->repair && im_map__get(&c->interest, d->timeline, strlen(d->timeline)) == NULL){
		publish(p, d);
		return true;
	}
	if(e == NULL && (e = entry(c, d->timeline, d->seq)) == NULL){
		publish(p, d); /* out of memory: unordered rather than lost */
		return true;
	}
	now = im_now_ms();
	if(!d->repair){
		e->rx_ms = now;
		append_list(c, e, 1);
	}
	if(d->seq > e->want) e->want = d->seq;
	if(e->anchoring){
		hold(c, e, d);
	}else if(d->seq <= e->last){
		IM_STAT_ADD(p->metrics.cluster_duplicates, 1);
		free(d);
	}else if(d->seq == e->last + 1){
		e->last = d->seq;
		publish(p, d);
		release(p, e);
	}else{
		hold(c, e, d);
		mark_gap(c, e, now);
	}
	return true;
}

static void submit_repair(struct im__cluster *c, struct tls *e, uint64_t upto)
{
	struct im__job *j = im_job__new(IM_JOB_REPAIR, 0, NULL, "repair", NULL, NULL, 0);

	if(j == NULL) return;
	snprintf(j->u.repair.timeline, sizeof(j->u.repair.timeline), "%s", e->name);
	j->u.repair.after = e->last;
	j->u.repair.upto = upto;
	e->repairing = true;
	mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: %s: reading seqs %" PRIu64 "..%s%.0" PRIu64 " from the store.",
			e->name, e->last + 1, upto ? "" : "head", upto);
	IM_STAT_ADD(c->p->metrics.cluster_repairs, 1);
	im_worker__submit(c->p, j);
}

static void submit_anchor(struct im__cluster *c, struct tls *e)
{
	struct im__job *j = im_job__new(IM_JOB_REPAIR, 0, NULL, "repair", NULL, NULL, 0);

	if(j == NULL) return;
	snprintf(j->u.repair.timeline, sizeof(j->u.repair.timeline), "%s", e->name);
	j->u.repair.anchor = true;
	e->repairing = true;
	mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: %s: now heard here; asking the store for its head.", e->name);
	im_worker__submit(c->p, j);
}

/* This broker starts to hear tl (a user came online here). Live delivery
 * starts after the head as the worker sees it now: the worker reads it
 * before any sync the new device sends (they queue behind), so what the
 * device's first sync does not return is delivered live. Frames that
 * arrive meanwhile wait, and are delivered too (im_cluster__repaired). A state this broker kept from its own messages
 * is stale (it heard nobody else's): it starts over. */
static void anchor(struct im__cluster *c, const char *tl)
{
	struct tls *e = im_map__get(&c->tls, tl, strlen(tl));

	if(e && (e->repairing || e->in_gaps)) return;
	if(e){
		unlink_list(c, e);
		im_map__del(&c->tls, tl, strlen(tl));
		free_held(e);
		free(e);
	}
	if((e = entry(c, tl, 1)) == NULL) return;
	e->anchoring = true;
	submit_anchor(c, e);
}

void im_cluster__repaired(struct im__plugin *p, const char *tl, uint64_t reached, bool ok, bool anchor_done)
{
	struct im__cluster *c = p->cluster;
	struct im__done *d;
	struct tls *e;

	if(c == NULL || (e = im_map__get(&c->tls, tl, strlen(tl))) == NULL) return;
	e->repairing = false;
	mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: %s: %s %s at seq %" PRIu64 " (delivered up to %" PRIu64 ", %zu held).",
			tl, anchor_done ? "head" : "repair", ok ? "answered" : "failed", reached, e->last, e->n_held);
	if(anchor_done && e->anchoring){
		if(!ok){
			e->retry_ms = im_now_ms() + REPAIR_RETRY_MS;
			mark_gap(c, e, im_now_ms());
			return;
		}
		e->anchoring = false;
		/* Frames held meanwhile were heard after this broker subscribed:
		 * live for the device that brought the interest, even those
		 * committed before the worker got round to reading the head
		 * (under load, many). Delivery starts at the first of them,
		 * unless it lies further back than a hold's worth: that one is
		 * no live frame but an old one replayed on NATS. */
		while(e->held && e->held->seq + HOLD_MAX <= reached){
			d = e->held;
			e->held = d->next;
			e->n_held--;
			free(d);
		}
		if(e->held && e->held->seq - 1 < reached) reached = e->held->seq - 1;
		if(reached > e->last) e->last = reached;
		if(e->last > e->want) e->want = e->last;
		release(p, e);
		if(e->last < e->want) mark_gap(c, e, im_now_ms());
		return;
	}
	if(!ok){
		e->retry_ms = im_now_ms() + REPAIR_RETRY_MS;
		if(e->last < e->want) mark_gap(c, e, e->gap_ms ? e->gap_ms : im_now_ms());
		return;
	}
	/* Everything up to reached that the store did not return is gone
	 * (expired, trimmed): nothing to wait for. */
	if(reached > e->last){
		e->last = reached;
		if(reached > e->want) e->want = reached;
	}
	release(p, e);
	if(e->last < e->want) mark_gap(c, e, 1); /* more to fetch: at once */
}

/* ---- B: the tick ---- */

/* Another broker changed a group. Its message is taken as a sign, not
 * as the change: the worker drops its cached copy and reads the members
 * from the store, and this broker's view follows that ("set"). A message
 * replayed on NATS (the MAC proves its origin, not its age) then cannot
 * put a removed member back. */
static void members(struct im__plugin *p, struct im__done *d)
{
	struct im__job *j;

	mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: cluster: group %s changed on another broker; reading its members from the store.", d->group);
	if((j = im_job__new(IM_JOB_FORGET, 0, NULL, "forget", NULL, NULL, 0)) != NULL){
		snprintf(j->u.forget.group, sizeof(j->u.forget.group), "%s", d->group);
		im_worker__submit(p, j);
	}
	free(d);
}

static void subscribed(struct im__cluster *c, const char *tl, int64_t now)
{
	struct tls *e = im_map__get(&c->tls, tl, strlen(tl));

	if(e == NULL) return;
	/* A tail check SUB_SETTLE_MS from now: whatever was committed before
	 * NATS forwarded tl to this broker is read from the store. */
	e->rx_ms = now - TAIL_CHECK_MS + SUB_SETTLE_MS;
	append_list(c, e, 1);
}

static void resync(struct im__cluster *c)
{
	struct im__job *j;
	struct tls *e;

	/* Whatever other brokers published while we were away is lost to
	 * NATS: check every timeline we deliver against the store, and
	 * reload the groups (a membership change may be lost too). */
	while((e = c->idle.head) != NULL){
		e->rx_ms = 0;
		append_list(c, e, 1);
	}
	if((j = im_job__new(IM_JOB_FORGET, 0, NULL, "forget", NULL, NULL, 0)) != NULL) im_worker__submit(c->p, j);
	im_log(MOSQ_LOG_NOTICE, "im: cluster: connected to NATS; checking delivered timelines against the store.");
}

void im_cluster__tick(struct im__plugin *p, int64_t now)
{
	struct im__cluster *c = p->cluster;
	struct im__done *d, *next;
	struct tls *e, **pp;
	int checks = 0;

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
				subscribed(c, d->timeline, now);
				free(d);
				continue;
			}
			IM_STAT_ADD(p->metrics.cluster_received, 1);
			if(d->kind == IM_DONE_MEMBERS) members(p, d);
			else if(!im_cluster__deliver(p, d)) free(d);
		}
	}
	/* Gaps that did not close by themselves within the grace. */
	for(pp = &c->gaps; (e = *pp) != NULL;){
		if(e->anchoring){
			if(!e->repairing && now >= e->retry_ms) submit_anchor(c, e);
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
			IM_STAT_ADD(p->metrics.cluster_gaps, 1);
			submit_repair(c, e, e->want);
		}
		pp = &e->gnext;
	}
	/* Timelines that went quiet: was their last message lost on the way? */
	while((e = c->pending.head) != NULL && now - e->rx_ms >= TAIL_CHECK_MS && checks < CHECKS_PER_TICK){
		if(e->anchoring || e->repairing){
			/* Not before live delivery has a start, nor while a repair is
			 * out (it may leave a later tail unread): again shortly. */
			e->rx_ms = now - TAIL_CHECK_MS + 100;
			append_list(c, e, 1);
			if(c->pending.head == e) break;
			continue;
		}
		submit_repair(c, e, 0);
		checks++;
		e->idle_ms = now;
		append_list(c, e, 2);
	}
	/* And those quiet for long are forgotten. */
	while((e = c->idle.head) != NULL && now - e->idle_ms >= IDLE_FORGET_MS && !e->repairing && !e->in_gaps){
		unlink_list(c, e);
		im_map__del(&c->tls, e->name, strlen(e->name));
		free_held(e);
		free(e);
	}
}

bool im_cluster__busy(const struct im__plugin *p)
{
	const struct im__cluster *c = p->cluster;

	return c && (c->gaps || c->pending.head);
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

int im_cluster__init(struct im__plugin *p)
{
	struct im__cluster *c;

	if(p->cfg.nats_servers == NULL) return MOSQ_ERR_SUCCESS;
	if((c = im_calloc(1, sizeof(*c))) == NULL) return MOSQ_ERR_NOMEM;
	c->p = p;
	c->otail = &c->ohead;
	c->itail = &c->ihead;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	pthread_mutex_init(&c->in_mu, NULL);
	if(split_servers(c, p->cfg.nats_servers) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_nats_servers: expected a comma-separated list of NATS URLs (nats://[user:password@]host[:port], or tls://).");
		p->cluster = c;
		im_cluster__stop(p);
		return MOSQ_ERR_INVAL;
	}
	p->cluster = c;
	return MOSQ_ERR_SUCCESS;
}

int im_cluster__start(struct im__plugin *p)
{
	struct im__cluster *c = p->cluster;
	char shown[1024];

	if(c == NULL) return MOSQ_ERR_SUCCESS;
	name_root(c, p->store_id);
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

static void free_tls(void *v)
{
	struct tls *e = v;

	free_held(e);
	free(e);
}

static void unsub_one(void *v)
{
	natsSubscription *sub = v;

	natsSubscription_Destroy(sub);
}

void im_cluster__stop(struct im__plugin *p)
{
	struct im__cluster *c = p->cluster;
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
	im_map__free(&c->tls, free_tls);
	im_buf__free(&c->wbuf);
	im_buf__free(&c->bbuf);
	for(i = 0; i < c->n_servers; i++) free(c->servers[i]);
	free(c->servers);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->in_mu);
	free(c);
	p->cluster = NULL;
}
