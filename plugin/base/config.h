/*
 * The plugin's options (plugin_opt_*): parsed on the broker thread; the
 * worker and the cluster read copies or a pointer that does not change
 * under them.
 */
#ifndef IM_BASE_CONFIG_H
#define IM_BASE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mosquitto_opt;

enum im_payload_mode { IM_PAYLOAD_FRAME = 0, IM_PAYLOAD_RAW = 1 };
enum im_delivery { IM_DELIVERY_FULL = 0, IM_DELIVERY_NOTIFY = 1 };
enum im_nonim { IM_NONIM_DEFER = 0, IM_NONIM_ALLOW = 1 };
enum im_presence { IM_PRESENCE_OFF = 0, IM_PRESENCE_CONTACTS = 1, IM_PRESENCE_ALL = 2 };
enum im_store_kind { IM_STORE_SQLITE = 0, IM_STORE_PG = 1 };

struct im__config {
	char *db_path;              /* owned */
	char *journal_dir;          /* owned; default "<db_path>.journal" */
	char *prefix;               /* owned, e.g. "im" */
	size_t prefix_len;
	int payload_mode;           /* enum im_payload_mode */
	int delivery;               /* enum im_delivery */
	int synchronous;            /* 1 = NORMAL, 2 = FULL (SQLite values; FULL also fsyncs the journal) */
	int nonim;                  /* enum im_nonim */
	int delivery_qos;           /* QoS of every frame and reply the plugin sends */
	uint32_t max_body;          /* bytes; larger publishes are refused */
	int busy_timeout_ms;        /* SQLite busy timeout (on the worker) */
	int page_size;              /* for a new database only */
	bool checkpoint_inline;     /* SQLite's own checkpoints, inside the worker's commits */
	uint32_t sync_max_frames;   /* per batch */
	uint32_t sync_max_bytes;    /* per batch, frames' bytes */
	int64_t retention_seconds;  /* 0 = keep forever */
	int64_t retention_messages; /* per timeline, 0 = no count limit */
	char **admins;              /* NULL-terminated; may manage any group */
	char *jwt_secret;           /* NULL: no token login (BASIC_AUTH not registered) */
	size_t jwt_secret_len;
	long jwt_leeway;            /* seconds of clock skew allowed for exp/nbf */
	char *store_key_file;       /* NULL: bodies stored as given */
	uint32_t sync_rate;         /* sync requests per second per client, 0 = no limit */
	uint32_t sync_inflight;     /* sync requests queued per client at most */
	uint32_t reply_bytes_rate;  /* reply bytes per second per client (burst: 4 s worth); 0 = no limit */
	uint32_t request_inflight;  /* requests of any kind waiting to be answered, per client; 0 = no limit */
	uint32_t user_request_inflight; /* the same, per user across its client ids; 0 = no limit */
	uint32_t metrics_interval;  /* seconds, 0 = no metrics */
	uint32_t max_devices;       /* per user, 0 = no limit */
	uint32_t compress_min;      /* bodies of at least this many bytes are deflated; 0 = never */
	int presence;               /* enum im_presence */
	uint32_t max_group_members;
	uint32_t max_groups_created;    /* groups one user may create (own); 0 = no limit */
	uint32_t max_groups_per_user;   /* groups one user may be a member of; 0 = no limit */
	uint32_t trim_batch;        /* rows deleted per retention step at most */
	uint32_t user_msg_rate;     /* messages per second per user, 0 = no limit */
	uint32_t new_timelines_per_min; /* new timelines a user may open per minute, 0 = no limit */
	uint32_t typing_rate;       /* typing signals per second per user, 0 = no limit */
	uint32_t batch_max;         /* jobs per store transaction at most */
	uint32_t batch_gather_us;   /* under a steady stream, a batch waits this long for company; 0 = never */
	uint64_t backlog_max;       /* journal bytes not yet stored before publishes are refused */
	uint32_t journal_rotate_seconds; /* a non-empty segment older than this is closed (so it can be cut) */
	uint32_t store_timeout;     /* seconds a batch may take before the store counts as stalled; 0 = never */
	uint32_t store_readers;     /* reader threads (sync, lists, read marks) beside the writer; 0 = the writer reads */
	char *nats_servers;         /* owned; cluster mode when set */
	bool client_id_guard;       /* token login: a client id stays with its first user */
	int store;                  /* enum im_store_kind */
	char *pg_conninfo;          /* owned; libpq conninfo or URI (store postgresql); may hold a password: never logged */
	char *pg_read_conninfo;     /* owned; where readers connect (a standby), NULL: pg_conninfo; never logged */
	char *node_id;              /* owned; this broker's name in a shared store; default: the host name */
};

/* Fills cfg from the broker's options. Defaults first; an unknown option or
 * a bad value logs a line naming the option and returns MOSQ_ERR_INVAL.
 * On any return cfg may hold allocations: release with im_config__free. */
int im_config__parse(struct im__config *cfg, struct mosquitto_opt *opts, int count);
void im_config__free(struct im__config *cfg);
void im_config__free_admins(struct im__config *cfg);
/* Copies what may change while the broker runs (SIGHUP): every integer
 * option but page_size, payload, delivery, nonim_acl. Strings, keys and
 * what shapes the store are left to the caller. */
void im_config__copy_runtime(struct im__config *dst, const struct im__config *src);
/* dst: what a thread of the store needs of src, its own copy: the run-time
 * options, synchronous, page_size, presence, the prefix and the admins.
 * On MOSQ_ERR_NOMEM dst may hold allocations: im_config__free. */
int im_config__clone(struct im__config *dst, const struct im__config *src);

#endif
