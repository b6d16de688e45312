/*
 * A store that stalls says so [B]. The worker has one transaction open at
 * a time; when it takes longer than store_timeout (a commit waiting for a
 * synchronous standby that is gone, a lock, a store that keeps failing),
 * every request behind it would wait with it, silent. The broker thread
 * watches how long the worker has been on its batch and then answers the
 * queued requests itself.
 */
#ifndef IM_BROKER_STALL_H
#define IM_BROKER_STALL_H

#include <stdint.h>

struct im__plugin;

/* One watched thread (the writer) or group of threads (the readers). */
struct im__stall {
	int64_t since_us;       /* busy_since of the batch that passed store_timeout, 0 when none */
	const char *doing;      /* where it was then */
	uint64_t answers;       /* requests answered "store stalled" since */
};

/* From the tick: notices a stall of the writer, or of every reader (a
 * WARNING), answers the requests queued for them meanwhile with INTERNAL
 * "store stalled", notices the end (a NOTICE). */
void im_stall__tick(struct im__plugin *p, int64_t now_us);
/* Seconds the store has been stalled now, the longer of the writer's and
 * the readers' (0: neither is). */
uint64_t im_stall__seconds(const struct im__plugin *p, int64_t now_us);

#endif
