/*
 * $CONTROL/im/v1/sync and /ack (MOSQ_EVT_CONTROL).
 */
#ifndef IM_BROKER_ON_CONTROL_H
#define IM_BROKER_ON_CONTROL_H

#include <stdbool.h>

int im_control__sync_cb(int event, void *event_data, void *userdata);
int im_control__ack_cb(int event, void *event_data, void *userdata);
/* The ops with a MOSQ_EVT_CONTROL handler; anything else under
 * $CONTROL/im/v1/ is answered "unknown op" from the ACL check. */
bool im_control__op_known(const char *op);
/* Answers a request of an unknown op (NOT_FOUND) through the worker, in
 * order with the frames before it, bounded like every request. */
struct im__plugin;
struct mosquitto;
void im_control__unknown_op(struct im__plugin *p, struct mosquitto *client, const char *op);

#endif
