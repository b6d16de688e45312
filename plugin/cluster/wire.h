/*
 * The cluster's wire format on NATS [any thread]: subjects, and frames and
 * membership changes MAC'd with the store's frame key.
 */
#ifndef IM_CLUSTER_WIRE_H
#define IM_CLUSTER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "base/defs.h"
#include "base/util.h"
#include "worker/job.h"

enum { IM_CWIRE_FRAME = 1, IM_CWIRE_MEMBERS = 2 };
#define IM_CWIRE_SUBJECT_MAX (32 + 3 + 3 * IM_NAME_MAX + 1)

/* "<root>.<u|g>.<escaped name>" for timeline tl; 0 if it does not fit or
 * tl is not a timeline. */
size_t im_cwire__subject(char *out, size_t cap, const char *root, const char *tl);
/* Encodes into b (grown as needed), MAC'd with key for subject. Returns
 * the length, 0 on failure. */
size_t im_cwire__frame(struct im__buf *b, const uint8_t key[16], const char *subject, const struct im__done *d);
size_t im_cwire__members(struct im__buf *b, const uint8_t key[16], const char *subject, const char *group,
		enum im_group_op op, const char *owner, const char *const *users, size_t n);
/* A completion (FRAME with its topic under prefix, or MEMBERS) from a
 * message that verifies and is well-formed; NULL otherwise. */
struct im__done *im_cwire__decode(const uint8_t key[16], const char *subject, const void *data, size_t len,
		const char *prefix);

#endif
