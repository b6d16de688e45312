/*
 * plugin_opt_<key> parsing. Defaults first, then each option in turn; a
 * key we do not know or a value we cannot use stops the broker at start
 * with a line that names the option: a typo must never silently run with
 * a default (think "synchronus full").
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/config.h"
#include "base/util.h"
#include "base/name.h"

#define DEFAULT_DB_PATH "/var/lib/mosquitto/im.db"

static int bad(const char *key, const char *value, const char *want)
{
	mosquitto_log_printf(MOSQ_LOG_ERR, "im: invalid value \"%s\" for plugin_opt_%s: expected %s.",
			value, key, want);
	return MOSQ_ERR_INVAL;
}

static int parse_int(const char *key, const char *value, int64_t min, int64_t max, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(value, &end, 10);
	if(errno || end == value || *end != '\0' || v < min || v > max){
		char want[96];
		snprintf(want, sizeof(want), "an integer from %lld to %lld", (long long)min, (long long)max);
		return bad(key, value, want);
	}
	*out = v;
	return MOSQ_ERR_SUCCESS;
}

/* Chooses among named values; *out is the index of the match. */
static int parse_enum(const char *key, const char *value, const char *const *names, int *out)
{
	int i;
	char want[128] = "one of";

	for(i = 0; names[i]; i++){
		if(!strcasecmp(value, names[i])){
			*out = i;
			return MOSQ_ERR_SUCCESS;
		}
		strncat(want, i ? ", " : " ", sizeof(want) - strlen(want) - 1);
		strncat(want, names[i], sizeof(want) - strlen(want) - 1);
	}
	return bad(key, value, want);
}

#define SECRET_MAX 4096

/* Reads the HS256 secret (at least 32 bytes; a trailing newline is not
 * part of it). MOSQ_ERR_INVAL with a log line if unusable. */
static int load_secret(struct im__config *cfg, const char *path)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_auth_jwt_secret_file: cannot open \"%s\": %s.", path, strerror(errno));
		return MOSQ_ERR_INVAL;
	}
	im_free(cfg->jwt_secret);
	cfg->jwt_secret = im_malloc(SECRET_MAX);
	if(cfg->jwt_secret == NULL){
		fclose(f);
		return MOSQ_ERR_NOMEM;
	}
	n = fread(cfg->jwt_secret, 1, SECRET_MAX, f);
	fclose(f);
	/* A secret written with echo ends in a newline that the issuer did
	 * not sign with. */
	while(n > 0 && (cfg->jwt_secret[n - 1] == '\n' || cfg->jwt_secret[n - 1] == '\r')) n--;
	if(n < 32){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_auth_jwt_secret_file: \"%s\" holds %zu bytes; an HS256 secret needs at least 32.", path, n);
		return MOSQ_ERR_INVAL;
	}
	cfg->jwt_secret_len = n;
	return MOSQ_ERR_SUCCESS;
}

static int set_prefix(struct im__config *cfg, const char *value)
{
	size_t len = strlen(value);

	if(len == 0 || len > 64 || value[0] == '$' || value[0] == '/' || value[len - 1] == '/'
			|| strpbrk(value, "+#") != NULL){
		return bad("prefix", value, "a topic level such as \"im\" (no wildcards, no leading '$' or '/')");
	}
	im_free(cfg->prefix);
	cfg->prefix = im_strdup(value);
	if(cfg->prefix == NULL) return MOSQ_ERR_NOMEM;
	cfg->prefix_len = len;
	return MOSQ_ERR_SUCCESS;
}

static int set_string(char **dst, const char *value)
{
	im_free(*dst);
	*dst = im_strdup(value);
	return *dst ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
}

/* "alice, bob" -> {"alice", "bob", NULL}; every entry a valid name. */
static int set_admins(struct im__config *cfg, const char *value)
{
	char *copy = im_strdup(value), *save = NULL, *tok;
	size_t n = 0;
	char **list;

	if(copy == NULL) return MOSQ_ERR_NOMEM;
	list = im_calloc(strlen(value) / 2 + 2, sizeof(char *));
	if(list == NULL){
		im_free(copy);
		return MOSQ_ERR_NOMEM;
	}
	for(tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)){
		if(!im_name__valid(tok, strlen(tok)) || (list[n++] = im_strdup(tok)) == NULL){
			im_free(copy);
			cfg->admins = list; /* freed by im_config__free */
			return bad("admins", value, "a comma-separated list of user names");
		}
	}
	im_free(copy);
	cfg->admins = list;
	return MOSQ_ERR_SUCCESS;
}

