/*
 * MOSQ_EVT_ACL_CHECK: who may publish, subscribe to and read which IM
 * topic. The plugin decides every IM topic itself and defers every other
 * topic, so acl_file or dynamic security keep deciding those exactly as
 * before. Wildcard subscriptions are allowed to be made; each message they
 * would carry is checked again on READ, which is what keeps "im/#" or "#"
 * from leaking someone else's inbox.
 */
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "im.h"

#define CONTROL_PREFIX "$CONTROL/im/v1/"
#define CONTROL_PREFIX_LEN (sizeof(CONTROL_PREFIX) - 1)

static bool is_user(const struct im__route *r, const char *user)
{
	return r->kind == 'u' && strlen(user) == r->name_len && !memcmp(r->name, user, r->name_len);
}

bool im_acl__is_admin(const struct im__plugin *p, const char *user)
{
	char *const *a;

	for(a = p->cfg.admins; a && *a; a++){
		if(!strcmp(*a, user)) return true;
	}
	return false;
}

/* Read access to a timeline: your own inbox, or a group you are a member
 * of. Membership comes from the cache, so a removal takes effect on the
 * next message, on existing subscriptions too. */
bool im_acl__may_read(struct im__plugin *p, const struct im__route *r, const char *user)
{
	if(r->kind == 'u') return is_user(r, user);
	return im_store__is_member(&p->store, r->name, r->name_len, user);
}

static int deny(const struct mosquitto_evt_acl_check *ed, const char *why)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: denied %s on \"%s\" to client \"%s\" (user \"%s\"): %s.",
			ed->access == MOSQ_ACL_WRITE ? "publish" : ed->access == MOSQ_ACL_READ ? "read" : "subscribe",
			ed->topic, mosquitto_client_id(ed->client),
			mosquitto_client_username(ed->client) ? mosquitto_client_username(ed->client) : "", why);
	return MOSQ_ERR_ACL_DENIED;
}

/* Requests: anyone may publish to $CONTROL/im/v1/<op>, and the op's
 * handler authorises and answers the request itself. Refusing here would
 * risk the answer: Debian's 2.0.11 closes the connection of a client whose
 * publish was denied when its out_packet_count >= max_queued_messages
 * (always, with max_queued_messages 0), and the reply is lost. An unknown op has no MOSQ_EVT_CONTROL handler, so it is answered
 * here. Subscribing is only allowed to the response topics; we never give
 * fall-through access to our $CONTROL topics. */
static int check_control(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user)
{
	const char *op = ed->topic + CONTROL_PREFIX_LEN;
	const char *slash = strchr(op, '/');

	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(ed->access == MOSQ_ACL_WRITE){
		if(slash == NULL && im_control__op_known(op)) return MOSQ_ERR_SUCCESS;
		/* Never answer on a topic the client made up. */
		im_control__reply_status(p, ed->client, slash ? "unknown" : op, NULL,
				IM__V1__STATUS__NOT_FOUND, "unknown op");
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: unknown request \"%s\" from client \"%s\".",
				ed->topic, mosquitto_client_id(ed->client));
		return MOSQ_ERR_SUCCESS;
	}
	/* SUBSCRIBE / READ: "$CONTROL/im/v1/<op>/response" or "+/response". */
	if(user && slash && !strcmp(slash, "/response") && strchr(op, '#') == NULL) return MOSQ_ERR_SUCCESS;
	return deny(ed, user ? "only .../<op>/response can be subscribed to" : "no username");
}

static int check_subscribe(struct im__plugin *p, const struct mosquitto_evt_acl_check *ed, const char *user)
{
	struct im__route r;

	im_presence__seen(p, ed->client);
	/* A wildcard filter cannot name one inbox; READ decides per message. */
	if(strpbrk(ed->topic, "+#")) return MOSQ_ERR_SUCCESS;
	if(im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS) return deny(ed, "not an IM timeline topic");
	return im_acl__may_read(p, &r, user) ? MOSQ_ERR_SUCCESS : deny(ed, r.kind == 'u' ? "not your timeline" : "not a member of the group");
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
		im_presence__seen(p, ed->client);
		if(strpbrk(target, "+#")) return MOSQ_ERR_SUCCESS;
	}
	if(p->cfg.presence == IM_PRESENCE_OFF || !im_route__name_valid(target, len)
			|| !im_presence__may_read(p, user, target, len)){
		return ed->access == MOSQ_ACL_SUBSCRIBE ? deny(ed, "presence not visible to you") : MOSQ_ERR_ACL_DENIED;
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
	if(r.kind == 'g' && !im_store__is_member(&p->store, r.name, r.name_len, user)){
		return deny(ed, "not a member of the group");
	}
	return MOSQ_ERR_SUCCESS;
}

/* Reads a protobuf varint; NULL if it runs past end. */
static const uint8_t *varint(const uint8_t *b, const uint8_t *end, uint64_t *v)
{
	int shift;

	for(*v = 0, shift = 0; b < end && shift < 64; shift += 7){
		*v |= (uint64_t)(*b & 0x7F) << shift;
		if(!(*b++ & 0x80)) return b;
	}
	return NULL;
}

