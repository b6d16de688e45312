/*
 * Token login (MOSQ_EVT_BASIC_AUTH) and the client id guard.
 */
#ifndef IM_BROKER_AUTH_H
#define IM_BROKER_AUTH_H

#include <time.h>
#include "base/config.h"

/* NULL if token is a valid HS256 JWT for username at now, else the reason. */
const char *im_auth__check_jwt(const struct im__config *cfg, const char *token, const char *username, time_t now);
int im_auth__basic_cb(int event, void *event_data, void *userdata);

#endif
