/*
 * Replies to requests: to the requesting client only, on the request's MQTT
 * v5 Response Topic with its Correlation Data when it gave one, else on
 * $CONTROL/im/v1/<op>/response. Replies the broker thread can give at once
 * (a malformed request, a refusal) go out here; the rest are built by the
 * worker from the route im_reply__job copies into the job.
 *
 * A reply is a plugin publish to one client id (mosquitto_broker_publish
 * with a client id), so it reaches the client whether or not it
 * subscribed, and no other client: nobody can subscribe their way into
 * another user's replies.
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mqtt_protocol.h>

#include "base/defs.h"
#include "base/util.h"
#include "broker/clients.h"
#include "broker/plugin.h"
#include "broker/props.h"
#include "broker/reply.h"
#include "worker/job.h"

/* A Response Topic is used as given unless it could not be a topic name. */
static char *response_topic(const mosquitto_property *props)
{
	char *t = im_props__string(props, MQTT_PROP_RESPONSE_TOPIC);

	if(t && (t[0] == '\0' || strpbrk(t, "+#"))){
		im_props__free(t);
		return NULL;
	}
	return t;
}

void im_reply__send(struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const void *payload, size_t len)
{
	mosquitto_property *props = NULL;
	char *resp_topic, topic[sizeof(IM_CONTROL_PREFIX) + 64];
	uint16_t corr_len = 0;
	void *corr;

	if(!im_clients__may_send(p, mosquitto_client_id(client), len)) return;
	resp_topic = response_topic(req_props);
	corr = im_props__binary(req_props, MQTT_PROP_CORRELATION_DATA, &corr_len);
	snprintf(topic, sizeof(topic), IM_CONTROL_PREFIX "%s/response", op);
	if(corr) mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, corr_len);
	if(mosquitto_broker_publish_copy(mosquitto_client_id(client), resp_topic ? resp_topic : topic, (int)len,
				(void *)payload, p->cfg.delivery_qos, false, props) != MOSQ_ERR_SUCCESS){
		mosquitto_property_free_all(&props);
	}
	im_props__free(resp_topic);
	im_props__free(corr);
}

void im_reply__msg(struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const ProtobufCMessage *msg)
{
	uint8_t small[512], *buf = small;
	size_t n = protobuf_c_message_get_packed_size(msg);

	if(n > sizeof(small) && (buf = im_malloc(n)) == NULL) return;
	protobuf_c_message_pack(msg, buf);
	im_reply__send(p, client, op, req_props, buf, n);
	if(buf != small) im_free(buf);
}

void im_reply__status(struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, Im__V1__Status status, const char *reason)
{
	Im__V1__Response r = IM__V1__RESPONSE__INIT;

	r.has_status = 1;
	r.status = status;
	r.reason = (char *)reason;
	im_reply__msg(p, client, op, req_props, &r.base);
}

struct im__job *im_reply__job(struct mosquitto *client, enum im_job_kind kind, size_t data_len,
		const char *op, const mosquitto_property *req_props)
{
	char *resp_topic = response_topic(req_props);
	uint16_t corr_len = 0;
	void *corr = im_props__binary(req_props, MQTT_PROP_CORRELATION_DATA, &corr_len);
	struct im__job *j = im_job__new(kind, data_len, mosquitto_client_id(client), op, resp_topic, corr, corr_len);

	im_props__free(resp_topic);
	im_props__free(corr);
	return j;
}