static void set_defaults(struct im__config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->payload_mode = IM_PAYLOAD_FRAME;
	cfg->delivery = IM_DELIVERY_FULL;
	cfg->synchronous = 1;
	cfg->nonim = IM_NONIM_DEFER;
	cfg->delivery_qos = 1;
	cfg->max_body = 256 * 1024;
	cfg->busy_timeout_ms = 100;
	cfg->page_size = 1024;
	cfg->sync_max_frames = 500;
	cfg->sync_max_bytes = 256 * 1024;
	cfg->trim_batch = 1000;
	cfg->max_group_members = 10000;
	cfg->metrics_interval = 10;
	cfg->sync_inflight = 16;
	cfg->reply_bytes_rate = 2 * 1024 * 1024;
	cfg->request_inflight = 32;
	cfg->user_request_inflight = 32;
	cfg->max_groups_created = 1000;
	cfg->max_groups_per_user = 5000;
	cfg->new_timelines_per_min = 120;
	cfg->typing_rate = 2;
	cfg->batch_max = 256;
	cfg->batch_gather_us = 1000;
	cfg->backlog_max = 64ULL * 1024 * 1024;
	cfg->journal_rotate_seconds = 60;
	cfg->store_timeout = 5;
	cfg->store_readers = 2;
	cfg->client_id_guard = true;
}

/* Integer options: the field, its range. Values are never negative and
 * fit the field, so the width decides the store. */
#define INT_OPT(name, field, lo, hi) \
	{name, offsetof(struct im__config, field), sizeof(((struct im__config *)0)->field), lo, hi}
static const struct int_opt {
	const char *key;
	size_t off, size;
	int64_t min, max;
} int_opts[] = {
	/* page_size only shapes a new database: the one not applied on reload. */
	INT_OPT("delivery_qos", delivery_qos, 0, 2),
	INT_OPT("max_body", max_body, 1, 256 * 1024 * 1024),
	INT_OPT("busy_timeout_ms", busy_timeout_ms, 0, 60000),
	INT_OPT("page_size", page_size, 512, 65536),
	INT_OPT("sync_max_frames", sync_max_frames, 1, 100000),
	INT_OPT("sync_max_bytes", sync_max_bytes, 1024, 64 * 1024 * 1024),
	INT_OPT("sync_rate", sync_rate, 0, 1000000),
	INT_OPT("retention_seconds", retention_seconds, 0, INT64_MAX / 1000),
	INT_OPT("retention_messages", retention_messages, 0, INT64_MAX),
	INT_OPT("trim_batch", trim_batch, 1, 1000000),
	INT_OPT("auth_jwt_leeway", jwt_leeway, 0, 3600),
	INT_OPT("compress_min_bytes", compress_min, 0, 256 * 1024 * 1024),
	INT_OPT("max_devices_per_user", max_devices, 0, 1000),
	INT_OPT("metrics_interval", metrics_interval, 0, 86400),
	INT_OPT("max_group_members", max_group_members, 1, 1000000),
	INT_OPT("sync_inflight", sync_inflight, 0, 100000),
	INT_OPT("reply_bytes_rate", reply_bytes_rate, 0, 1024 * 1024 * 1024),
	INT_OPT("request_inflight", request_inflight, 0, 100000),
	INT_OPT("user_request_inflight", user_request_inflight, 0, 100000),
	INT_OPT("max_groups_created", max_groups_created, 0, 100000000),
	INT_OPT("max_groups_per_user", max_groups_per_user, 0, 100000000),
	INT_OPT("user_msg_rate", user_msg_rate, 0, 1000000),
	INT_OPT("new_timelines_per_min", new_timelines_per_min, 0, 100000000),
	INT_OPT("typing_rate", typing_rate, 0, 1000),
	INT_OPT("batch_max", batch_max, 1, 100000),
	INT_OPT("batch_gather_us", batch_gather_us, 0, 100000),
	INT_OPT("backlog_max", backlog_max, 1024 * 1024, INT64_MAX),
	INT_OPT("journal_rotate_seconds", journal_rotate_seconds, 1, 86400),
	INT_OPT("store_timeout", store_timeout, 0, 3600),
	INT_OPT("store_readers", store_readers, 0, 16),
};

static int parse_int_opt(struct im__config *cfg, const struct int_opt *o, const char *value)
{
	int64_t v;
	int32_t v32;
	int rc = parse_int(o->key, value, o->min, o->max, &v);

	if(rc == MOSQ_ERR_SUCCESS && !strcmp(o->key, "page_size") && (v & (v - 1))){
		rc = bad(o->key, value, "a power of two from 512 to 65536");
	}
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	if(o->size == sizeof(int64_t)){
		memcpy((char *)cfg + o->off, &v, sizeof(v));
	}else{
		v32 = (int32_t)v;
		memcpy((char *)cfg + o->off, &v32, sizeof(v32));
	}
	return MOSQ_ERR_SUCCESS;
}

