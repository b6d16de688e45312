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
 *
 * Under per_listener_settings true each listener has its own ACL sources
 * and its own plugins: a plugin line belongs to the listener whose block
 * it is in (the lines after a `listener` line, up to the next; those at
 * the top of each file are the default listener's), Mosquitto registers
 * that plugin's callbacks on that listener alone, and asks them about that
 * listener's clients only. So what counts then is what the plugin's own
 * block holds; another listener's acl_file decides there, never here.
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
	int block;              /* listener block of the line: 0 = the default listener, n = after the n-th listener line */
	int blocks;             /* listener lines so far */
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
	int outer = w->block;

	if(depth > MAX_DEPTH || (f = fopen(path, "r")) == NULL) return MOSQ_ERR_NOT_FOUND;
	/* Mosquitto 2.0 reads each file from the default listener on. */
	w->block = 0;
	while(fgets(line, sizeof(line), f)){
		s = trim(line);
		if(*s == '#' || *s == '\0') continue;
		key = s;
		val = s + strcspn(s, " \t");
		if(*val) *val++ = '\0';
		val = trim(val);
		if(!strcmp(key, "plugin") || !strcmp(key, "auth_plugin")){
			w->ours = realpath(val, real) && !strcmp(real, w->self);
		}else if(!strcmp(key, "listener")){
			w->block = ++w->blocks;
		}
		if(!strcmp(key, "include_dir")){
			read_dir(w, val, depth);
		}else{
			w->line(key, val, w->ours, w->ud);
		}
	}
	fclose(f);
	w->block = outer;
	return MOSQ_ERR_SUCCESS;
}

/* A walk for line(ud), or NULL (out of memory, or this .so not found). */
static struct walk *walk_new(im_conffile__line_cb line, void *ud)
{
	struct walk *w = mosquitto_calloc(1, sizeof(*w));
	Dl_info info;

	if(w == NULL) return NULL;
	w->line = line;
	w->ud = ud;
	if(dladdr((void *)im_conffile__walk, &info) == 0 || info.dli_fname == NULL || !realpath(info.dli_fname, w->self)){
		mosquitto_free(w);
		return NULL;
	}
	return w;
}

int im_conffile__walk(const char *path, im_conffile__line_cb line, void *ud)
{
	struct walk *w;
	int rc;

	if(path == NULL) return MOSQ_ERR_INVAL;
	if((w = walk_new(line, ud)) == NULL) return MOSQ_ERR_UNKNOWN;
	rc = read_file(w, path, 0);
	mosquitto_free(w);
	return rc;
}

/* ---- other ACL sources ---- */

#define SOURCES_MAX 16
#define BLOCKS_MAX 64           /* listener blocks told apart; past them, every one may be ours */

struct sources {
	const struct walk *w;
	struct {
		int block;
		char text[200];         /* "acl_file /etc/acl", for the log */
	} src[SOURCES_MAX];
	int n;                  /* found (past SOURCES_MAX: counted, not kept) */
	uint64_t ours;          /* the listener blocks of our plugin line, a bit each */
	bool port0;             /* block 0 names a port: the default listener exists */
	bool per_listener;
};

static void scan_line(const char *key, const char *value, bool ours, void *ud)
{
	struct sources *s = ud;
	int b = s->w->block;

	if(!strcmp(key, "acl_file") || ((!strcmp(key, "plugin") || !strcmp(key, "auth_plugin")) && !ours)){
		/* acl_file, dynamic security or any other plugin: it may answer ACL checks. */
		if(s->n < SOURCES_MAX){
			s->src[s->n].block = b;
			snprintf(s->src[s->n].text, sizeof(s->src[0].text), "%s %s", key, value);
		}
		s->n++;
	}else if(!strcmp(key, "plugin") || !strcmp(key, "auth_plugin")){
		if(b < BLOCKS_MAX) s->ours |= UINT64_C(1) << b;
	}else if(!strcmp(key, "port") && b == 0){
		s->port0 = true;
	}else if(!strcmp(key, "per_listener_settings")){
		s->per_listener = !strcasecmp(value, "true");
	}
}

