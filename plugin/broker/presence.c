/*
 * Devices and presence.
 *
 * Mosquitto 2.0.11 tells plugins about a disconnect but not about a
 * connect. So a device (an MQTT client id of a user) counts as online
 * from its first subscription to an IM topic until MOSQ_EVT_DISCONNECT,
 * which also fires for a dropped TCP connection after its keepalive.
 * Clients that only publish or make requests (a sensor, `imchat send`,
 * mosquitto_rr) receive nothing and are not devices: they neither count
 * against the limit nor make a user look online. docs/PROTOCOL.md states
 * this definition.
 *
 * - max_devices_per_user N: a device beyond N disconnects the user's
 *   oldest device (mosquitto_kick_client_by_clientid) and leaves a notice
 *   in the user's inbox.
 * - presence: the plugin publishes "<prefix>/p/<user>" retained,
 *   {"state":"online"|"offline","devices":n,"ts_ms":...}, when the first
 *   device comes and the last one goes; who may read it is the presence
 *   option (contacts: users the user wrote a direct message to; being
 *   written to, or put in a group, gives no one a view of you).
 *
 * Costs nothing when both are off; otherwise one hash lookup per IM
 * subscription.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/config.h"
#include "base/defs.h"
#include "base/map.h"
#include "base/util.h"
#include "broker/deliver.h"
#include "broker/on_message.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/presence.h"
#include "cluster/cluster.h"
#include "codec/record.h"
#include "codec/route.h"

struct device {
	const struct mosquitto *client;
	char *client_id;
	char *user;
	int64_t since_ms;
	struct device *next;        /* the user's devices, oldest first */
};

struct user_devices {
	struct device *head;
	int count;
};

static bool enabled(const struct im__plugin *p)
{
	/* A cluster broker needs to know who is online here: that decides
	 * which timelines it hears about (cluster.c). */
	return p->cfg.max_devices > 0 || p->cfg.presence != IM_PRESENCE_OFF || p->cluster;
}

static void publish_presence(struct im__plugin *p, const char *user, int devices)
{
	char body[128];
	int n;

	if(p->cfg.presence == IM_PRESENCE_OFF) return;
	n = snprintf(body, sizeof(body), "{\"state\":\"%s\",\"devices\":%d,\"ts_ms\":%" PRId64 "}",
			devices ? "online" : "offline", devices, im_now_ms());
	im_deliver__presence(p, user, body, (size_t)n);
}

/* A system message in the user's inbox: the device that was let go. It
 * goes through the journal like any message; client ids are escaped (they
 * may hold quotes). */
static void notice_kicked(struct im__plugin *p, const char *user, const char *old_id, const char *new_id)
{
	char tl[IM_TL_MAX + 1], body[1024];
	struct im__rec rec;
	size_t len;

	snprintf(tl, sizeof(tl), "u/%s", user);
	len = (size_t)snprintf(body, sizeof(body), "{\"event\":\"device_limit\",\"disconnected\":\"");
	if(!im_json__str(body, sizeof(body), &len, old_id) || len + 8 >= sizeof(body)) return;
	len += (size_t)snprintf(body + len, sizeof(body) - len, "\",\"by\":\"");
	if(!im_json__str(body, sizeof(body), &len, new_id) || len + 32 >= sizeof(body)) return;
	len += (size_t)snprintf(body + len, sizeof(body) - len, "\",\"max_devices\":%u}", p->cfg.max_devices);
	memset(&rec, 0, sizeof(rec));
	rec.kind = IM_REC_SYSTEM;
	rec.ts_ms = im_now_ms();
	rec.sender = user;
	rec.to = tl;
	rec.own = "";
	rec.cmid = "";
	rec.ctype = "application/json";
	rec.body = body;
	rec.body_len = (uint32_t)len;
	if(im_message__submit(p, &rec) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: the device-limit notice for \"%s\" could not be journaled.", user);
	}
}

static void device_free(struct device *d)
{
	if(d == NULL) return;
	im_free(d->client_id);
	im_free(d->user);
	im_free(d);
}

/* Unlinks d from its user's list; returns the user's remaining count. */
static int unlink_device(struct im__plugin *p, struct device *d)
{
	struct user_devices *u = im_map__get(&p->users_online, d->user, strlen(d->user));
	struct device **pp;

	if(u == NULL) return 0;
	for(pp = &u->head; *pp; pp = &(*pp)->next){
		if(*pp == d){
			*pp = d->next;
			u->count--;
			break;
		}
	}
	return u->count;
}

