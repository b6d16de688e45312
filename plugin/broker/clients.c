/*
 * Per client id state of the broker thread: its request budgets and, for
 * the client id guard, which user it belongs to.
 *
 * One client must not pin the broker, nor one user the store worker: a
 * 20-byte request can cost a reply of hundreds of KB and a page of store
 * work, and a client that never reads makes the broker hold every reply.
 * So every request with a reply is counted from when it is queued for the
 * worker until its reply is published, per client id (request_inflight)
 * and per user across its client ids (user_request_inflight); replies
 * spend the client's reply_bytes_rate budget. A request beyond a bound is
 * answered TOO_MANY at once. Those answers have a budget of their own, as
 * large (and at least ANSWER_FLOOR a second): a client beyond it gets none,
 * its requests are dropped (logged once, when it starts), so a flood it
 * never reads pins a bounded amount. Apart, so that refusals never delay what an
 * honest client asks again after retry_after_ms.
 *
 * A reply names the client entry it was counted in by an epoch: a clean
 * session's entry is freed at its disconnect, and the replies still on
 * their way must not end the requests of the entry made at its return.
 * Users' entries are never freed, so theirs is counted exactly.
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/config.h"
#include "base/map.h"
#include "base/name.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/plugin.h"
#include "worker/job.h"
#include "worker/worker.h"

#define REPLY_OVERHEAD 256      /* what the broker keeps per queued reply besides its bytes */
#define ANSWER_FLOOR (256.0 * 1024) /* bytes a second of replies given at once, at least */
#define INFLIGHT_RETRY_MS 100

static uint32_t epochs;

struct im__client *im_clients__get(struct im__plugin *p, const char *id)
{
	struct im__client *c;

	if(id == NULL) return NULL;
	c = im_map__get(&p->clients, id, strlen(id));
	if(c) return c;
	c = im_calloc(1, sizeof(*c));
	if(c && im_map__put(&p->clients, id, strlen(id), c) != MOSQ_ERR_SUCCESS){
		im_free(c);
		c = NULL;
	}
	if(c && (c->epoch = ++epochs) == 0) c->epoch = ++epochs; /* 0: counted without an entry */
	return c;
}

struct im__user *im_clients__user(struct im__plugin *p, const char *user)
{
	struct im__user *u;

	if(user == NULL) return NULL;
	u = im_map__get(&p->users, user, strlen(user));
	if(u) return u;
	u = im_calloc(1, sizeof(*u));
	if(u && im_map__put(&p->users, user, strlen(user), u) != MOSQ_ERR_SUCCESS){
		im_free(u);
		u = NULL;
	}
	return u;
}

/* ---- requests waiting to be answered, and reply bytes ---- */

/* A reply budget, refilled to now: a burst is four seconds' worth. */
static double tokens(struct im__bucket *b, double rate)
{
	im_bucket__take(b, rate, 4.0 * rate, 0, im_mono_ms());
	return b->tokens;
}

static bool refuse(struct im__refusal *no, uint32_t retry_ms, const char *why)
{
	no->retry_ms = retry_ms;
	snprintf(no->why, sizeof(no->why), "%s; ask again in %u ms", why, retry_ms);
	return false;
}

