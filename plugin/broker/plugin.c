/*
 * Entry points: version, init, cleanup. Init parses the options, opens the
 * store and registers the callbacks; any failure stops the broker at start
 * with a log line, never a half-working plugin.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/config.h"
#include "base/crypt.h"
#include "base/map.h"
#include "base/util.h"
#include "base/wake.h"
#include "broker/auth.h"
#include "broker/conffile.h"
#include "broker/deliver.h"
#include "broker/on_acl.h"
#include "broker/on_control.h"
#include "broker/on_conv.h"
#include "broker/on_group.h"
#include "broker/on_message.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/policy.h"
#include "broker/presence.h"
#include "broker/props.h"
#include "broker/reload.h"
#include "cluster/cluster.h"
#include "store/open.h"
#include "worker/worker.h"

#define IM_EXPORT __attribute__((visibility("default")))

static struct im__plugin *g_plugin; /* only for cleanup's sanity check */

/* The broker's heap. Sync replies are large (up to sync_max_bytes), and
 * the broker copies each into its main heap, and again into the packet it
 * sends. With glibc's defaults a freed block at the top of the heap beyond
 * 128 KiB is given back (brk), and the next reply grows the heap again:
 * each round trip is a TLB flush on every CPU and page faults on the
 * fresh pages. Measured on the broker thread during a 50,000-message
 * catch-up: half its time in brk and page faults, the catch-up 0.19 s
 * instead of 0.09 s. Whether it happens depends on what sits at the top
 * of the heap, so it came and went with unrelated changes. Keeping up to
 * 8 MiB of free heap, and serving blocks up to 1 MiB from the heap,
 * stops it. Process-wide, so an operator's own malloc tuning
 * (GLIBC_TUNABLES, MALLOC_*_ variables) is left alone. */
static void tune_heap(void)
{
#ifdef __GLIBC__
	const char *t = getenv("GLIBC_TUNABLES");

	if((t && strstr(t, "glibc.malloc.")) || getenv("MALLOC_TRIM_THRESHOLD_") || getenv("MALLOC_MMAP_THRESHOLD_")) return;
	mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
#endif
}

static void *pb_alloc(void *ud, size_t size)
{
	(void)ud;
	return mosquitto_malloc(size);
}

static void pb_free(void *ud, void *ptr)
{
	(void)ud;
	mosquitto_free(ptr);
}

IM_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static const struct {
	int event;
	MOSQ_FUNC_generic_callback cb;
	const char *data;
} callbacks[] = {
	{MOSQ_EVT_ACL_CHECK, im_acl__check_cb, NULL},
	{MOSQ_EVT_DISCONNECT, im_acl__disconnect_cb, NULL},
	{MOSQ_EVT_MESSAGE, im_message__cb, NULL},
	{MOSQ_EVT_TICK, im_tick__cb, NULL},
	{MOSQ_EVT_RELOAD, im_reload__cb, NULL},
	{MOSQ_EVT_CONTROL, im_control__sync_cb, "$CONTROL/im/v1/sync"},
	{MOSQ_EVT_CONTROL, im_control__ack_cb, "$CONTROL/im/v1/ack"},
	{MOSQ_EVT_CONTROL, im_group__request_cb, "$CONTROL/im/v1/group"},
	{MOSQ_EVT_CONTROL, im_conv__typing_cb, "$CONTROL/im/v1/typing"},
	{MOSQ_EVT_CONTROL, im_conv__reads_cb, "$CONTROL/im/v1/reads"},
	{MOSQ_EVT_CONTROL, im_conv__list_cb, "$CONTROL/im/v1/conversations"},
};

/* Events of the 2.1 plugin API, registered only there (2.0 refuses
 * unknown events). Numbers from 2.1's include/mosquitto/broker.h. */
#define IM_EVT_SUBSCRIBE 12
#define IM_EVT_CLIENT_OFFLINE 28
static const struct {
	int event;
	MOSQ_FUNC_generic_callback cb;
} callbacks_v21[] = {
	/* A persistent session going offline fires this, not DISCONNECT. */
	{IM_EVT_CLIENT_OFFLINE, im_acl__disconnect_cb},
	/* An accepted subscription: a device comes online (on 2.0 the ACL
	 * check stands in, also for subscriptions it then refuses). */
	{IM_EVT_SUBSCRIBE, im_presence__subscribe_cb},
};

