/*
 * Devices and presence.
 */
#ifndef IM_BROKER_PRESENCE_H
#define IM_BROKER_PRESENCE_H

#include <stdbool.h>
#include <stddef.h>

struct mosquitto;
struct im__plugin;

/* client subscribed to an IM topic: it is an online device of its user
 * from now on (may disconnect the user's oldest device). */
void im_presence__seen(struct im__plugin *p, const struct mosquitto *client);
/* 2.1's MOSQ_EVT_SUBSCRIBE: an accepted subscription. */
int im_presence__subscribe_cb(int event, void *event_data, void *userdata);
/* client disconnected. */
void im_presence__gone(struct im__plugin *p, const struct mosquitto *client);
/* May reader see user's presence (user is len bytes, not terminated)? */
bool im_presence__may_read(struct im__plugin *p, const char *reader, const char *user, size_t len);
void im_presence__free(struct im__plugin *p);

#endif