bool im_clients__admit(struct im__plugin *p, struct mosquitto *client, enum im_job_kind kind, struct im__refusal *no)
{
	const struct im__config *cfg = &p->cfg;
	struct im__client *c = im_clients__get(p, mosquitto_client_id(client));
	const char *user;
	struct im__user *u;
	bool sync = kind == IM_JOB_SYNC;
	double left, least = 0;

	if(c && sync && cfg->sync_rate && !im_bucket__take(&c->sync_bucket, cfg->sync_rate, cfg->sync_rate, 1.0, im_mono_ms())){
		return refuse(no, 1000 / cfg->sync_rate + 1, "too many sync requests (plugin_opt_sync_rate)");
	}
	if(c && sync && cfg->sync_inflight && c->sync_inflight >= cfg->sync_inflight){
		return refuse(no, INFLIGHT_RETRY_MS, "too many sync requests waiting to be answered (plugin_opt_sync_inflight)");
	}
	/* An ack is not counted: its store work is one row, its reply is
	 * small and spends the reply budget below, and clients send one per
	 * timeline at once without waiting (a refused one would leave the
	 * cursor and the unread count behind). */
	if(c && kind != IM_JOB_ACK && cfg->request_inflight && c->inflight >= cfg->request_inflight){
		return refuse(no, INFLIGHT_RETRY_MS, "too many requests waiting to be answered (plugin_opt_request_inflight)");
	}
	/* Counted under the name the handlers accept (policy.c); a request
	 * without one is refused there. */
	if((user = mosquitto_client_username(client)) != NULL && !im_name__valid(user, strlen(user))) user = NULL;
	if(user && kind != IM_JOB_ACK && cfg->user_request_inflight && (u = im_clients__user(p, user)) != NULL
			&& u->inflight >= cfg->user_request_inflight){
		return refuse(no, INFLIGHT_RETRY_MS,
				"too many requests of this user waiting to be answered, on all its connections (plugin_opt_user_request_inflight)");
	}
	/* An ack right after a catch-up that spent the budget still goes: its
	 * reply is small, and a refused one leaves the cursor behind. */
	if(kind == IM_JOB_ACK) least = -4.0 * cfg->reply_bytes_rate;
	if(c && cfg->reply_bytes_rate && (left = tokens(&c->reply_bucket, cfg->reply_bytes_rate)) < least){
		return refuse(no, (uint32_t)((least - left) * 1000.0 / cfg->reply_bytes_rate) + 1,
				"replies are being sent faster than plugin_opt_reply_bytes_rate");
	}
	return true;
}

void im_clients__submit(struct im__plugin *p, struct im__job *j)
{
	struct im__client *c = im_clients__get(p, j->to.client_id);
	struct im__user *u = j->user[0] ? im_clients__user(p, j->user) : NULL;

	if(j->kind == IM_JOB_ACK){ /* not counted: see im_clients__admit */
		im_worker__submit(p->worker, j);
		return;
	}
	j->to.counted = true;
	if(c){
		c->inflight++;
		if(j->kind == IM_JOB_SYNC) c->sync_inflight++;
		j->to.epoch = c->epoch;
	}
	if(u) u->inflight++;
	im_worker__submit(p->worker, j);
}

void im_clients__replied(struct im__plugin *p, const struct im__done *d)
{
	struct im__client *c;
	struct im__user *u;

	/* Receipts are not requests: the message publish path bounds them. */
	if(!d->counted) return;
	if(d->user && d->user[0] && (u = im_map__get(&p->users, d->user, strlen(d->user))) != NULL && u->inflight){
		u->inflight--;
	}
	if(d->client_id == NULL || (c = im_map__get(&p->clients, d->client_id, strlen(d->client_id))) == NULL) return;
	if(c->epoch == d->epoch){
		if(c->inflight) c->inflight--;
		if(d->sync_reply && c->sync_inflight) c->sync_inflight--;
	}
	/* Bytes are charged as they go out: a client that asks for more than
	 * it can take is refused (429) until its budget refills. */
	if(p->cfg.reply_bytes_rate){
		tokens(&c->reply_bucket, p->cfg.reply_bytes_rate);
		c->reply_bucket.tokens -= (double)(d->len + REPLY_OVERHEAD);
	}
}

bool im_clients__may_send(struct im__plugin *p, const char *client_id, size_t len)
{
	double rate = p->cfg.reply_bytes_rate > ANSWER_FLOOR ? p->cfg.reply_bytes_rate : ANSWER_FLOOR, left;
	struct im__client *c;

	if(p->cfg.reply_bytes_rate == 0 || (c = im_clients__get(p, client_id)) == NULL) return true;
	/* Once dropping, until half a burst is back: a flood that goes on is
	 * one episode, not one answer per refill. */
	left = tokens(&c->answer_bucket, rate);
	if(left < 0 || (c->dropping && left < 2.0 * rate)){
		if(!c->dropping){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: client \"%s\" asks faster than it reads its replies: its requests are dropped unanswered until its reply budget refills (plugin_opt_reply_bytes_rate).",
					client_id);
		}
		c->dropping = true;
		return false;
	}
	c->dropping = false;
	c->answer_bucket.tokens -= (double)(len + REPLY_OVERHEAD);
	return true;
}
