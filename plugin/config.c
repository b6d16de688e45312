/*
 * plugin_opt_<key> parsing. Defaults first, then each option in turn; a
 * key we do not know or a value we cannot use stops the broker at start
 * with a line that names the option: a typo must never silently run with
 * a default (think "synchronus full").
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "im.h"

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

static int set_prefix(struct im__config *cfg, const char *value)
{
	size_t len = strlen(value);

	if(len == 0 || len > 64 || value[0] == '$' || value[0] == '/' || value[len - 1] == '/'
			|| strpbrk(value, "+#") != NULL){
		return bad("prefix", value, "a topic level such as \"im\" (no wildcards, no leading '$' or '/')");
	}
	mosquitto_free(cfg->prefix);
	cfg->prefix = mosquitto_strdup(value);
	if(cfg->prefix == NULL) return MOSQ_ERR_NOMEM;
	cfg->prefix_len = len;
	return MOSQ_ERR_SUCCESS;
}

static int set_string(char **dst, const char *value)
{
	mosquitto_free(*dst);
	*dst = mosquitto_strdup(value);
	return *dst ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
}

/* "alice, bob" -> {"alice", "bob", NULL}; every entry a valid name. */
static int set_admins(struct im__config *cfg, const char *value)
{
	char *copy = mosquitto_strdup(value), *save = NULL, *tok;
	size_t n = 0;
	char **list;

	if(copy == NULL) return MOSQ_ERR_NOMEM;
	list = mosquitto_calloc(strlen(value) / 2 + 2, sizeof(char *));
	if(list == NULL){
		mosquitto_free(copy);
		return MOSQ_ERR_NOMEM;
	}
	for(tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)){
		if(!im_route__name_valid(tok, strlen(tok)) || (list[n++] = mosquitto_strdup(tok)) == NULL){
			mosquitto_free(copy);
			cfg->admins = list; /* freed by im_config__free */
			return bad("admins", value, "a comma-separated list of user names");
		}
	}
	mosquitto_free(copy);
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
}

