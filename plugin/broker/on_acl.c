/*
 * MOSQ_EVT_ACL_CHECK: who may publish, subscribe to and read which IM
 * topic. The plugin decides every IM topic and its own $CONTROL topics
 * itself and defers every other topic, so acl_file or dynamic security
 * keep deciding those exactly as before.
 *
 * The plugin is the only voice on IM topics and on its response topics.
 * Clients never write there directly (a publish to an inbox is retargeted
 * after it was journaled; the plugin delivers the frame), and a will or a
 * retained message that slipped past the publish path is refused when it
 * would be read: every delivery on an IM topic must be something the
 * plugin sent (deliver.c, im_deliver__is_ours), and nothing is ever read
 * on $CONTROL/im/v1/... (the plugin's replies go to one client id and are
 * never fanned out, so a read check there is always someone else's).
 *
 * Wildcard subscriptions are allowed to be made; each message they would
 * carry is checked again on READ, which is what keeps "im/#" or "#" from
 * leaking someone else's inbox.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/config.h"
#include "base/defs.h"
#include "base/map.h"
#include "broker/auth.h"
#include "broker/clients.h"
#include "broker/deliver.h"
#include "broker/on_acl.h"
#include "broker/on_control.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/presence.h"
#include "broker/reply.h"
#include "codec/route.h"
#include "worker/job.h"
#include "worker/worker.h"

#define CONTROL_PREFIX_LEN (sizeof(IM_CONTROL_PREFIX) - 1)

static int deny(const struct mosquitto_evt_acl_check *ed, const char *why)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: denied %s on \"%s\" to client \"%s\" (user \"%s\"): %s.",
			ed->access == MOSQ_ACL_WRITE ? "publish" : ed->access == MOSQ_ACL_READ ? "read" : "subscribe",
			ed->topic, mosquitto_client_id(ed->client),
			mosquitto_client_username(ed->client) ? mosquitto_client_username(ed->client) : "", why);
	return MOSQ_ERR_ACL_DENIED;
}

/* Requests: anyone may publish to $CONTROL/im/v1/<op> (no deeper level),
 * and the op's handler authorises and answers the request itself. Refusing
 * a request here would risk the answer: Debian's 2.0.11 closes the
 * connection of a client whose publish was denied when its
 * out_packet_count >= max_queued_messages, and the reply is lost. An
 * unknown op has no MOSQ_EVT_CONTROL handler, so it is answered here.
 *
 * Everything below an op (".../response" above all) is the plugin's to
 * speak: a client may subscribe to its response topics, never publish,
 * retain or leave a will there, and no read check there ever passes. */
