/*
 * Replies to requests: on the request's Response Topic with its
 * Correlation Data, or on $CONTROL/im/v1/<op>/response.
 */
#ifndef IM_BROKER_REPLY_H
#define IM_BROKER_REPLY_H

#include <stddef.h>
#include <stdint.h>
#include <mosquitto.h>
#include "im.pb-c.h"
#include "worker/job.h"

struct im__plugin;

/* Sends payload to the requesting client (as in struct im__reply_to). The
 * request's properties give Response Topic and Correlation Data. payload is
 * copied. Its bytes spend the client's reply budget; a client far behind
 * reading its replies gets none (clients.c). */
void im_reply__send(struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const void *payload, size_t len);
void im_reply__msg(struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const ProtobufCMessage *msg);
/* Replies with a bare im.v1.Response {status, reason}. */
void im_reply__status(struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, Im__V1__Status status, const char *reason);
/* Reads the reply route of a request (Response Topic if usable). The
 * strings are copied into the job by im_job__new. */
struct im__job *im_reply__job(struct mosquitto *client, enum im_job_kind kind, size_t data_len,
		const char *op, const mosquitto_property *req_props);

#endif