/* Is block one of our plugin's? Past BLOCKS_MAX, or if our line was not
 * found, any may be. */
static bool ours_in(const struct sources *s, int block)
{
	return block >= BLOCKS_MAX || s->ours == 0 || (s->ours >> block & 1);
}

/* The sources that may decide an ACL for our clients, listed into found
 * (for the log): all, or under per_listener_settings those of our
 * plugin's listener block(s). mine false: the others instead. Returns how
 * many. */
static int sources_of(const struct sources *s, bool mine, char *found, size_t cap)
{
	size_t len;
	int i, n = 0;

	found[0] = '\0';
	for(i = 0; i < s->n; i++){
		bool in = !s->per_listener || i >= SOURCES_MAX || ours_in(s, s->src[i].block);
		if(in != mine) continue;
		len = strlen(found);
		snprintf(found + len, cap - len, "%s%s", n ? ", " : "", i < SOURCES_MAX ? s->src[i].text : "...");
		n++;
	}
	return n;
}

/* Listener blocks (listener lines, and the default listener if a port is
 * set at the top) without our plugin line. */
static int other_listeners(const struct sources *s)
{
	int b, n = 0;

	for(b = s->port0 ? 0 : 1; b <= s->w->blocks; b++) if(!ours_in(s, b)) n++;
	return n;
}

void im_conffile__apply_nonim(struct im__plugin *p)
{
	struct sources *s = mosquitto_calloc(1, sizeof(*s));
	struct walk *w = s ? walk_new(scan_line, s) : NULL;
	bool read, want = false;
	char mine[1024] = "", others[1024] = "";
	int n_mine = 0, n_others = 0;

	if(w) s->w = w;
	read = w && p->config_file && read_file(w, p->config_file, 0) == MOSQ_ERR_SUCCESS;
	if(read){
		n_mine = sources_of(s, true, mine, sizeof(mine));
		n_others = sources_of(s, false, others, sizeof(others));
	}
	if(p->cfg.nonim == IM_NONIM_ALLOW){
		if(!read){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: plugin_opt_nonim_acl allow is NOT applied: cannot read the broker's configuration file to see whether anything else decides ACLs; non-IM topics are deferred (as with nonim_acl defer).");
		}else if(n_mine > 0){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: plugin_opt_nonim_acl allow is NOT applied: the configuration has other ACL sources%s (%s); non-IM topics are left to them (defer), so their denials stand.",
					s->per_listener ? " in this plugin's listener block (per_listener_settings true)" : "", mine);
		}else if(s->per_listener){
			want = true;
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: non-IM topics are ALLOWED to every client of this plugin's listener (plugin_opt_nonim_acl allow; per_listener_settings true, and no acl_file, auth_plugin or other plugin in the listener block of this plugin's line). The other listeners' own settings decide there (%s).",
					n_others ? others : "none");
		}else{
			want = true;
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: non-IM topics are ALLOWED to every client (plugin_opt_nonim_acl allow; no acl_file, auth_plugin or other plugin is configured).");
		}
	}
	if(read && s->per_listener){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: per_listener_settings true: Mosquitto 2.0.11 sends plugins no tick then; until a tick arrives the plugin delivers from its callbacks (inline) and publishes no metrics.");
		if(other_listeners(s) > 0){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: per_listener_settings true: the plugin sees only the clients of the listener whose block has its plugin line; %d other listener(s) do not load it, and there the IM topics (%s/...) and $CONTROL/im/v1/... are decided by that listener's own settings alone: deny them there (acl_file), or a client of that listener may read every IM delivery.",
					other_listeners(s), p->cfg.prefix);
		}
		if(p->cfg.nats_servers){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "im: WARNING: cluster mode (plugin_opt_nats_servers) under per_listener_settings true: messages from other brokers are delivered from the tick, and Mosquitto 2.0 sends none then; they reach this broker's clients by sync only. Use per_listener_settings false with cluster mode.");
		}
	}
	mosquitto_free(w);
	mosquitto_free(s);
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
