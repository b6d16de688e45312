/*
 * What the plugin publishes: frames, events and presence, from the
 * completions the worker and the cluster hand the broker thread.
 */
#ifndef IM_BROKER_DELIVER_H
#define IM_BROKER_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "codec/route.h"
#include "worker/job.h"

struct im__plugin;

/* Runs one completion on the broker thread and frees it. */
void im_deliver__done(struct im__plugin *p, struct im__done *d);
/* Publishes one FRAME completion (does not free it). */
void im_deliver__frame(struct im__plugin *p, const struct im__done *d);
/* Drains every completion (the tick, or inline after a job). */
void im_deliver__drain(struct im__plugin *p);
/* Is this payload on an IM topic something the plugin sent? Frames carry
 * the plugin's tag; raw bodies and presence are matched against
 * fingerprints of what was published. */
bool im_deliver__is_ours(struct im__plugin *p, const char *topic, const struct im__route *r, bool event,
		const void *payload, uint32_t len);
/* Publishes presence retained on <prefix>/p/<user>, remembering it. */
void im_deliver__presence(struct im__plugin *p, const char *user, const char *json, size_t len);
bool im_deliver__presence_is_ours(struct im__plugin *p, const char *user, const void *payload, uint32_t len);
/* Rotates the fingerprints of raw deliveries (tick; now_ms: im_mono_ms()). */
void im_deliver__tick(struct im__plugin *p, int64_t now_ms);
void im_deliver__free(struct im__plugin *p);

#endif
