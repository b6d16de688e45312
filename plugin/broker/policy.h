/*
 * Who may do what: the broker thread's view of membership and contacts.
 */
#ifndef IM_BROKER_POLICY_H
#define IM_BROKER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include "base/config.h"
#include "codec/route.h"

struct mosquitto;
struct im__plugin;

/* The username of client if it may use IM topics (set, a valid name),
 * else NULL with *why set. The one place names are checked for every path. */
const char *im_policy__user(const struct mosquitto *client, const char **why);
bool im_policy__is_admin(const struct im__config *cfg, const char *user);
/* May user read (subscribe, sync, ack) timeline r? Own inbox, or a group
 * the user is a member of (the broker thread's membership view). */
bool im_policy__may_read(struct im__plugin *p, const struct im__route *r, const char *user);
bool im_policy__is_member(struct im__plugin *p, const char *group, size_t glen, const char *user);
/* Applies a membership change to the view (from a completion, or loaded
 * at start). */
void im_policy__members(struct im__plugin *p, const char *group, enum im_group_op op, const char *owner,
		const char *const *users, size_t n);
/* presence contacts: writer wrote a direct message to reader. */
void im_policy__wrote(struct im__plugin *p, const char *writer, const char *reader);
bool im_policy__has_written(struct im__plugin *p, const char *writer, size_t wlen, const char *reader);
void im_policy__free(struct im__plugin *p);

#endif