static int parse_one(struct im__config *cfg, const char *key, const char *value)
{
	static const char *const payloads[] = {"frame", "raw", NULL};
	static const char *const deliveries[] = {"full", "notify", NULL};
	static const char *const syncs[] = {"off", "normal", "full", NULL};
	static const char *const nonims[] = {"defer", "allow", NULL};
	static const char *const presences[] = {"off", "contacts", "all", NULL};
	static const char *const checkpoints[] = {"thread", "inline", NULL};
	int e = 0;
	int64_t v;
	int rc;

	if(!strcasecmp(key, "db_path")) return set_string(&cfg->db_path, value);
	if(!strcasecmp(key, "prefix")) return set_prefix(cfg, value);
	if(!strcasecmp(key, "payload")) return parse_enum(key, value, payloads, &cfg->payload_mode);
	if(!strcasecmp(key, "delivery")) return parse_enum(key, value, deliveries, &cfg->delivery);
	if(!strcasecmp(key, "nonim_acl")) return parse_enum(key, value, nonims, &cfg->nonim);
	if(!strcasecmp(key, "presence")) return parse_enum(key, value, presences, &cfg->presence);
	if(!strcasecmp(key, "checkpoint")){
		rc = parse_enum(key, value, checkpoints, &e);
		cfg->checkpoint_inline = (e == 1);
		return rc;
	}
	if(!strcasecmp(key, "admins")){
		im_config__free_admins(cfg);
		return set_admins(cfg, value);
	}
	if(!strcasecmp(key, "synchronous")){
		rc = parse_enum(key, value, syncs + 1, &cfg->synchronous);
		cfg->synchronous += 1; /* SQLite: NORMAL = 1, FULL = 2 */
		return rc;
	}
	if(!strcasecmp(key, "delivery_qos")){
		rc = parse_int(key, value, 0, 2, &v);
		cfg->delivery_qos = (int)v;
	}else if(!strcasecmp(key, "max_body")){
		rc = parse_int(key, value, 1, 256 * 1024 * 1024, &v);
		cfg->max_body = (uint32_t)v;
	}else if(!strcasecmp(key, "busy_timeout_ms")){
		rc = parse_int(key, value, 0, 60000, &v);
		cfg->busy_timeout_ms = (int)v;
	}else if(!strcasecmp(key, "page_size")){
		rc = parse_int(key, value, 512, 65536, &v);
		if(rc == MOSQ_ERR_SUCCESS && (v & (v - 1))) rc = bad(key, value, "a power of two from 512 to 65536");
		cfg->page_size = (int)v;
	}else if(!strcasecmp(key, "sync_max_frames")){
		rc = parse_int(key, value, 1, 100000, &v);
		cfg->sync_max_frames = (uint32_t)v;
	}else if(!strcasecmp(key, "sync_max_bytes")){
		rc = parse_int(key, value, 1024, 64 * 1024 * 1024, &v);
		cfg->sync_max_bytes = (uint32_t)v;
	}else if(!strcasecmp(key, "retention_seconds")){
		rc = parse_int(key, value, 0, INT64_MAX / 1000, &v);
		cfg->retention_seconds = v;
	}else if(!strcasecmp(key, "retention_messages")){
		rc = parse_int(key, value, 0, INT64_MAX, &v);
		cfg->retention_messages = v;
	}else if(!strcasecmp(key, "auth_jwt_secret_file")){
		return im_auth__load_secret(cfg, value);
	}else if(!strcasecmp(key, "auth_jwt_leeway")){
		rc = parse_int(key, value, 0, 3600, &v);
		cfg->jwt_leeway = (long)v;
	}else if(!strcasecmp(key, "store_key_file")){
		return set_string(&cfg->store_key_file, value);
	}else if(!strcasecmp(key, "compress_min_bytes")){
		rc = parse_int(key, value, 0, 256 * 1024 * 1024, &v);
		cfg->compress_min = (uint32_t)v;
	}else if(!strcasecmp(key, "max_devices_per_user")){
		rc = parse_int(key, value, 0, 1000, &v);
		cfg->max_devices = (uint32_t)v;
	}else if(!strcasecmp(key, "metrics_interval")){
		rc = parse_int(key, value, 0, 86400, &v);
		cfg->metrics_interval = (uint32_t)v;
	}else if(!strcasecmp(key, "sync_rate")){
		rc = parse_int(key, value, 0, 1000000, &v);
		cfg->sync_rate = (uint32_t)v;
	}else if(!strcasecmp(key, "max_group_members")){
		rc = parse_int(key, value, 1, 1000000, &v);
		cfg->max_group_members = (uint32_t)v;
	}else if(!strcasecmp(key, "trim_batch")){
		rc = parse_int(key, value, 1, 1000000, &v);
		cfg->trim_batch = (uint32_t)v;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: unknown option plugin_opt_%s (see README.md, \"Configuration\").", key);
		return MOSQ_ERR_INVAL;
	}
	return rc;
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
	return rc;
}

void im_config__free_admins(struct im__config *cfg)
{
	char **a;

	for(a = cfg->admins; a && *a; a++) mosquitto_free(*a);
	mosquitto_free(cfg->admins);
	cfg->admins = NULL;
}

void im_config__free(struct im__config *cfg)
{
	im_config__free_admins(cfg);
	if(cfg->jwt_secret) memset(cfg->jwt_secret, 0, cfg->jwt_secret_len);
	mosquitto_free(cfg->jwt_secret);
	mosquitto_free(cfg->store_key_file);
	cfg->jwt_secret = NULL;
	cfg->store_key_file = NULL;
	mosquitto_free(cfg->db_path);
	mosquitto_free(cfg->prefix);
	cfg->db_path = NULL;
	cfg->prefix = NULL;
}
