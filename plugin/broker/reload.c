/*
 * SIGHUP: Mosquitto 2.0.11 sends MOSQ_EVT_RELOAD without the new options
 * (event_data.options is NULL), so the plugin re-reads its own
 * plugin_opt_* lines from the broker's configuration file: the file named
 * by -c on the command line, the lines after a `plugin` line naming this
 * very .so. include_dir files are read too, in name order, as the broker
 * does (conffile.c).
 *
 * The new options are parsed into a fresh config first; if anything is
 * wrong, nothing changes and the log says why. Options that shape the
 * store or the topic space need a restart and are kept as they are.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/config.h"
#include "base/crypt.h"
#include "base/util.h"
#include "broker/conffile.h"
#include "broker/plugin.h"
#include "broker/reload.h"
#include "worker/job.h"
#include "worker/worker.h"

#define MAX_OPTS 128

struct optlist {
	struct mosquitto_opt opts[MAX_OPTS];
	int n;
};

/* The configuration file the broker was started with, made absolute now
 * (the broker may chdir later). */
int im_reload__init(struct im__plugin *p)
{
	FILE *f = fopen("/proc/self/cmdline", "rb");
	char buf[8192], *arg, path[PATH_MAX];
	size_t n;

	if(f == NULL) return MOSQ_ERR_SUCCESS;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	for(arg = buf; arg < buf + n; arg += strlen(arg) + 1){
		if((!strcmp(arg, "-c") || !strcmp(arg, "--config-file")) && arg + strlen(arg) + 1 < buf + n){
			arg += strlen(arg) + 1;
			if(realpath(arg, path)){
				p->config_file = mosquitto_strdup(path);
			}
			break;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* Our plugin_opt_* lines, as the broker would pass them at init. */
static void collect(const char *key, const char *value, bool ours, void *ud)
{
	struct optlist *l = ud;

	if(ours && !strncmp(key, "plugin_opt_", 11) && l->n < MAX_OPTS){
		l->opts[l->n].key = mosquitto_strdup(key + 11);
		l->opts[l->n].value = mosquitto_strdup(value);
		l->n++;
	}
}

static void free_list(struct optlist *l)
{
	int i;

	for(i = 0; i < l->n; i++){
		mosquitto_free(l->opts[i].key);
		mosquitto_free(l->opts[i].value);
	}
}

static bool same_str(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

/* Warns about an option that changed but needs a restart. */
static void restart_needed(bool changed, const char *key)
{
	if(changed){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: reload: plugin_opt_%s changed; it takes effect at the next restart.", key);
	}
}

/* The worker gets its own copy of what changed: the run-time options, the
 * admins, and a keyring of its own (OpenSSL contexts stay per thread). */
static void send_to_worker(struct im__plugin *p, const struct im__config *n)
{
	struct im__crypt fresh;
	struct im__job *j;
	char **a;
	size_t count = 0, i;

	memset(&fresh, 0, sizeof(fresh));
	if(p->cfg.store_key_file && n->store_key_file && im_crypt__load(&fresh, n->store_key_file) != MOSQ_ERR_SUCCESS){
		return; /* logged by reload_keys too; keep everything as it is */
	}
	j = im_job__new(IM_JOB_OPTIONS, fresh.n ? sizeof(fresh) : 0, NULL, "reload", NULL, NULL, 0);
	if(j == NULL || (j->u.options = im_calloc(1, sizeof(*j->u.options))) == NULL){
		im_job__free(j);
		im_crypt__free(&fresh);
		return;
	}
	im_config__copy_runtime(j->u.options, n);
	for(a = n->admins; a && *a; a++) count++;
	j->u.options->admins = im_calloc(count + 1, sizeof(char *));
	for(i = 0; j->u.options->admins && i < count; i++) j->u.options->admins[i] = im_strdup(n->admins[i]);
	if(fresh.n) memcpy(j->data, &fresh, sizeof(fresh));
	im_worker__submit(p->worker, j);
}

static void apply(struct im__plugin *p, struct im__config *n)
{
	struct im__config *o = &p->cfg;
	char **admins;

	restart_needed(strcmp(o->db_path, n->db_path) != 0, "db_path");
	restart_needed(strcmp(o->journal_dir, n->journal_dir) != 0, "journal_dir");
	restart_needed(strcmp(o->prefix, n->prefix) != 0, "prefix");
	restart_needed(o->synchronous != n->synchronous, "synchronous");
	restart_needed(o->page_size != n->page_size, "page_size");
	restart_needed(o->busy_timeout_ms != n->busy_timeout_ms, "busy_timeout_ms");
	restart_needed((o->jwt_secret == NULL) != (n->jwt_secret == NULL), "auth_jwt_secret_file (on/off)");
	restart_needed((o->store_key_file == NULL) != (n->store_key_file == NULL), "store_key_file (on/off)");
	restart_needed(o->presence != n->presence, "presence");
	restart_needed(o->checkpoint_inline != n->checkpoint_inline, "checkpoint");
	restart_needed(o->store != n->store, "store");
	restart_needed(!same_str(o->pg_conninfo, n->pg_conninfo), "pg_conninfo");
	restart_needed(!same_str(o->pg_read_conninfo, n->pg_read_conninfo), "pg_read_conninfo");
	restart_needed(o->store_readers != n->store_readers, "store_readers");
	restart_needed(!same_str(o->node_id, n->node_id), "node_id");
	restart_needed(!same_str(o->nats_servers, n->nats_servers), "nats_servers");
	n->busy_timeout_ms = o->busy_timeout_ms;
	send_to_worker(p, n);
	im_config__copy_runtime(o, n);
	admins = o->admins;
	o->admins = n->admins;
	n->admins = admins;
	if(o->jwt_secret && n->jwt_secret){
		char *sec = o->jwt_secret;
		size_t len = o->jwt_secret_len;
		o->jwt_secret = n->jwt_secret;
		o->jwt_secret_len = n->jwt_secret_len;
		n->jwt_secret = sec;
		n->jwt_secret_len = len;
	}
	p->next_metrics_ms = 0;
}

/* Key rotation without a restart: the new key file replaces the keyring
 * only if it loads completely. */
static void reload_keys(struct im__plugin *p, const struct im__config *n)
{
	struct im__crypt fresh;

	if(p->cfg.store_key_file == NULL || n->store_key_file == NULL) return;
	if(im_crypt__load(&fresh, n->store_key_file) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: reload: keeping the previous keys.");
		return;
	}
	im_crypt__free(&p->crypt);
	p->crypt = fresh;
}

int im_reload__cb(int event, void *event_data, void *userdata)
{
	struct im__plugin *p = userdata;
	struct im__config fresh;
	struct optlist *l;

	(void)event;
	(void)event_data;
	l = mosquitto_calloc(1, sizeof(*l));
	if(l == NULL) return MOSQ_ERR_PLUGIN_DEFER;
	if(im_conffile__walk(p->config_file, collect, l) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: reload: cannot read the broker's configuration file; options unchanged.");
	}else{
		if(im_config__parse(&fresh, l->opts, l->n) != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_ERR, "im: reload: the options above are invalid; the running options are kept.");
		}else{
			reload_keys(p, &fresh);
			apply(p, &fresh);
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: reload: %d options read from %s; retention %llds/%lld messages, delivery %s, %s.",
					l->n, p->config_file, (long long)p->cfg.retention_seconds, (long long)p->cfg.retention_messages,
					p->cfg.delivery == IM_DELIVERY_NOTIFY ? "notify" : "full",
					p->cfg.nonim == IM_NONIM_ALLOW ? "non-IM allow" : "non-IM defer");
		}
		im_config__free(&fresh);
	}
	free_list(l);
	mosquitto_free(l);
	/* nonim_acl may have changed, and acl_file may have come or gone. */
	im_conffile__apply_nonim(p);
	/* Other plugins' reload callbacks must run too. */
	return MOSQ_ERR_PLUGIN_DEFER;
}
