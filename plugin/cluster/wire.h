/*
 * The cluster's wire format on NATS [any thread]: subjects, and frames,
 * events and membership changes MAC'd with the store's frame key.
 */
#ifndef IM_CLUSTER_WIRE_H
#define IM_CLUSTER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "base/defs.h"
#include "base/map.h"
#include "base/util.h"
#include "worker/job.h"

enum { IM_CWIRE_FRAME = 1, IM_CWIRE_MEMBERS = 2, IM_CWIRE_EVENT = 3 };
#define IM_CWIRE_SUBJECT_MAX (32 + 3 + 3 * IM_NAME_MAX + 1)
/* An event is delivered only if the time it was sent (the sender's clock)
 * is within this of the receiver's clock, either way: the brokers' clocks
 * are assumed NTP-synced to well within it. */
#define IM_CWIRE_FRESH_MS 3000

/* The events a receiver took within the window, by MAC: a repeat is a
 * replay. Two generations of 2 × IM_CWIRE_FRESH_MS each, so that an entry
 * lives as long as a replay of its event could still be fresh. Zeroed
 * before first use; one thread at a time. */
struct im__cwire_seen {
	struct im__map gen[2];          /* MAC (8 bytes) -> (void *)1: current, previous */
	int64_t rotated_ms;
};
void im_cwire__seen_free(struct im__cwire_seen *s);

/* "<root>.<u|g>.<escaped name>" for timeline tl; 0 if it does not fit or
 * tl is not a timeline. */
size_t im_cwire__subject(char *out, size_t cap, const char *root, const char *tl);
/* Encodes into b (grown as needed), MAC'd with key for subject. Returns
 * the length, 0 on failure. An event (d->event) goes as EVENT, stamped
 * with now_ms (the wall clock, im_now_ms()). */
size_t im_cwire__frame(struct im__buf *b, const uint8_t key[16], const char *subject, const struct im__done *d,
		int64_t now_ms);
size_t im_cwire__members(struct im__buf *b, const uint8_t key[16], const char *subject, const char *group,
		enum im_group_op op, const char *owner, const char *const *users, size_t n);
/* A completion (FRAME with its topic under prefix, or MEMBERS) from a
 * message that verifies and is well-formed; NULL otherwise. An event
 * must also be fresh at now_ms (the wall clock) and not in seen, where it
 * is then recorded. */
struct im__done *im_cwire__decode(const uint8_t key[16], const char *subject, const void *data, size_t len,
		const char *prefix, int64_t now_ms, struct im__cwire_seen *seen);

#endif
