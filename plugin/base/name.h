/*
 * User, group and timeline names, and UTF-8 [any thread].
 */
#ifndef IM_BASE_NAME_H
#define IM_BASE_NAME_H

#include <stdbool.h>
#include <stddef.h>

#include "base/defs.h"

/* True if name (len bytes) is a valid user or group name: UTF-8, 1..64
 * bytes, no '/', '+', '#', '$', NUL or control characters. */
bool im_name__valid(const char *name, size_t len);

/* The name of a membership change ("create", "add", "remove", "leave",
 * "set"): the word in logs, system messages and on the cluster's wire. */
const char *im_name__group_op(enum im_group_op op);
/* The change named by s (len bytes); false if s names none. */
bool im_name__group_op_parse(const char *s, size_t len, enum im_group_op *op);

/* True if buf (len bytes) is valid UTF-8 (no overlong forms or surrogates). */
bool im_name__utf8_valid(const void *buf, size_t len);

#endif
