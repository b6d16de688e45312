/*
 * The plugin's state, owned by the broker thread: what every broker
 * callback is handed as userdata.
 */
#ifndef IM_BROKER_PLUGIN_H
#define IM_BROKER_PLUGIN_H

#include <stdbool.h>
#include <stdint.h>
#include "im.pb-c.h"
#include "base/config.h"
#include "base/crypt.h"
#include "base/map.h"
#include "base/stats.h"
#include "base/util.h"
#include "broker/stall.h"
#include "journal/journal.h"

struct im__worker;
struct im__cluster;
struct im__fpset;

struct im__plugin {
	void *pid;                      /* mosquitto_plugin_id_t * */
	struct im__config cfg;          /* [B]; the worker has its own copy */
	struct im__crypt crypt;         /* loaded here, handed to the worker */
	struct im__journal journal;     /* [B] appends */
	struct im__worker *worker;
	uint64_t store_id;              /* set at start, then read-only */
	uint8_t frame_key[16];          /* set at start, then read-only */
	bool v21;                       /* the broker offers the 2.1 plugin API */
	bool ticks;                     /* a tick arrived: completions may wait for ticks */
	struct im__buf scratch;         /* [B] journal records are built here */
	ProtobufCAllocator pb_alloc;    /* protobuf-c through mosquitto_* */
	/* A client whose MOSQ_EVT_DISCONNECT just fired: the broker sends its
	 * will right after, and a will on an IM topic must be refused. Only
	 * meaningful until the next event. */
	const struct mosquitto *disconnecting;
	bool fallback_registered;       /* the non-IM "allow" ACL callback */
	bool auth_registered;           /* MOSQ_EVT_BASIC_AUTH (token login) */
	struct im__map clients;         /* client id -> struct im__client (rate, budgets, owner) */
	struct im__map users;           /* user -> struct im__user (rates) */
	struct im__map groups;          /* [B] group -> struct im__bgroup (membership view) */
	struct im__map wrote;           /* [B] "writer\nreader" -> (presence contacts) */
	struct im__fpset *raw_fps;      /* fingerprints of raw deliveries */
	struct im__map presence_fps;    /* user -> uint64_t * fingerprint of the retained presence */
	struct im__metrics metrics;
	char *config_file;              /* the broker's -c file, absolute; NULL if unknown */
	struct im__map devices;         /* client id -> device (presence.c) */
	struct im__map users_online;    /* user -> its devices */
	int64_t next_metrics_ms;
	int64_t last_backlog_log_ms;
	struct im__cluster *cluster;    /* cluster mode (nats_servers), else NULL */
	/* [B] The store stalled (broker/stall.c): the writer, the readers. */
	struct im__stall stalled, rstalled;
	uint64_t stalls;
};

#endif
