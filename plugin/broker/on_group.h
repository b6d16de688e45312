/*
 * $CONTROL/im/v1/group (MOSQ_EVT_CONTROL): create, add, remove, leave,
 * list, info.
 */
#ifndef IM_BROKER_ON_GROUP_H
#define IM_BROKER_ON_GROUP_H

int im_group__request_cb(int event, void *event_data, void *userdata);

#endif
