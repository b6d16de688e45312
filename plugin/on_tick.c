/*
 * MOSQ_EVT_TICK and MOSQ_EVT_RELOAD: work that must not run per message.
 */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "im.h"

/* The "allow non-IM topics" answer must come after acl_file and any other
 * plugin, which the broker registers after loading us: append it on the
 * first tick, when all of them are in place. */
static void register_fallback(struct im__plugin *p)
{
	if(p->cfg.nonim != IM_NONIM_ALLOW || p->fallback_registered) return;
	if(mosquitto_callback_register(p->pid, MOSQ_EVT_ACL_CHECK, im_acl__fallback_cb, NULL, p) == MOSQ_ERR_SUCCESS){
		p->fallback_registered = true;
	}
}

int im_tick__cb(int event, void *event_data, void *userdata)
{
	struct im__plugin *p = userdata;

	(void)event;
	(void)event_data;
	p->disconnecting = NULL;
	register_fallback(p);
	return MOSQ_ERR_SUCCESS;
}

/* A reload re-registers acl_file's check after ours: move the fallback
 * back to the end on the next tick. */
int im_tick__reload_cb(int event, void *event_data, void *userdata)
{
	struct im__plugin *p = userdata;

	(void)event;
	(void)event_data;
	if(p->fallback_registered){
		mosquitto_callback_unregister(p->pid, MOSQ_EVT_ACL_CHECK, im_acl__fallback_cb, NULL);
		p->fallback_registered = false;
	}
	return MOSQ_ERR_SUCCESS;
}