/* Is this payload a frame the plugin could have sent on r's topic: the
 * magic, a header naming r's timeline, a seq already handed out? Only the
 * two header fields are read, not the whole header. */
static bool frame_is_ours(struct im__plugin *p, const struct im__route *r, const uint8_t *b, uint32_t len)
{
	const uint8_t *h, *end;
	const char *tl = NULL;
	uint64_t key, v, seq = 0, tl_len = 0;
	char name[IM_TL_MAX + 1];
	struct im__tl *t;

	if(len < IM_FRAME_FIXED || b[0] != 'I' || b[1] != 'M' || b[2] != IM_FRAME_VERSION) return false;
	v = ((uint32_t)b[3] << 8) | b[4];
	if(v > len - IM_FRAME_FIXED) return false;
	h = b + IM_FRAME_FIXED;
	end = h + v;
	while(h && h < end){
		if((h = varint(h, end, &key)) == NULL) return false;
		switch(key & 7){
			case 0: h = varint(h, end, &v); if((key >> 3) == 2) seq = v; break;
			case 1: h = (end - h >= 8) ? h + 8 : NULL; break;
			case 5: h = (end - h >= 4) ? h + 4 : NULL; break;
			case 2:
				if((h = varint(h, end, &v)) == NULL || v > (uint64_t)(end - h)) return false;
				if((key >> 3) == 1){
					tl = (const char *)h;
					tl_len = v;
				}
				h += v;
				break;
			default: return false;
		}
	}
	if(h == NULL || tl == NULL || seq == 0) return false;
	im_route__timeline(r, name, sizeof(name));
	if(tl_len != strlen(name) || memcmp(tl, name, tl_len)) return false;
	t = im_store__timeline(&p->store, name, tl_len, false);
	return t && seq <= t->head;
}

/* Everything the plugin delivers on an IM topic is a frame (in frame
 * mode) of that topic's timeline with a seq already handed out. A will
 * sent at a session takeover, after a Will Delay Interval or at shutdown
 * reaches subscribers without passing MOSQ_EVT_MESSAGE or our will check
 * (Mosquitto gives no disconnect event first): this keeps raw bytes, and
 * frames a client made up with the next seq, out of an inbox.
 * The verdict is kept for the payload it was made for: the broker checks
 * one stored message for each of its subscribers in a row (a group's
 * fan-out), so the header is read once per message, not per member. */
static bool is_frame(struct im__plugin *p, const struct im__route *r, const struct mosquitto_evt_acl_check *ed)
{
	if(p->cfg.payload_mode != IM_PAYLOAD_FRAME) return true;
	if(ed->payload != p->read_ptr || ed->payloadlen != p->read_len || ed->topic != p->read_topic){
		p->read_ptr = ed->payload;
		p->read_len = ed->payloadlen;
		p->read_topic = ed->topic;
		p->read_ok = frame_is_ours(p, r, ed->payload, ed->payloadlen);
	}
	return p->read_ok;
}

int im_acl__check_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct im__plugin *p = userdata;
	const char *user = mosquitto_client_username(ed->client);
	bool will = (ed->client == p->disconnecting);
	struct im__route r;
	const char *target;

	(void)event;
	p->disconnecting = NULL;
	if(!strncmp(ed->topic, CONTROL_PREFIX, CONTROL_PREFIX_LEN)) return check_control(p, ed, user);
	if(!strncmp(ed->topic, IM_SINK_TOPIC, strlen(IM_SINK_TOPIC))) return MOSQ_ERR_ACL_DENIED;
	if(!im_route__in_namespace(&p->cfg, ed->topic)) return MOSQ_ERR_PLUGIN_DEFER;

	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(user == NULL) return deny(ed, "IM topics need a username");
	if(!im_route__name_valid(user, strlen(user))) return deny(ed, "the username is not a valid IM name");
	if((target = presence_user(&p->cfg, ed->topic)) != NULL) return check_presence(p, ed, user, target);
	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE:
			return check_subscribe(p, ed, user);
		case MOSQ_ACL_READ:
			/* Silent: this runs per message per subscriber, and a wildcard
			 * subscriber is denied others' messages as a matter of course. */
			if(im_route__parse_topic(&p->cfg, ed->topic, &r) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_ACL_DENIED;
			if(!is_frame(p, &r, ed)) return deny(ed, "not a frame of this plugin (a will sent past the plugin?)");
			return im_acl__may_read(p, &r, user) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_WRITE:
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
 * check on its topic first: remember the client until the next event.
 * Its rate-limit bucket goes: a reconnect starts with a full one. */
int im_acl__disconnect_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct im__plugin *p = userdata;
	const char *id = mosquitto_client_id(ed->client);

	(void)event;
	p->disconnecting = ed->client;
	if(id) mosquitto_free(im_map__del(&p->rate, id, strlen(id)));
	im_presence__gone(p, ed->client);
	return MOSQ_ERR_SUCCESS;
}