static int parse_one(struct im__config *cfg, const char *key, const char *value)
{
	static const char *const payloads[] = {"frame", "raw", NULL};
	static const char *const deliveries[] = {"full", "notify", NULL};
	static const char *const syncs[] = {"normal", "full", NULL};
	static const char *const nonims[] = {"defer", "allow", NULL};
	static const char *const presences[] = {"off", "contacts", "all", NULL};
	static const char *const checkpoints[] = {"thread", "inline", NULL};
	static const char *const onoff[] = {"off", "on", NULL};
	static const char *const stores[] = {"sqlite", "postgresql", NULL};
	size_t i;
	int e = 0, rc;

	for(i = 0; i < sizeof(int_opts) / sizeof(int_opts[0]); i++){
		if(!strcasecmp(key, int_opts[i].key)) return parse_int_opt(cfg, &int_opts[i], value);
	}
	if(!strcasecmp(key, "db_path")) return set_string(&cfg->db_path, value);
	if(!strcasecmp(key, "journal_dir")) return set_string(&cfg->journal_dir, value);
	if(!strcasecmp(key, "nats_servers")) return set_string(&cfg->nats_servers, value);
	if(!strcasecmp(key, "client_id_guard")){
		rc = parse_enum(key, value, onoff, &e);
		cfg->client_id_guard = (e == 1);
		return rc;
	}
	if(!strcasecmp(key, "store_key_file")) return set_string(&cfg->store_key_file, value);
	if(!strcasecmp(key, "store")) return parse_enum(key, value, stores, &cfg->store);
	if(!strcasecmp(key, "pg_conninfo")){
		/* Not echoed on a bad value: it may hold a password. */
		if(value[0] == '\0') return bad(key, "", "a libpq connection string or URI");
		return set_string(&cfg->pg_conninfo, value);
	}
	if(!strcasecmp(key, "pg_read_conninfo")){
		if(value[0] == '\0') return bad(key, "", "a libpq connection string or URI");
		return set_string(&cfg->pg_read_conninfo, value);
	}
	if(!strcasecmp(key, "node_id")){
		if(value[0] == '\0' || strlen(value) > 64) return bad(key, value, "1 to 64 bytes, unique per broker");
		return set_string(&cfg->node_id, value);
	}
	if(!strcasecmp(key, "auth_jwt_secret_file")) return load_secret(cfg, value);
	if(!strcasecmp(key, "prefix")) return set_prefix(cfg, value);
	if(!strcasecmp(key, "payload")) return parse_enum(key, value, payloads, &cfg->payload_mode);
	if(!strcasecmp(key, "delivery")) return parse_enum(key, value, deliveries, &cfg->delivery);
	if(!strcasecmp(key, "nonim_acl")) return parse_enum(key, value, nonims, &cfg->nonim);
	if(!strcasecmp(key, "presence")) return parse_enum(key, value, presences, &cfg->presence);
	if(!strcasecmp(key, "admins")){
		im_config__free_admins(cfg);
		return set_admins(cfg, value);
	}
	if(!strcasecmp(key, "checkpoint")){
		rc = parse_enum(key, value, checkpoints, &e);
		cfg->checkpoint_inline = (e == 1);
		return rc;
	}
	if(!strcasecmp(key, "synchronous")){
		rc = parse_enum(key, value, syncs, &e);
		cfg->synchronous = e + 1; /* SQLite: NORMAL = 1, FULL = 2 */
		return rc;
	}
	mosquitto_log_printf(MOSQ_LOG_ERR, "im: unknown option plugin_opt_%s (see README.md, \"Configuration\").", key);
	return MOSQ_ERR_INVAL;
}

/* store postgresql needs a server; node_id defaults to the host name
 * (one broker per host; set it for more). */
