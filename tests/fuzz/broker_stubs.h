/* See broker_stubs.c. */
#ifndef IM_FUZZ_BROKER_STUBS_H
#define IM_FUZZ_BROKER_STUBS_H
#include <stdbool.h>
#include <stddef.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* Opaque to the plugin; the harness fills it. */
struct mosquitto {
	const char *id;
	const char *username;
	int protocol_version;
};

#define STUB_MAX_CBS 32
struct stub_cb {
	int event;
	MOSQ_FUNC_generic_callback cb;
	const char *topic;      /* MOSQ_EVT_CONTROL: the topic it serves */
	void *userdata;
};
extern struct stub_cb stub_cbs[STUB_MAX_CBS];
extern int stub_n_cbs;

#define STUB_MAX_PUBS 16
struct stub_pub {
	char *client_id;        /* NULL: to every subscriber */
	char *topic;
	unsigned char *payload;
	size_t len;
	int qos;
	bool retain;
};
extern struct stub_pub stub_pubs[STUB_MAX_PUBS];
extern int stub_n_pubs;
void stub_reset_pubs(void);

#endif