static int count_admins(const struct im__config *cfg)
{
	int n = 0;

	while(cfg->admins && cfg->admins[n]) n++;
	return n;
}

static void log_policy(const struct im__config *cfg)
{
	char store[600];

	im_store__describe(cfg, store, sizeof(store));
	mosquitto_log_printf(MOSQ_LOG_INFO, "im: store %s, journal %s (synchronous %s), topics %s/u/<user> and %s/g/<group>, payload %s, delivery %s, %d admin(s).",
			store, cfg->journal_dir, cfg->synchronous == 2 ? "full" : "normal", cfg->prefix, cfg->prefix,
			cfg->payload_mode == IM_PAYLOAD_RAW ? "raw" : "frame",
			cfg->delivery == IM_DELIVERY_NOTIFY ? "notify" : "full", count_admins(cfg));
	if(cfg->store_key_file){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: message bodies are encrypted at rest (AES-256-GCM, keys from %s).", cfg->store_key_file);
	}else{
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: message bodies are stored as sent (no plugin_opt_store_key_file).");
	}
	if(cfg->jwt_secret){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: token login on: a password shaped like a JWT must be an HS256 token for its username; other passwords go to password_file/other plugins, and are refused if none is configured.");
	}
	/* nonim_acl allow: im_conffile__apply_nonim says whether it applies. */
	if(cfg->nonim != IM_NONIM_ALLOW){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: non-IM topics: deferred to acl_file or another plugin; with neither configured Mosquitto DENIES them (plugin_opt_nonim_acl defer).");
	}
}

/* ---- the layers below, and the hooks through which they call back ---- */

/* [W] The worker's commit hook. p->cluster is set before the worker starts
 * and cleared only after it stopped: read-only while the worker runs. */
static void ship_hook(void *ctx, uint64_t store_id, const uint8_t key[16], const struct im__done *list)
{
	const struct im__plugin *p = ctx;

	im_cluster__ship(p->cluster, store_id, key, list);
}

static enum im_row load_group(void *ctx, const char *group, const char *owner, const char *const *members, size_t n)
{
	im_policy__members(ctx, group, IM_GROUP_CREATE, owner, members, n);
	return IM_ROW_NEXT;
}

static enum im_row load_wrote(void *ctx, const char *writer, const char *reader)
{
	im_policy__wrote(ctx, writer, reader);
	return IM_ROW_NEXT;
}

static void deliver_hook(void *ctx, const struct im__done *d)
{
	im_deliver__frame(ctx, d);
}

static bool online_hook(void *ctx, const char *user)
{
	const struct im__plugin *p = ctx;

	return im_map__get(&p->users_online, user, strlen(user)) != NULL;
}

/* The cluster first (the worker's start loads the groups, and the view
 * tells the cluster of every member), then the worker, which opens the
 * store and the journal, then the cluster's connection, named by the
 * store's id. */
static int start_layers(struct im__plugin *p)
{
	struct im__cluster_hooks ch = {.ctx = p, .deliver = deliver_hook, .online = online_hook};
	struct im__worker_hooks wh = {.ctx = p, .group = load_group, .wrote = load_wrote};
	int rc;

	rc = im_cluster__init(&p->cfg, &p->metrics, &ch, &p->cluster);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	if(p->cluster) wh.committed = ship_hook;
	rc = im_worker__start(&p->cfg, &p->journal, &p->metrics, &wh, &p->worker);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	im_worker__identity(p->worker, &p->store_id, p->frame_key);
	return im_cluster__start(p->cluster, p->worker, p->store_id, p->frame_key);
}