static void kick_oldest(struct im__plugin *p, struct user_devices *u, const char *user, const char *new_id)
{
	struct device *old = u->head;
	char *old_id;

	/* Out of our tables first: the kick fires MOSQ_EVT_DISCONNECT for it
	 * right away, which must find nothing to do. */
	u->head = old->next;
	u->count--;
	im_map__del(&p->devices, old->client_id, strlen(old->client_id));
	old_id = im_strdup(old->client_id);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: user \"%s\" has more than %u devices: disconnecting the oldest, \"%s\", for \"%s\".",
			user, p->cfg.max_devices, old->client_id, new_id);
	device_free(old);
	if(old_id){
		mosquitto_kick_client_by_clientid(old_id, false);
		notice_kicked(p, user, old_id, new_id);
		im_free(old_id);
	}
}

void im_presence__seen(struct im__plugin *p, const struct mosquitto *client)
{
	const char *id, *user;
	struct device *d;
	struct user_devices *u;

	if(!enabled(p)) return;
	id = mosquitto_client_id(client);
	user = mosquitto_client_username(client);
	if(id == NULL || user == NULL) return;
	d = im_map__get(&p->devices, id, strlen(id));
	if(d){
		d->client = client; /* the same device, maybe a newer connection */
		return;
	}
	u = im_map__get(&p->users_online, user, strlen(user));
	if(u == NULL){
		u = im_calloc(1, sizeof(*u));
		if(u == NULL || im_map__put(&p->users_online, user, strlen(user), u) != MOSQ_ERR_SUCCESS){
			im_free(u);
			return;
		}
	}
	d = im_calloc(1, sizeof(*d));
	if(d == NULL) return;
	d->client = client;
	d->client_id = im_strdup(id);
	d->user = im_strdup(user);
	d->since_ms = im_now_ms();
	if(d->client_id == NULL || d->user == NULL || im_map__put(&p->devices, id, strlen(id), d) != MOSQ_ERR_SUCCESS){
		device_free(d);
		return;
	}
	/* Append: the list is oldest first. */
	{
		struct device **pp = &u->head;
		while(*pp) pp = &(*pp)->next;
		*pp = d;
	}
	u->count++;
	if(p->cfg.max_devices && u->count > (int)p->cfg.max_devices) kick_oldest(p, u, user, id);
	if(u->count == 1){
		im_cluster__user(p->cluster, user, true);
		publish_presence(p, user, 1);
	}
}

void im_presence__gone(struct im__plugin *p, const struct mosquitto *client)
{
	const char *id = mosquitto_client_id(client);
	struct device *d;
	char user[IM_NAME_MAX + 1];

	if(!enabled(p) || id == NULL) return;
	d = im_map__get(&p->devices, id, strlen(id));
	if(d == NULL || d->client != client) return; /* unknown, or replaced by a newer connection */
	im_map__del(&p->devices, id, strlen(id));
	snprintf(user, sizeof(user), "%s", d->user);
	if(unlink_device(p, d) == 0){
		im_free(im_map__del(&p->users_online, user, strlen(user)));
		im_cluster__user(p->cluster, user, false);
		publish_presence(p, user, 0);
	}
	device_free(d);
}

/* 2.1's MOSQ_EVT_SUBSCRIBE data (include/mosquitto/broker.h of 2.1): the
 * plugin is built against 2.0's headers, which do not have it. */
struct evt_subscribe_v21 {
	void *future;
	struct mosquitto *client;
	char *clientid;
	char *topic_filter;
};

int im_presence__subscribe_cb(int event, void *event_data, void *userdata)
{
	struct evt_subscribe_v21 *ed = event_data;
	struct im__plugin *p = userdata;

	(void)event;
	p->disconnecting = NULL;
	if(ed->topic_filter && im_route__in_namespace(&p->cfg, ed->topic_filter)) im_presence__seen(p, ed->client);
	return MOSQ_ERR_SUCCESS;
}

bool im_presence__may_read(struct im__plugin *p, const char *reader, const char *user, size_t len)
{
	if(strlen(reader) == len && !memcmp(reader, user, len)) return true;
	switch(p->cfg.presence){
		case IM_PRESENCE_ALL:
			return true;
		case IM_PRESENCE_CONTACTS:
			/* reader sees user if user wrote to reader. */
			return im_policy__has_written(p, user, len, reader);
		default:
			return false;
	}
}

static void free_user(void *v)
{
	im_free(v);
}

static void free_device(void *v)
{
	device_free(v);
}

void im_presence__free(struct im__plugin *p)
{
	im_map__free(&p->devices, free_device);
	im_map__free(&p->users_online, free_user);
}
