/*
 * Per client id and per user state of the broker thread: rate budgets,
 * and the owner of a client id.
 */
#ifndef IM_BROKER_CLIENTS_H
#define IM_BROKER_CLIENTS_H

#include <stdint.h>

#include "base/defs.h"
#include "base/util.h"

struct im__plugin;

/* Per client id. */
struct im__client {
	char owner[IM_NAME_MAX + 1];    /* the first user seen with this id ("" = none yet) */
	struct im__bucket sync_bucket;  /* sync_rate */
	struct im__bucket reply_bucket; /* reply_bytes_rate */
	uint32_t sync_inflight;         /* sync jobs queued, not answered */
};
/* The client's entry, created on first use; NULL if id is NULL or on
 * allocation failure. */
struct im__client *im_clients__get(struct im__plugin *p, const char *id);

/* Per user (all its connections). */
struct im__user {
	struct im__bucket msg;          /* user_msg_rate */
	struct im__bucket typing;       /* typing_rate */
};
struct im__user *im_clients__user(struct im__plugin *p, const char *user);

#endif
