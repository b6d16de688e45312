/*
 * $CONTROL/im/v1/typing, /reads and /conversations (MOSQ_EVT_CONTROL).
 */
#ifndef IM_BROKER_ON_CONV_H
#define IM_BROKER_ON_CONV_H

int im_conv__typing_cb(int event, void *event_data, void *userdata);
int im_conv__reads_cb(int event, void *event_data, void *userdata);
int im_conv__list_cb(int event, void *event_data, void *userdata);

#endif
