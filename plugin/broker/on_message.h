/*
 * The publish path (MOSQ_EVT_MESSAGE): checks, the journal append (the
 * acknowledgement point) and the hand-off to the worker.
 */
#ifndef IM_BROKER_ON_MESSAGE_H
#define IM_BROKER_ON_MESSAGE_H

#include "codec/record.h"

struct im__plugin;

/* Journals a record the plugin itself writes (a system notice) and queues
 * it for the worker; rec's body may be replaced by its sealed form.
 * MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN (logged): the journal refused it or
 * the backlog is full; nothing was queued. */
int im_message__submit(struct im__plugin *p, struct im__rec *rec);

int im_message__cb(int event, void *event_data, void *userdata);

#endif
