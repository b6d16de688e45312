/*
 * The broker's configuration file, read the way Mosquitto 2.0 reads it:
 * the file named by -c, then each include_dir's *.conf files in name
 * order. Used for two things the broker does not tell a plugin:
 *
 * - reload (reload.c): 2.0.11 sends MOSQ_EVT_RELOAD without the new
 *   options, so the plugin re-reads its own plugin_opt_* lines;
 * - plugin_opt_nonim_acl allow: whether anything else decides ACLs.
 *
 * The "allow" fallback is an ACL callback that answers SUCCESS for
 * whatever every other check deferred. Mosquitto asks v5 ACL callbacks in
 * the order they were registered, then v2-v4 auth plugins, and treats
 * "all deferred" as a denial. So the fallback would override any other
 * source's "no": dynamic security expresses its default deny and unknown
 * clients as a defer, an auth_plugin (v2-v4) is never asked once a v5
 * callback answered, and acl_file's check is registered after plugins
 * load. Rather than guess an order, the fallback is registered only when
 * nothing else in the configuration can decide an ACL: no acl_file, no
 * auth_plugin, no plugin but this one. Then it is registered at init,
 * which also works under per_listener_settings true (2.0.11 sends plugins
 * no tick there).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/config.h"
#include "broker/conffile.h"
#include "broker/on_acl.h"
#include "broker/plugin.h"

#define MAX_DEPTH 4

struct walk {
	im_conffile__line_cb line;
	void *ud;
	bool ours;              /* inside the block of our plugin line */
	char self[PATH_MAX];    /* this .so, resolved */
};

static char *trim(char *s)
{
	char *e;

	while(*s == ' ' || *s == '\t') s++;
	e = s + strlen(s);
	while(e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
	return s;
}

static int read_file(struct walk *w, const char *path, int depth);

static void read_dir(struct walk *w, const char *dir, int depth)
{
	struct dirent **names;
	char path[PATH_MAX];
	int n, i;

	n = scandir(dir, &names, NULL, alphasort);
	for(i = 0; i < n; i++){
		size_t len = strlen(names[i]->d_name);
		if(len > 5 && !strcmp(names[i]->d_name + len - 5, ".conf")){
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
			read_file(w, path, depth + 1);
		}
		free(names[i]);
	}
	if(n >= 0) free(names);
}

static int read_file(struct walk *w, const char *path, int depth)
{
	FILE *f;
	char line[4096], *s, *key, *val, real[PATH_MAX];

	if(depth > MAX_DEPTH || (f = fopen(path, "r")) == NULL) return MOSQ_ERR_NOT_FOUND;
	while(fgets(line, sizeof(line), f)){
		s = trim(line);
		if(*s == '#' || *s == '\0') continue;
		key = s;
		val = s + strcspn(s, " \t");
		if(*val) *val++ = '\0';
		val = trim(val);
		if(!strcmp(key, "plugin") || !strcmp(key, "auth_plugin")){
			w->ours = realpath(val, real) && !strcmp(real, w->self);
		}
		if(!strcmp(key, "include_dir")){
			read_dir(w, val, depth);
		}else{
			w->line(key, val, w->ours, w->ud);
		}
	}
	fclose(f);
	return MOSQ_ERR_SUCCESS;
}

int im_conffile__walk(const char *path, im_conffile__line_cb line, void *ud)
{
	struct walk *w;
	Dl_info info;
	int rc;

	if(path == NULL) return MOSQ_ERR_INVAL;
	w = mosquitto_calloc(1, sizeof(*w));
	if(w == NULL) return MOSQ_ERR_NOMEM;
	w->line = line;
	w->ud = ud;
	if(dladdr((void *)im_conffile__walk, &info) == 0 || info.dli_fname == NULL || !realpath(info.dli_fname, w->self)){
		mosquitto_free(w);
		return MOSQ_ERR_UNKNOWN;
	}
	rc = read_file(w, path, 0);
	mosquitto_free(w);
	return rc;
}

/* ---- other ACL sources ---- */

struct sources {
	char found[512];        /* "acl_file /etc/acl, plugin /usr/lib/...", for the log */
	int n;
	bool per_listener;
};

static void add_source(struct sources *s, const char *key, const char *value)
{
	size_t len = strlen(s->found);

	snprintf(s->found + len, sizeof(s->found) - len, "%s%s %s", s->n ? ", " : "", key, value);
	s->n++;
}

static void scan_line(const char *key, const char *value, bool ours, void *ud)
{
	struct sources *s = ud;

	if(!strcmp(key, "acl_file")){
		add_source(s, key, value);
	}else if((!strcmp(key, "plugin") || !strcmp(key, "auth_plugin")) && !ours){
		/* dynamic security, or any plugin: it may answer ACL checks. */
		add_source(s, key, value);
	}else if(!strcmp(key, "per_listener_settings")){
		s->per_listener = !strcasecmp(value, "true");
	}
}

void im_conffile__apply_nonim(struct im__plugin *p)
{
	struct sources s;
	bool read, want = false;

	memset(&s, 0, sizeof(s));
	read = im_conffile__walk(p->config_file, scan_line, &s) == MOSQ_ERR_SUCCESS;
	if(p->cfg.nonim == IM_NONIM_ALLOW){
		if(!read){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: plugin_opt_nonim_acl allow is NOT applied: cannot read the broker's configuration file to see whether anything else decides ACLs; non-IM topics are deferred (as with nonim_acl defer).");
		}else if(s.n > 0){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: plugin_opt_nonim_acl allow is NOT applied: the configuration has other ACL sources (%s); non-IM topics are left to them (defer), so their denials stand.", s.found);
		}else{
			want = true;
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: non-IM topics are ALLOWED to every client (plugin_opt_nonim_acl allow; no acl_file, auth_plugin or other plugin is configured).");
		}
	}
	if(s.per_listener){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: per_listener_settings true: Mosquitto 2.0.11 sends plugins no tick then; until a tick arrives the plugin delivers from its callbacks (inline) and publishes no metrics.");
		if(p->cfg.nats_servers){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: cluster mode (plugin_opt_nats_servers) under per_listener_settings true: messages from other brokers are delivered from the tick, and Mosquitto 2.0 sends none then; they reach this broker's clients by sync only. Use per_listener_settings false with cluster mode.");
		}
	}
	if(want && !p->fallback_registered){
		if(mosquitto_callback_register(p->pid, MOSQ_EVT_ACL_CHECK, im_acl__fallback_cb, NULL, p) == MOSQ_ERR_SUCCESS){
			p->fallback_registered = true;
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, "im: cannot register the nonim_acl allow callback; non-IM topics are deferred.");
		}
	}else if(!want && p->fallback_registered){
		mosquitto_callback_unregister(p->pid, MOSQ_EVT_ACL_CHECK, im_acl__fallback_cb, NULL);
		p->fallback_registered = false;
	}
}
