/*
 * Token login (MOSQ_EVT_BASIC_AUTH) and the client id guard.
 */
#ifndef IM_BROKER_AUTH_H
#define IM_BROKER_AUTH_H

#include <stdbool.h>
#include <time.h>
#include "base/config.h"

struct mosquitto;

/* NULL if token is a valid HS256 JWT for username at now, else the reason. */
const char *im_auth__check_jwt(const struct im__config *cfg, const char *token, const char *username, time_t now);
int im_auth__basic_cb(int event, void *event_data, void *userdata);
/* client_id_guard, at a DISCONNECT: is client (with this id) the session
 * that the last login to pass the guard takes over? Mosquitto ends that
 * one right after the login, as a clean session; the id's owner must stay.
 * True once per such login. */
bool im_auth__replaced(const struct mosquitto *client, const char *id);

#endif
