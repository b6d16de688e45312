/*
 * mosquitto-im: the limits and constants every layer shares.
 *
 * Two threads run plugin code (docs/HACKING.md has the whole map):
 *
 *   broker thread [B]  every broker callback: checks, the journal append
 *                      (the acknowledgement point), and the completions
 *                      that publish frames and replies. It alone calls the
 *                      broker's API.
 *   store worker  [W]  worker/ and everything in store/: the store, in
 *                      batches; it never calls the broker's API (not even
 *                      to log or allocate: see im_log and "Memory").
 *
 * Memory: the plugin allocates with libc (malloc/free), because most of
 * what it allocates crosses to the worker, which must not call
 * mosquitto_malloc (the broker's allocator is not thread-safe). Nothing
 * the plugin hands the broker is the broker's to free: payloads go through
 * mosquitto_broker_publish_copy, properties are built by the broker's own
 * mosquitto_property_add_*.
 *
 * Cross-file functions are named im_<module>__<verb>_<noun>; broker
 * callbacks end in _cb. Ownership is stated at each declaration. Functions
 * not marked run on the broker thread.
 */
#ifndef IM_BASE_DEFS_H
#define IM_BASE_DEFS_H

#include "base/limits.h"

/* Where a publish that must reach no one is retargeted (duplicates, and
 * every original publish once the plugin delivered its frame itself).
 * Short enough to be written over the shortest possible IM topic
 * ("x/u/y"); '$' so that '#' never matches it; the ACL refuses to let
 * anyone subscribe to or read it. */
#define IM_SINK_TOPIC "$IMD"
#define IM_CONTROL_PREFIX "$CONTROL/im/v1/"

/* A membership change, as the store applies it and as it travels to the
 * broker thread's view and to other brokers. SET (the whole member list,
 * read back from the store) is never asked of the store. */
enum im_group_op { IM_GROUP_CREATE, IM_GROUP_ADD, IM_GROUP_REMOVE, IM_GROUP_LEAVE, IM_GROUP_SET };

/* Row callbacks (store ranges, group lists) answer one of these: never a
 * value that could be mistaken for an error code, or an error for "stop". */
enum im_row { IM_ROW_NEXT = 0, IM_ROW_STOP = 1, IM_ROW_ERROR = 2 };

#endif
