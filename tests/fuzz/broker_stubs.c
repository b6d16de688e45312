/*
 * The broker side of the plugin API, for fuzz_control: memory, logs,
 * client accessors, callback registration and publishing. The plugin is
 * linked whole (every source of the mosquitto_im target); these stand in
 * for what mosquitto 2.0 exports to it. Publishes are recorded for the
 * harness to check, not delivered.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "broker_stubs.h"

void *mosquitto_malloc(size_t n) { return malloc(n); }
void *mosquitto_calloc(size_t a, size_t b) { return calloc(a, b); }
void *mosquitto_realloc(void *p, size_t n) { return realloc(p, n); }
void mosquitto_free(void *p) { free(p); }
char *mosquitto_strdup(const char *s) { return strdup(s); }

__attribute__((format(printf, 2, 3)))
void mosquitto_log_printf(int level, const char *fmt, ...)
{
	va_list ap;

	(void)level;
	if(!getenv("FUZZ_LOG")) return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

const char *mosquitto_client_id(const struct mosquitto *client) { return client->id; }
const char *mosquitto_client_username(const struct mosquitto *client) { return client->username; }
const char *mosquitto_client_address(const struct mosquitto *client) { (void)client; return "127.0.0.1"; }
int mosquitto_client_protocol_version(const struct mosquitto *client) { return client->protocol_version; }
int mosquitto_client_protocol(const struct mosquitto *client) { (void)client; return 0; /* mp_mqtt */ }
bool mosquitto_client_clean_session(const struct mosquitto *client) { (void)client; return true; }
int mosquitto_client_keepalive(const struct mosquitto *client) { (void)client; return 60; }
int mosquitto_set_username(struct mosquitto *client, const char *username)
{
	(void)client;
	(void)username;
	return MOSQ_ERR_SUCCESS;
}
int mosquitto_kick_client_by_clientid(const char *clientid, bool with_will) { (void)clientid; (void)with_will; return 0; }
int mosquitto_kick_client_by_username(const char *username, bool with_will) { (void)username; (void)with_will; return 0; }

struct stub_cb stub_cbs[STUB_MAX_CBS];
int stub_n_cbs;

int mosquitto_callback_register(mosquitto_plugin_id_t *identifier, int event, MOSQ_FUNC_generic_callback cb,
		const void *event_data, void *userdata)
{
	(void)identifier;
	if(stub_n_cbs == STUB_MAX_CBS) return MOSQ_ERR_NOMEM;
	stub_cbs[stub_n_cbs].event = event;
	stub_cbs[stub_n_cbs].cb = cb;
	stub_cbs[stub_n_cbs].topic = event_data;
	stub_cbs[stub_n_cbs].userdata = userdata;
	stub_n_cbs++;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_callback_unregister(mosquitto_plugin_id_t *identifier, int event, MOSQ_FUNC_generic_callback cb,
		const void *event_data)
{
	int i;

	(void)identifier;
	(void)event_data;
	for(i = 0; i < stub_n_cbs; i++){
		if(stub_cbs[i].event == event && stub_cbs[i].cb == cb){
			memmove(&stub_cbs[i], &stub_cbs[i + 1], (size_t)(stub_n_cbs - i - 1) * sizeof(stub_cbs[0]));
			stub_n_cbs--;
			return MOSQ_ERR_SUCCESS;
		}
	}
	return MOSQ_ERR_NOT_FOUND;
}

struct stub_pub stub_pubs[STUB_MAX_PUBS];
int stub_n_pubs;

void stub_reset_pubs(void)
{
	int i;

	for(i = 0; i < stub_n_pubs; i++){
		free(stub_pubs[i].client_id);
		free(stub_pubs[i].topic);
		free(stub_pubs[i].payload);
	}
	stub_n_pubs = 0;
}

static int record(const char *clientid, const char *topic, int payloadlen, const void *payload,
		int qos, bool retain, mosquitto_property *properties)
{
	struct stub_pub *p;

	if(topic == NULL || payloadlen < 0 || (payloadlen > 0 && payload == NULL) || qos < 0 || qos > 2){
		return MOSQ_ERR_INVAL;
	}
	if(stub_n_pubs == STUB_MAX_PUBS) abort(); /* a reply storm: never expected */
	p = &stub_pubs[stub_n_pubs++];
	p->client_id = clientid ? strdup(clientid) : NULL;
	p->topic = strdup(topic);
	p->payload = malloc(payloadlen ? (size_t)payloadlen : 1);
	if(payloadlen) memcpy(p->payload, payload, (size_t)payloadlen);
	p->len = (size_t)payloadlen;
	p->qos = qos;
	p->retain = retain;
	/* On success the broker owns the properties. */
	mosquitto_property_free_all(&properties);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_broker_publish_copy(const char *clientid, const char *topic, int payloadlen,
		const void *payload, int qos, bool retain, mosquitto_property *properties)
{
	return record(clientid, topic, payloadlen, payload, qos, retain, properties);
}

int mosquitto_broker_publish(const char *clientid, const char *topic, int payloadlen,
		void *payload, int qos, bool retain, mosquitto_property *properties)
{
	int rc = record(clientid, topic, payloadlen, payload, qos, retain, properties);

	if(rc == MOSQ_ERR_SUCCESS) free(payload); /* the broker frees it */
	return rc;
}