static int check_control(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user,
		bool will)
{
	const char *op = ed->topic + CONTROL_PREFIX_LEN;
	const char *slash = strchr(op, '/');

	switch(ed->access){
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			return MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
			/* "$CONTROL/im/v1/<op>/response" or "+/response". */
			if(user && slash && !strcmp(slash, "/response") && strchr(op, '#') == NULL) return MOSQ_ERR_SUCCESS;
			return deny(ed, user ? "only .../<op>/response can be subscribed to" : "no username");
		case MOSQ_ACL_WRITE:
			if(slash || will || ed->retain) return deny(ed, "only the plugin speaks below $CONTROL/im/v1/<op>");
			if(im_control__op_known(op)) return MOSQ_ERR_SUCCESS;
			/* Answered on "<op>/response" (to this client only), or on
			 * "unknown/response" for an op too long to be one; through the
			 * worker, so that like every reply it comes after the frames of
			 * the messages accepted before it. */
			im_control__unknown_op(p, ed->client, strlen(op) <= 31 ? op : "unknown");
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: unknown request \"%s\" from client \"%s\".",
					ed->topic, mosquitto_client_id(ed->client));
			return MOSQ_ERR_SUCCESS;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int check_subscribe(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user)
{
	struct im__route r;

	if(!p->v21) im_presence__seen(p, ed->client);
	/* A wildcard filter cannot name one inbox; READ decides per message. */
	if(strpbrk(ed->topic, "+#")) return MOSQ_ERR_SUCCESS;
	if(im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS) return deny(ed, "not an IM timeline topic");
	return im_policy__may_read(p, &r, user) ? MOSQ_ERR_SUCCESS
		: deny(ed, r.kind == 'u' ? "not your timeline" : "not a member of the group");
}

/* "<prefix>/p/<user>": written by the plugin only, read per the presence
 * option. Returns the name (into topic) or NULL if not a presence topic. */
static const char *presence_user(const struct im__config *cfg, const char *topic)
{
	const char *t = topic + cfg->prefix_len;

	return (t[0] == '/' && t[1] == 'p' && t[2] == '/') ? t + 3 : NULL;
}

static int check_presence(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user,
		const char *target)
{
	size_t len = strlen(target);

	if(ed->access == MOSQ_ACL_WRITE) return deny(ed, "presence is published by the plugin only");
	if(ed->access == MOSQ_ACL_SUBSCRIBE){
		if(!p->v21) im_presence__seen(p, ed->client);
		if(strpbrk(target, "+#")) return MOSQ_ERR_SUCCESS;
	}
	if(p->cfg.presence == IM_PRESENCE_OFF || !im_name__valid(target, len)
			|| !im_presence__may_read(p, user, target, len)){
		return ed->access == MOSQ_ACL_SUBSCRIBE ? deny(ed, "presence not visible to you") : MOSQ_ERR_ACL_DENIED;
	}
	if(ed->access == MOSQ_ACL_READ && !im_deliver__presence_is_ours(p, target, ed->payload, ed->payloadlen)){
		return deny(ed, "not the plugin's presence notice (a will or retained message sent past the plugin?)");
	}
	return MOSQ_ERR_SUCCESS;
}

/* "<prefix>/e/<timeline>": events of a timeline (read marks, typing), sent
 * by the plugin only, readable by whoever may read the timeline. */
static int check_events(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user)
{
	struct im__route r;

	if(ed->access == MOSQ_ACL_WRITE) return deny(ed, "events are published by the plugin only");
	if(ed->access == MOSQ_ACL_SUBSCRIBE){
		if(!p->v21) im_presence__seen(p, ed->client);
		if(strpbrk(ed->topic, "+#")) return MOSQ_ERR_SUCCESS;
	}
	if(im_route__parse_event_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS){
		return ed->access == MOSQ_ACL_SUBSCRIBE ? deny(ed, "not an event topic (<prefix>/e/u/<user> or <prefix>/e/g/<group>)")
			: MOSQ_ERR_ACL_DENIED;
	}
	if(!im_policy__may_read(p, &r, user)){
		return ed->access == MOSQ_ACL_SUBSCRIBE ? deny(ed, r.kind == 'u' ? "not your timeline" : "not a member of the group")
			: MOSQ_ERR_ACL_DENIED;
	}
	if(ed->access == MOSQ_ACL_READ && !im_deliver__is_ours(p, ed->topic, &r, true, ed->payload, ed->payloadlen)){
		return deny(ed, "not sent by the plugin (a will or retained message sent past it?)");
	}
	return MOSQ_ERR_SUCCESS;
}

static int check_write(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user, bool will)
{
	struct im__route r;

	if(will) return deny(ed, "wills bypass sequencing and are refused on IM topics");
	if(ed->retain) return deny(ed, "retained messages are refused on IM topics");
	if(im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS){
		return deny(ed, "not a valid IM topic (<prefix>/u/<user> or <prefix>/g/<group>)");
	}
	if(ed->payloadlen > p->cfg.max_body) return deny(ed, "body larger than plugin_opt_max_body");
	if(r.kind == 'g' && !im_policy__is_member(p, r.name, r.name_len, user)){
		return deny(ed, "not a member of the group");
	}
	return MOSQ_ERR_SUCCESS;
}

/* Remembers which user a client id belongs to (auth.c's guard asks). */
static void note_owner(struct im__plugin *p, const struct mosquitto *client, const char *user)
{
	struct im__client *c;

	if(!p->cfg.client_id_guard) return;
	c = im_clients__get(p, mosquitto_client_id(client));
	if(c && c->owner[0] == '\0') snprintf(c->owner, sizeof(c->owner), "%s", user);
}

int im_acl__check_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct im__plugin *p = userdata;
	bool will = (ed->client == p->disconnecting);
	struct im__route r;
	const char *target, *user, *why = NULL;

	(void)event;
	p->disconnecting = NULL;
	if(!strncmp(ed->topic, IM_CONTROL_PREFIX, CONTROL_PREFIX_LEN)){
		return check_control(p, ed, mosquitto_client_username(ed->client), will);
	}
	if(!strncmp(ed->topic, IM_SINK_TOPIC, strlen(IM_SINK_TOPIC))) return MOSQ_ERR_ACL_DENIED;
	if(!im_route__in_namespace(&p->cfg, ed->topic)) return MOSQ_ERR_PLUGIN_DEFER;

	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if((user = im_policy__user(ed->client, &why)) == NULL) return deny(ed, why);
	if((target = presence_user(&p->cfg, ed->topic)) != NULL) return check_presence(p, ed, user, target);
	if(!strncmp(ed->topic + p->cfg.prefix_len, "/e/", 3)) return check_events(p, ed, user);
	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE:
			note_owner(p, ed->client, user);
			return check_subscribe(p, ed, user);
		case MOSQ_ACL_READ:
			/* Silent: this runs per message per subscriber, and a wildcard
			 * subscriber is denied others' messages as a matter of course. */
			if(im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_ACL_DENIED;
			if(!im_policy__may_read(p, &r, user)) return MOSQ_ERR_ACL_DENIED;
			if(!im_deliver__is_ours(p, ed->topic, &r, false, ed->payload, ed->payloadlen)){
				return deny(ed, "not sent by the plugin (a will or retained message sent past it?)");
			}
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_WRITE:
			note_owner(p, ed->client, user);
			return check_write(p, ed, user, will);
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

/* plugin_opt_nonim_acl allow: registered at init after im_acl__check_cb,
 * and only when nothing else in the configuration decides ACLs (conffile.c),
 * so it only answers what the plugin deferred. */
int im_acl__fallback_cb(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	return MOSQ_ERR_SUCCESS;
}

/* The broker sends a client's will right after this event, with an ACL
 * check on its topic first: remember the client until the next event. A
 * clean session's per-client state goes; a persistent one keeps its owner
 * for the client id guard, and so does a session that a new login with its
 * id takes over (the broker ends that one as clean, whatever it was). */
int im_acl__disconnect_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct im__plugin *p = userdata;
	const char *id = mosquitto_client_id(ed->client);
	struct im__client *c;

	(void)event;
	p->disconnecting = ed->client;
	if(id && (c = im_map__get(&p->clients, id, strlen(id))) != NULL && !im_auth__replaced(ed->client, id)){
		if(mosquitto_client_clean_session(ed->client) || c->owner[0] == '\0'){
			free(im_map__del(&p->clients, id, strlen(id)));
		}else{
			memset(&c->sync_bucket, 0, sizeof(c->sync_bucket));
			c->sync_inflight = 0;
		}
	}
	im_presence__gone(p, ed->client);
	return MOSQ_ERR_SUCCESS;
}
