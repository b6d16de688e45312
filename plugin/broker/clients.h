/*
 * Per client id and per user state of the broker thread: rate budgets,
 * requests waiting to be answered, and the owner of a client id.
 */
#ifndef IM_BROKER_CLIENTS_H
#define IM_BROKER_CLIENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/defs.h"
#include "base/util.h"
#include "worker/job.h"

struct im__plugin;
struct mosquitto;

/* Per client id. */
struct im__client {
	char owner[IM_NAME_MAX + 1];    /* the first user seen with this id ("" = none yet) */
	struct im__bucket sync_bucket;  /* sync_rate */
	struct im__bucket reply_bucket; /* reply_bytes_rate: the worker's replies */
	struct im__bucket answer_bucket;/* the same for replies given at once (refusals) */
	uint32_t sync_inflight;         /* sync jobs queued, not answered */
	uint32_t inflight;              /* requests of any kind queued, not answered */
	uint32_t epoch;                 /* tells this entry's requests from those of one freed before it */
	bool dropping;                  /* beyond its answer budget: requests go unanswered */
};
/* The client's entry, created on first use; NULL if id is NULL or on
 * allocation failure. */
struct im__client *im_clients__get(struct im__plugin *p, const char *id);

/* Per user (all its connections). */
struct im__user {
	struct im__bucket msg;          /* user_msg_rate */
	struct im__bucket typing;       /* typing_rate */
	uint32_t inflight;              /* requests of any kind queued, not answered */
};
struct im__user *im_clients__user(struct im__plugin *p, const char *user);

/* Why a request was refused, for its reply (it says when to ask again). */
struct im__refusal {
	char why[192];
	uint32_t retry_ms;
};
/* Requests answered by the store worker (every one with a reply): may the
 * client have one more of this kind waiting? True if
 * so; else false with why not (naming the option) in *no. Bounds:
 * sync_rate and sync_inflight (syncs), request_inflight per client,
 * user_request_inflight per user (not acks), reply_bytes_rate (an ack,
 * whose reply is small, until the client is a whole burst behind). */
bool im_clients__admit(struct im__plugin *p, struct mosquitto *client, enum im_job_kind kind, struct im__refusal *no);
/* Counts j (admitted; j->user and its route set) for its client and user
 * until its reply is published, and hands it to the worker. */
void im_clients__submit(struct im__plugin *p, struct im__job *j);
/* A reply completion is being published: ends the request it answers, if
 * counted, and charges its bytes. */
void im_clients__replied(struct im__plugin *p, const struct im__done *d);
/* A reply the broker thread gives at once (a refusal, typing's answer):
 * charges len bytes; false if the client is so far behind on reading its
 * replies that this one is dropped instead (logged once per episode). */
bool im_clients__may_send(struct im__plugin *p, const char *client_id, size_t len);

#endif
