/*
 * MOSQ_EVT_TICK: completions, metrics, the cluster's checks; and the
 * inline mode for a broker that sends no ticks.
 */
#ifndef IM_BROKER_ON_TICK_H
#define IM_BROKER_ON_TICK_H

struct im__plugin;

int im_tick__cb(int event, void *event_data, void *userdata);
/* After a job was queued from a callback: in the inline mode (a broker
 * that sends no ticks) wait for it and deliver its completions now. */
void im_tick__settle(struct im__plugin *p);

#endif