IM_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	struct im__plugin *p;
	size_t i;
	int rc;

	p = mosquitto_calloc(1, sizeof(*p));
	if(p == NULL) return MOSQ_ERR_NOMEM;
	p->pid = identifier;
	p->pb_alloc.alloc = pb_alloc;
	p->pb_alloc.free = pb_free;

	im_props__init();
	tune_heap();
	/* 2.1 exports this, 2.0 does not: asked at run time, so one build
	 * serves both. */
	p->v21 = dlsym(RTLD_DEFAULT, "mosquitto_plugin_set_info") != NULL;
	if(!im_wake__init()){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: no free real-time signal: stored messages wait for the broker's next idle wake-up (up to 100 ms on 2.0).");
	}
	rc = im_config__parse(&p->cfg, options, option_count);
	if(rc == MOSQ_ERR_SUCCESS) rc = im_reload__init(p);
	if(rc == MOSQ_ERR_SUCCESS && p->cfg.store_key_file){
		rc = im_crypt__load(&p->crypt, p->cfg.store_key_file);
	}
	if(rc == MOSQ_ERR_SUCCESS) rc = start_layers(p);
	for(i = 0; rc == MOSQ_ERR_SUCCESS && i < sizeof(callbacks) / sizeof(callbacks[0]); i++){
		rc = mosquitto_callback_register(identifier, callbacks[i].event, callbacks[i].cb, callbacks[i].data, p);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_ERR, "im: cannot register callback for event %d: %s",
					callbacks[i].event, mosquitto_strerror(rc));
		}
	}
	for(i = 0; rc == MOSQ_ERR_SUCCESS && p->v21 && i < sizeof(callbacks_v21) / sizeof(callbacks_v21[0]); i++){
		rc = mosquitto_callback_register(identifier, callbacks_v21[i].event, callbacks_v21[i].cb, NULL, p);
	}
	/* Registering BASIC_AUTH changes how every login fares (all deferring
	 * means denial), so only when token login is configured. */
	if(rc == MOSQ_ERR_SUCCESS && p->cfg.jwt_secret){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, im_auth__basic_cb, NULL, p);
		if(rc == MOSQ_ERR_SUCCESS) p->auth_registered = true;
	}
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_plugin_cleanup(p, options, option_count);
		return rc;
	}
	log_policy(&p->cfg);
	mosquitto_log_printf(MOSQ_LOG_INFO, "im: broker plugin API %s: the original of each IM publish is %s; devices come online %s; store id %016llx.",
			p->v21 ? "2.1" : "2.0", p->v21 ? "given the sink topic (2.1 frees the old one)" : "overwritten in place with the sink topic",
			p->v21 ? "at MOSQ_EVT_SUBSCRIBE and go at DISCONNECT or CLIENT_OFFLINE" : "at the subscription's ACL check and go at DISCONNECT",
			(unsigned long long)p->store_id);
	im_conffile__apply_nonim(p);
	g_plugin = p;
	*userdata = p;
	return MOSQ_ERR_SUCCESS;
}

IM_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct im__plugin *p = userdata;
	size_t i;

	(void)options;
	(void)option_count;
	if(p == NULL) return MOSQ_ERR_SUCCESS;
	for(i = 0; i < sizeof(callbacks) / sizeof(callbacks[0]); i++){
		mosquitto_callback_unregister(p->pid, callbacks[i].event, callbacks[i].cb, callbacks[i].data);
	}
	for(i = 0; p->v21 && i < sizeof(callbacks_v21) / sizeof(callbacks_v21[0]); i++){
		mosquitto_callback_unregister(p->pid, callbacks_v21[i].event, callbacks_v21[i].cb, NULL);
	}
	if(p->auth_registered){
		mosquitto_callback_unregister(p->pid, MOSQ_EVT_BASIC_AUTH, im_auth__basic_cb, NULL);
	}
	if(p->fallback_registered){
		mosquitto_callback_unregister(p->pid, MOSQ_EVT_ACL_CHECK, im_acl__fallback_cb, NULL);
	}
	im_worker__stop(p->worker);
	p->worker = NULL;
	im_cluster__stop(p->cluster); /* after the worker: it ships to the cluster until it stops */
	p->cluster = NULL;
	im_wake__cleanup();
	im_crypt__free(&p->crypt);
	im_map__free(&p->clients, im_free);
	im_map__free(&p->users, im_free);
	im_policy__free(p);
	im_deliver__free(p);
	im_presence__free(p);
	mosquitto_free(p->config_file);
	im_config__free(&p->cfg);
	im_buf__free(&p->scratch);
	if(g_plugin == p) g_plugin = NULL;
	mosquitto_free(p);
	return MOSQ_ERR_SUCCESS;
}
