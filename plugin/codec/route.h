/*
 * Topic and name rules [any thread]: which topics are IM topics, and what
 * a user, group or timeline name may be.
 */
#ifndef IM_CODEC_ROUTE_H
#define IM_CODEC_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/config.h"
#include "base/name.h"

/* A timeline named by a topic or a request. Points into the caller's
 * string: valid as long as that string is. */
struct im__route {
	char kind;           /* 'u' or 'g' */
	const char *name;    /* not NUL-terminated */
	size_t name_len;
};

/* Classifies a topic (or a subscription filter) against the prefix.
 * Returns 1 if it is in the IM namespace ("<prefix>/..." ), 0 if not. */
int im_route__in_namespace(const struct im__config *cfg, const char *topic);

/* Parses "<prefix>/u/<name>" or "<prefix>/g/<name>" into r.
 * Returns MOSQ_ERR_SUCCESS, or MOSQ_ERR_INVAL for any other shape or an
 * invalid name. */
int im_route__parse_topic(const struct im__config *cfg, const char *topic, struct im__route *r);

/* Parses a timeline string "u/<name>" or "g/<name>" (as in requests). */
int im_route__parse_timeline(const char *tl, struct im__route *r);

/* Parses "<prefix>/e/u/<name>" or "<prefix>/e/g/<name>" (a timeline's event
 * topic) into r. MOSQ_ERR_SUCCESS or MOSQ_ERR_INVAL. */
int im_route__parse_event_topic(const struct im__config *cfg, const char *topic, struct im__route *r);

/* True if a length-delimited field of a flat request payload contains a
 * NUL byte (a string protobuf-c would cut short). */
bool im_route__has_nul(const void *payload, size_t len);

/* Writes "u/<name>" into out (cap >= IM_TL_MAX + 1). Returns length, 0 if
 * it does not fit. */
size_t im_route__timeline(const struct im__route *r, char *out, size_t cap);

#endif
