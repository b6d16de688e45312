/*
 * MOSQ_EVT_RELOAD: the options that may change while the broker runs.
 */
#ifndef IM_BROKER_RELOAD_H
#define IM_BROKER_RELOAD_H

struct im__plugin;

int im_reload__cb(int event, void *event_data, void *userdata);
/* Remembers the broker's configuration file for reloads. */
int im_reload__init(struct im__plugin *p);

#endif
