/*
 * Cluster mode: many brokers, one set of timelines (plugin_opt_nats_servers).
 * cluster/cluster.c says how; this is what the broker layer sees.
 */
#ifndef IM_CLUSTER_CLUSTER_H
#define IM_CLUSTER_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/config.h"
#include "base/stats.h"
#include "worker/job.h"
#include "worker/worker.h"

struct im__cluster;

/* What the cluster asks of the broker layer [B]. */
struct im__cluster_hooks {
	void *ctx;
	/* Publishes one FRAME completion to the local subscribers, now in seq
	 * order (does not take d). */
	void (*deliver)(void *ctx, const struct im__done *d);
	/* Has user a device online on this broker? */
	bool (*online)(void *ctx, const char *user);
};

/* [init] Before the worker starts (it loads the groups through the
 * member calls); nothing connects yet. *out is NULL without
 * plugin_opt_nats_servers. cfg and metrics must outlive the cluster.
 * MOSQ_ERR_INVAL (logged) on a bad server list. */
int im_cluster__init(const struct im__config *cfg, struct im__metrics *metrics, const struct im__cluster_hooks *hooks,
		struct im__cluster **out);
/* [init] After the store is open (its id names the subjects): connects in
 * the background; repairs go to w. */
int im_cluster__start(struct im__cluster *c, struct im__worker *w, uint64_t store_id, const uint8_t key[16]);
/* Stops the thread and frees c (NULL: no-op). */
void im_cluster__stop(struct im__cluster *c);
/* [W] The worker's commit hook: the batch's new frames, events and
 * membership changes, under the store's id and frame key (also while the
 * journal is replayed at start, before the broker thread knows them). */
void im_cluster__ship(struct im__cluster *c, uint64_t store_id, const uint8_t key[16], const struct im__done *list);
/* Every function below runs on the broker thread and is a no-op for a
 * NULL c (a broker without a cluster). */
void im_cluster__event(struct im__cluster *c, const char *tl, const void *frame, size_t len);
void im_cluster__user(struct im__cluster *c, const char *user, bool online);
void im_cluster__member(struct im__cluster *c, const char *group, const char *user, bool joined);
/* A FRAME completion, local or remote: delivered in seq order per
 * timeline, gaps repaired. Takes d; false (d untouched) without a cluster. */
bool im_cluster__deliver(struct im__cluster *c, struct im__done *d);
void im_cluster__repaired(struct im__cluster *c, const char *tl, uint64_t reached, bool ok, bool anchor);
void im_cluster__tick(struct im__cluster *c, int64_t now_ms); /* now_ms: im_mono_ms() */
/* A device's sync of tl must queue behind the head read the order filter
 * has out for tl (it leaves what was stored before to that sync). */
bool im_cluster__anchoring(const struct im__cluster *c, const char *tl);
/* Gaps open or checks due: the tick should come soon. */
bool im_cluster__busy(const struct im__cluster *c);

#endif