static int check_store(struct im__config *cfg)
{
	char host[256];

	/* Brokers of a cluster share their timelines; a SQLite file is one
	 * broker's alone. */
	if(cfg->nats_servers && cfg->store != IM_STORE_PG){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_nats_servers (cluster mode) needs plugin_opt_store postgresql: brokers of a cluster share one store.");
		return MOSQ_ERR_INVAL;
	}
	if(cfg->pg_read_conninfo && cfg->store != IM_STORE_PG){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_pg_read_conninfo needs plugin_opt_store postgresql.");
		return MOSQ_ERR_INVAL;
	}
	if(cfg->store != IM_STORE_PG) return MOSQ_ERR_SUCCESS;
	if(cfg->pg_conninfo == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_store postgresql needs plugin_opt_pg_conninfo (a libpq connection string or URI, e.g. postgresql://im@db1,db2/im?target_session_attrs=read-write).");
		return MOSQ_ERR_INVAL;
	}
	if(cfg->node_id) return MOSQ_ERR_SUCCESS;
	if(gethostname(host, sizeof(host)) != 0 || host[0] == '\0' || strnlen(host, sizeof(host)) > 64){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_store postgresql: the host name cannot serve as this broker's node id; set plugin_opt_node_id (1 to 64 bytes, unique per broker).");
		return MOSQ_ERR_INVAL;
	}
	host[sizeof(host) - 1] = '\0';
	return set_string(&cfg->node_id, host);
}

int im_config__parse(struct im__config *cfg, struct mosquitto_opt *opts, int count)
{
	int i, rc;

	set_defaults(cfg);
	rc = set_prefix(cfg, "im");
	if(rc == MOSQ_ERR_SUCCESS) rc = set_string(&cfg->db_path, DEFAULT_DB_PATH);
	for(i = 0; i < count && rc == MOSQ_ERR_SUCCESS; i++){
		if(opts[i].value == NULL){
			rc = bad(opts[i].key, "", "a value");
		}else{
			rc = parse_one(cfg, opts[i].key, opts[i].value);
		}
	}
	if(rc == MOSQ_ERR_SUCCESS) rc = check_store(cfg);
	if(rc == MOSQ_ERR_SUCCESS && cfg->journal_dir == NULL){
		/* Beside the database: "<db_path>.journal/". */
		size_t n = strlen(cfg->db_path) + sizeof(".journal");
		if((cfg->journal_dir = im_malloc(n)) == NULL) return MOSQ_ERR_NOMEM;
		snprintf(cfg->journal_dir, n, "%s.journal", cfg->db_path);
	}
	return rc;
}

void im_config__copy_runtime(struct im__config *dst, const struct im__config *src)
{
	size_t i;

	for(i = 0; i < sizeof(int_opts) / sizeof(int_opts[0]); i++){
		if(strcmp(int_opts[i].key, "page_size")){
			memcpy((char *)dst + int_opts[i].off, (const char *)src + int_opts[i].off, int_opts[i].size);
		}
	}
	dst->payload_mode = src->payload_mode;
	dst->delivery = src->delivery;
	dst->nonim = src->nonim;
	dst->client_id_guard = src->client_id_guard;
}

int im_config__clone(struct im__config *dst, const struct im__config *src)
{
	char **a;
	size_t n = 0, i;

	memset(dst, 0, sizeof(*dst));
	im_config__copy_runtime(dst, src);
	dst->synchronous = src->synchronous;
	dst->page_size = src->page_size;
	dst->presence = src->presence;
	dst->prefix = im_strdup(src->prefix);
	dst->prefix_len = src->prefix_len;
	for(a = src->admins; a && *a; a++) n++;
	dst->admins = im_calloc(n + 1, sizeof(char *));
	if(dst->prefix == NULL || dst->admins == NULL) return MOSQ_ERR_NOMEM;
	for(i = 0; i < n; i++){
		if((dst->admins[i] = im_strdup(src->admins[i])) == NULL) return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_config__free_admins(struct im__config *cfg)
{
	char **a;

	for(a = cfg->admins; a && *a; a++) im_free(*a);
	im_free(cfg->admins);
	cfg->admins = NULL;
}

void im_config__free(struct im__config *cfg)
{
	im_config__free_admins(cfg);
	if(cfg->jwt_secret) memset(cfg->jwt_secret, 0, cfg->jwt_secret_len);
	im_free(cfg->jwt_secret);
	im_free(cfg->store_key_file);
	cfg->jwt_secret = NULL;
	cfg->store_key_file = NULL;
	if(cfg->pg_conninfo) memset(cfg->pg_conninfo, 0, strlen(cfg->pg_conninfo));
	im_free(cfg->pg_conninfo);
	if(cfg->pg_read_conninfo) memset(cfg->pg_read_conninfo, 0, strlen(cfg->pg_read_conninfo));
	im_free(cfg->pg_read_conninfo);
	cfg->pg_read_conninfo = NULL;
	im_free(cfg->node_id);
	cfg->pg_conninfo = NULL;
	cfg->node_id = NULL;
	im_free(cfg->db_path);
	im_free(cfg->journal_dir);
	im_free(cfg->nats_servers);
	im_free(cfg->prefix);
	cfg->db_path = NULL;
	cfg->journal_dir = NULL;
	cfg->nats_servers = NULL;
	cfg->prefix = NULL;
}
