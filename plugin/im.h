/*
 * mosquitto-im: private header of the plugin.
 *
 * One header, split in banner sections, one section per module (file).
 * Cross-file functions are named im_<module>__<verb>_<noun>; broker
 * callbacks end in _cb. Ownership is stated at each declaration.
 */
#ifndef IM_H
#define IM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <sqlite3.h>

#include "im.pb-c.h"

struct mosquitto;
struct mosquitto_opt;
#include <mosquitto.h>

/* =========================================================================
 * Limits and constants
 * ========================================================================= */

#define IM_NAME_MAX 64          /* user and group names, bytes of UTF-8 */
#define IM_TL_MAX (2 + IM_NAME_MAX) /* "u/<name>" */
#define IM_CMID_MAX 128         /* client message id, bytes */
#define IM_CTYPE_MAX 256        /* content type, bytes */
#define IM_FRAME_FIXED 5        /* 'I' 'M' version len_hi len_lo */
#define IM_FRAME_VERSION 1
/* Where a publish that must reach no one is retargeted (duplicates, and
 * every original publish once the plugin delivered its frame itself).
 * Short enough to be written over the shortest possible IM topic
 * ("x/u/y"); '$' so that '#' never matches it; the ACL refuses to let
 * anyone subscribe to or read it. */
#define IM_SINK_TOPIC "$IMD"

enum im_payload_mode { IM_PAYLOAD_FRAME = 0, IM_PAYLOAD_RAW = 1 };
enum im_delivery { IM_DELIVERY_FULL = 0, IM_DELIVERY_NOTIFY = 1 };
enum im_nonim { IM_NONIM_DEFER = 0, IM_NONIM_ALLOW = 1 };
enum im_presence { IM_PRESENCE_OFF = 0, IM_PRESENCE_CONTACTS = 1, IM_PRESENCE_ALL = 2 };

/* =========================================================================
 * config.c — plugin_opt_* parsing
 * ========================================================================= */

struct im__config {
	char *db_path;              /* owned */
	char *prefix;               /* owned, e.g. "im" */
	size_t prefix_len;
	int payload_mode;           /* enum im_payload_mode */
	int delivery;               /* enum im_delivery */
	int synchronous;            /* 1 = NORMAL, 2 = FULL (SQLite values) */
	int nonim;                  /* enum im_nonim */
	int delivery_qos;           /* QoS of every frame and reply the plugin sends */
	uint32_t max_body;          /* bytes; larger publishes are refused */
	int busy_timeout_ms;        /* SQLite busy timeout on the broker thread */
	int page_size;              /* for a new database only */
	bool checkpoint_inline;     /* SQLite's own checkpoints, on the broker thread */
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
	uint32_t metrics_interval;  /* seconds, 0 = no metrics */
	uint32_t max_devices;       /* per user, 0 = no limit */
	uint32_t compress_min;      /* bodies of at least this many bytes are deflated; 0 = never */
	int presence;               /* enum im_presence */
	uint32_t max_group_members;
	uint32_t trim_batch;        /* rows deleted per tick at most */
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

/* =========================================================================
 * auth.c — token login
 * ========================================================================= */

/* Reads the HS256 secret (at least 32 bytes; a trailing newline is not
 * part of it). MOSQ_ERR_INVAL with a log line if unusable. */
int im_auth__load_secret(struct im__config *cfg, const char *path);
/* NULL if token is a valid HS256 JWT for username at now, else the reason. */
const char *im_auth__check_jwt(const struct im__config *cfg, const char *token, const char *username, time_t now);
int im_auth__basic_cb(int event, void *event_data, void *userdata);

/* =========================================================================
 * props.c — reading MQTT v5 properties (broker's readers or libmosquitto's)
 * ========================================================================= */

/* Finds out, once, which library's property readers were bound. */
void im_props__init(void);
/* Releases a string or binary returned by the functions below (or by
 * im_props__user): they were allocated by whichever library read them. */
void im_props__free(void *ptr);
/* Iterates user properties as mosquitto_property_read_string_pair does:
 * pass the list first with skip_first false, then the returned pointer
 * with skip_first true. *key and *value are the caller's (im_props__free). */
const mosquitto_property *im_props__user(const mosquitto_property *it, char **key, char **value, bool skip_first);
/* The first string property identifier of props, or NULL. Caller frees. */
char *im_props__string(const mosquitto_property *props, int identifier);
bool im_props__has(const mosquitto_property *props, int identifier);
/* The first binary property identifier of props, or NULL. Caller frees. */
void *im_props__binary(const mosquitto_property *props, int identifier, uint16_t *len);

/* =========================================================================
 * route.c — topic and name rules
 * ========================================================================= */

/* A timeline named by a topic or a request. Points into the caller's
 * string: valid as long as that string is. */
struct im__route {
	char kind;           /* 'u' or 'g' */
	const char *name;    /* not NUL-terminated */
	size_t name_len;
};

/* True if name (len bytes) is a valid user or group name: UTF-8, 1..64
 * bytes, no '/', '+', '#', '$', NUL or control characters. */
bool im_route__name_valid(const char *name, size_t len);

/* Classifies a topic (or a subscription filter) against the prefix.
 * Returns 1 if it is in the IM namespace ("<prefix>/..." ), 0 if not. */
int im_route__in_namespace(const struct im__config *cfg, const char *topic);

/* Parses "<prefix>/u/<name>" or "<prefix>/g/<name>" into r.
 * Returns MOSQ_ERR_SUCCESS, or MOSQ_ERR_INVAL for any other shape or an
 * invalid name. */
int im_route__parse_topic(const struct im__config *cfg, const char *topic, struct im__route *r);

/* Parses a timeline string "u/<name>" or "g/<name>" (as in requests). */
int im_route__parse_timeline(const char *tl, struct im__route *r);

/* True if a length-delimited field of a flat request payload contains a
 * NUL byte (a string protobuf-c would cut short). */
bool im_route__has_nul(const void *payload, size_t len);

/* Writes "u/<name>" into out (cap >= IM_TL_MAX + 1). Returns length. */
size_t im_route__timeline(const struct im__route *r, char *out, size_t cap);

/* =========================================================================
 * frame.c — the frame codec (shared with examples/ and tests/)
 * ========================================================================= */

/* Size of the frame for hdr and a body of body_len bytes, or 0 if the
 * encoded header does not fit the 16-bit length field. */
size_t im_frame__size(const Im__V1__Header *hdr, size_t body_len);

/* Writes the frame into out (cap bytes). Returns the frame length, or 0 if
 * cap is too small or the header too large. body may be NULL if body_len
 * is 0. */
size_t im_frame__encode(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len);

/* Splits a frame. On success (MOSQ_ERR_SUCCESS) *hdr is an unpacked header
 * allocated with alloc (NULL = protobuf-c's default), free it with
 * im__v1__header__free_unpacked(*hdr, alloc); *body points into buf.
 * Returns MOSQ_ERR_MALFORMED_PACKET for a bad magic, an unknown version, a
 * truncated buffer or an undecodable header; nothing is allocated then. */
int im_frame__decode(const uint8_t *buf, size_t len, ProtobufCAllocator *alloc,
		Im__V1__Header **hdr, const uint8_t **body, size_t *body_len);

/* Inflates a body flagged FLAG_COMPRESSED to its raw_len bytes, for
 * readers (imcat, the reference client). Returns a malloc()ed buffer the
 * caller free()s, or NULL if the body does not inflate to exactly raw_len
 * bytes or raw_len is above IM_INFLATE_MAX (a decompression bomb). */
#define IM_INFLATE_MAX (256u * 1024 * 1024)
uint8_t *im_frame__inflate(const uint8_t *body, size_t len, uint32_t raw_len);

/* A growable byte buffer, reused across calls (no per-message malloc). */
struct im__buf {
	uint8_t *data;
	size_t cap;
};

/* A token bucket per client for request rate limits. */
struct im__bucket {
	double tokens;
	int64_t last_ms;
};

struct im__plugin;
/* Publishes every metric once (retained). */
void im_metrics__publish(struct im__plugin *p);

/* Grows b to at least n bytes (map.c). MOSQ_ERR_SUCCESS or MOSQ_ERR_NOMEM. */
int im_plugin__buf_reserve(struct im__buf *b, size_t n);

/* =========================================================================
 * crypt.c — encryption at rest (AES-256-GCM)
 * ========================================================================= */

#define IM_MAX_KEYS 16

struct im__key {
	uint16_t id;
	uint8_t key[32];
};

struct im__crypt {
	struct im__key keys[IM_MAX_KEYS];
	size_t n;               /* the last key seals */
	void *ctx;              /* EVP_CIPHER_CTX *, reused */
	struct im__buf buf;     /* sealed or opened body; valid until the next call */
};

/* Loads the key file. MOSQ_ERR_INVAL with a log line naming the line. */
int im_crypt__load(struct im__crypt *c, const char *path);
void im_crypt__free(struct im__crypt *c);
/* Seals body in for (tl, seq) with the newest key. *out points into c->buf. */
int im_crypt__seal(struct im__crypt *c, const char *tl, uint64_t seq, const void *in, size_t len,
		const void **out, size_t *out_len, uint16_t *key_id);
/* Opens a sealed body. MOSQ_ERR_UNKNOWN if the key is unknown or the row
 * was altered or moved to another (tl, seq). *out points into c->buf. */
int im_crypt__open(struct im__crypt *c, uint16_t key_id, const char *tl, uint64_t seq,
		const void *in, size_t len, const void **out, size_t *out_len);

/* =========================================================================
 * map.c — string-keyed hash map (groups, member sets)
 * ========================================================================= */

struct im__map_slot {
	char *key;          /* owned copy, NUL-terminated; NULL = empty slot */
	size_t len;
	uint32_t hash;
	void *val;
};

struct im__map {
	struct im__map_slot *slots;
	size_t cap;         /* power of two */
	size_t count;
};

uint32_t im_map__hash(const char *s, size_t len);
/* The value for key, or NULL. */
void *im_map__get(const struct im__map *m, const char *key, size_t len);
/* Inserts or replaces; the key is copied, val is stored as given.
 * MOSQ_ERR_SUCCESS or MOSQ_ERR_NOMEM (map unchanged). */
int im_map__put(struct im__map *m, const char *key, size_t len, void *val);
/* Removes key; returns its value (for the caller to free), or NULL. */
void *im_map__del(struct im__map *m, const char *key, size_t len);
/* Frees keys, and values with free_val if not NULL. */
void im_map__free(struct im__map *m, void (*free_val)(void *));

/* =========================================================================
 * store.c — SQLite: open, pragmas, migrations, prepared statements
 * ========================================================================= */

/* A cached timeline: its row id and head. One per timeline touched since
 * start; the cache is the only place the hot path reads heads from. */
struct im__tl {
	int64_t id;
	uint64_t head;      /* last seq allocated (committed) */
	uint64_t first;     /* oldest seq still stored (head+1 if none) */
	uint32_t hash;
	uint16_t name_len;
	char name[];        /* "u/<name>", NUL-terminated */
};

struct im__tl_cache {
	struct im__tl **slots;
	size_t cap;         /* power of two */
	size_t count;
};

/* =========================================================================
 * ckpt.c — WAL checkpoints on a thread of their own
 * ========================================================================= */

#include <pthread.h>

struct im__ckpt {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	sqlite3 *db;        /* the thread's own connection */
	bool running, stop;
	int last_rc;        /* last SQLite result, read on the broker thread for logs */
	long checkpoints;
};

/* Opens a second connection to path and starts a thread that runs a
 * PASSIVE checkpoint every 100 ms (never blocks the writer). */
int im_ckpt__start(struct im__ckpt *c, const char *path);
/* Stops and joins the thread, runs a last checkpoint, closes. Idempotent. */
void im_ckpt__stop(struct im__ckpt *c);

struct im__store {
	sqlite3 *db;
	struct im__ckpt ckpt;
	struct im__crypt *crypt;    /* NULL: bodies stored as given; owned by the plugin */
	struct im__tl_cache tls;
	sqlite3_stmt *begin, *commit, *rollback;
	sqlite3_stmt *tl_get, *tl_insert, *tl_set_first;
	sqlite3_stmt *msg_insert, *msg_dedup, *msg_range, *msg_own_seq;
	sqlite3_stmt *cursor_get, *cursor_set;
	sqlite3_stmt *trim_list, *trim_age_first, *trim_delete;
	/* store_group.c */
	struct im__map groups;      /* name -> struct im__group *, loaded lazily */
	sqlite3_stmt *grp_get, *grp_members, *grp_insert, *mem_insert, *mem_delete, *grp_of_user;
	sqlite3_stmt *contact_insert, *contact_check;
	struct im__map contacts_seen;   /* "a\nb" pairs already written this run */
};

/* A group as cached: owner and member set (user -> non-NULL). */
struct im__group {
	char *owner;
	struct im__map members;
};

/* A message as stored and as sent in a frame. Strings are borrowed: they
 * must outlive the call they are passed to. */
struct im__msg {
	uint64_t seq;
	int64_t ts_ms;
	const char *sender;
	const char *cmid;         /* NULL if none */
	const char *to;           /* addressed timeline */
	const char *content_type; /* NULL if none */
	uint32_t flags;
	int64_t expires_ms;       /* 0 = never */
	uint32_t raw_len;         /* FLAG_COMPRESSED: inflated length */
	const void *body;
	size_t body_len;
};

/* Opens (creating if needed) the database at path, applies pragmas and
 * migrations, prepares statements. MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN
 * with a log line naming the path and SQLite's message. On failure the
 * store is left closed (im_store__close is still safe). */
int im_store__open(struct im__store *st, const char *path, int synchronous, int busy_timeout_ms, int page_size,
		bool checkpoint_thread);
void im_store__close(struct im__store *st);

/* Looks a timeline up in the cache, then in the database, creating its row
 * if create is true. Returns NULL if it does not exist (and !create) or on
 * a store error (logged). The pointer is owned by the store and stays valid
 * until im_store__close. */
struct im__tl *im_store__timeline(struct im__store *st, const char *name, size_t len, bool create);

/* The outcome of an append. */
struct im__appended {
	uint64_t seq;       /* in the addressed timeline */
	uint64_t own_seq;   /* in the sender's inbox, 0 if no copy was made */
	int64_t ts_ms;
	bool duplicate;     /* (sender, cmid) seen before: seq/own_seq/ts_ms are the original's */
};

/* Appends msg to `to` and, if own is not NULL, the sender's copy to own,
 * in one transaction, after checking (sender, cmid) for a repeat. msg->seq
 * is ignored. Heads in the cache move only after COMMIT succeeded.
 * Returns MOSQ_ERR_SUCCESS (out filled) or MOSQ_ERR_UNKNOWN on a store
 * failure (logged; nothing changed). */
int im_store__append(struct im__store *st, struct im__tl *to, struct im__tl *own,
		const struct im__msg *msg, struct im__appended *out);

/* Row callback for im_store__range: return 0 to continue, 1 to stop
 * (the row was not consumed), or a MOSQ_ERR_* to abort. */
typedef int (*im_store__row_fn)(void *ctx, const struct im__msg *m);

/* Calls fn for each message of tl with seq > after, in order, at most
 * limit rows, skipping rows expired at now_ms. Returns MOSQ_ERR_SUCCESS,
 * or MOSQ_ERR_UNKNOWN on a store failure. *more tells whether a further
 * row exists after the last one delivered. */
int im_store__range(struct im__store *st, struct im__tl *tl, uint64_t after, uint32_t limit,
		int64_t now_ms, im_store__row_fn fn, void *ctx, bool *more);

/* Cursor of (timeline, user, client id): 0 if none. */
int im_store__cursor_get(struct im__store *st, struct im__tl *tl, const char *user,
		const char *client_id, uint64_t *seq);
/* Moves the cursor to max(current, seq). *now receives the result. */
int im_store__cursor_set(struct im__store *st, struct im__tl *tl, const char *user,
		const char *client_id, uint64_t seq, uint64_t *now);

/* One step of a retention sweep over the timelines, from *cursor_id on:
 * deletes messages older than cutoff_ms (0 = no age limit) or beyond the
 * newest keep (0 = no count limit), at most budget rows, one short
 * transaction per timeline, and moves first_seq. *cursor_id is where the
 * next step starts; *done is set when the sweep reached the last timeline. Returns rows deleted,
 * or -1 on a store failure (logged; nothing half-done). */
int im_store__trim_step(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
		int64_t *cursor_id, bool *done);

/* Milliseconds since the epoch. */
int64_t im_store__now_ms(void);
/* Monotonic microseconds, for durations. */
int64_t im_store__mono_us(void);

/* Building blocks of a transaction, for store_*.c. begin/commit return
 * MOSQ_ERR_SUCCESS or MOSQ_ERR_UNKNOWN (logged); a failed commit is rolled
 * back. insert_msg writes one row at seq and moves the timeline's head in
 * the database only: the caller moves tl->head after the commit. */
int im_store__begin(struct im__store *st);
int im_store__commit(struct im__store *st);
void im_store__rollback(struct im__store *st);
int im_store__insert_msg(struct im__store *st, struct im__tl *tl, uint64_t seq, const struct im__msg *m, int copy);
int im_store__step(struct im__store *st, sqlite3_stmt *s, const char *what);

/* =========================================================================
 * store_group.c — groups and members
 * ========================================================================= */

enum im_group_op { IM_GROUP_CREATE, IM_GROUP_ADD, IM_GROUP_REMOVE, IM_GROUP_LEAVE };

int im_store__group_prepare(struct im__store *st);
void im_store__group_close(struct im__store *st);

/* The cached group, loading it on first use; NULL if it does not exist or
 * on a store error (logged). Owned by the store. */
struct im__group *im_store__group(struct im__store *st, const char *name, size_t len);

bool im_store__is_member(struct im__store *st, const char *group, size_t glen, const char *user);

/* Applies a membership change and appends its system message sys to the
 * group's timeline tl, in one transaction; caches change after COMMIT.
 * users: the users added/removed (actor for LEAVE; for CREATE the owner
 * is the actor and is added too). out gets the system message's seq.
 * MOSQ_ERR_SUCCESS or MOSQ_ERR_UNKNOWN (nothing changed). */
int im_store__group_change(struct im__store *st, enum im_group_op op, const char *group,
		const char *actor, char *const *users, size_t n, struct im__tl *tl,
		const struct im__msg *sys, uint64_t *seq);

/* Notes that a and b exchanged a direct message (once per pair per run). */
void im_store__contact_note(struct im__store *st, const char *a, const char *b);
/* True if reader and user (len bytes) exchanged a direct message or share a group. */
bool im_store__are_contacts(struct im__store *st, const char *reader, const char *user, size_t len);

/* Calls fn for each group user is a member of, in name order. */
int im_store__groups_of(struct im__store *st, const char *user,
		int (*fn)(void *ctx, const char *group), void *ctx);

/* =========================================================================
 * metrics.c — $SYS/broker/im/...
 * ========================================================================= */

#define IM_HIST_BUCKETS 24      /* log2 µs: 1 µs .. 8 s */

struct im__metrics {
	uint64_t sequenced, duplicates, refused;
	uint64_t sync_requests, sync_frames, sync_limited, acks, group_changes;
	uint64_t store_errors, trimmed;
	uint64_t commit_hist[IM_HIST_BUCKETS];  /* this interval */
};

void im_metrics__commit_us(struct im__metrics *m, int64_t us);

/* =========================================================================
 * plugin.c — shared plugin state
 * ========================================================================= */

struct im__plugin {
	void *pid;                      /* mosquitto_plugin_id_t * */
	struct im__config cfg;
	struct im__store store;
	struct im__crypt crypt;
	struct im__buf scratch;         /* frames are built here, then copied by the broker */
	struct im__buf zbuf;            /* deflated bodies */
	ProtobufCAllocator pb_alloc;    /* protobuf-c through mosquitto_* */
	/* A client whose MOSQ_EVT_DISCONNECT just fired: the broker sends its
	 * will right after, and a will on an IM topic must be refused. Only
	 * meaningful until the next event. */
	const struct mosquitto *disconnecting;
	bool fallback_registered;       /* the non-IM "allow" ACL callback */
	/* The last payload the READ check judged (on_acl.c is_frame). */
	const void *read_ptr;
	const char *read_topic;
	uint32_t read_len;
	bool read_ok;
	bool auth_registered;           /* MOSQ_EVT_BASIC_AUTH (token login) */
	struct im__map rate;            /* client id -> struct im__bucket (sync_rate) */
	struct im__metrics metrics;
	char *config_file;              /* the broker's -c file, absolute; NULL if unknown */
	struct im__map devices;         /* client id -> device (presence.c) */
	struct im__map users_online;    /* user -> its devices */
	int64_t next_metrics_ms;
	int64_t next_trim_ms;           /* when the next retention step may run */
	int64_t trim_cursor;            /* timeline id the sweep continues after */
};

/* =========================================================================
 * presence.c — devices and presence
 * ========================================================================= */

/* client subscribed to an IM topic: it is an online device of its user
 * from now on (may disconnect the user's oldest device). */
void im_presence__seen(struct im__plugin *p, const struct mosquitto *client);
/* client disconnected. */
void im_presence__gone(struct im__plugin *p, const struct mosquitto *client);
/* May reader see user's presence (user is len bytes, not terminated)? */
bool im_presence__may_read(struct im__plugin *p, const char *reader, const char *user, size_t len);
void im_presence__free(struct im__plugin *p);

/* =========================================================================
 * Broker callbacks: on_acl.c, on_message.c, on_control.c, on_tick.c
 * ========================================================================= */

int im_acl__check_cb(int event, void *event_data, void *userdata);
int im_acl__fallback_cb(int event, void *event_data, void *userdata);
int im_acl__disconnect_cb(int event, void *event_data, void *userdata);
int im_message__cb(int event, void *event_data, void *userdata);
int im_control__sync_cb(int event, void *event_data, void *userdata);
int im_control__ack_cb(int event, void *event_data, void *userdata);
int im_control__group_cb(int event, void *event_data, void *userdata);
int im_tick__cb(int event, void *event_data, void *userdata);
int im_reload__cb(int event, void *event_data, void *userdata);
/* Remembers the broker's configuration file for reloads. */
int im_reload__init(struct im__plugin *p);

/* The ops with a MOSQ_EVT_CONTROL handler; anything else under
 * $CONTROL/im/v1/ is answered "unknown op" from the ACL check. */
bool im_control__op_known(const char *op);

/* Sends a reply to a request: on the v5 Response Topic (with its
 * Correlation Data) when the request had one, else on
 * "$CONTROL/im/v1/<op>/response", to the requesting client only.
 * payload is copied. */
void im_control__reply(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const void *payload, size_t len);

/* May user read (subscribe, sync, ack) timeline r? Own inbox, or a group
 * the user is a member of. */
bool im_acl__may_read(struct im__plugin *p, const struct im__route *r, const char *user);
bool im_acl__is_admin(const struct im__plugin *p, const char *user);

/* Packs msg and replies with it (as im_control__reply). */
void im_control__reply_msg(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const ProtobufCMessage *msg);

/* Replies with a bare im.v1.Response {status, reason}. */
void im_control__reply_status(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, Im__V1__Status status, const char *reason);

/* Sequenced message m of timeline tl: deliver it to the subscribers of
 * topic, as a frame or raw per the options. Never fails the caller: the
 * message is committed, so sync returns it anyway. */
void im_message__deliver(struct im__plugin *p, const char *topic, const char *tl, const struct im__msg *m);

/* Fills m as a system message (FLAG_SYSTEM, JSON body, time now) from
 * sender to timeline to. Strings and body are borrowed. */
void im_message__system(struct im__msg *m, const char *sender, const char *to, const char *body, size_t len);

/* Builds the frame of m for timeline tl into p->scratch. Returns its length
 * or 0 on failure. notify omits the body. */
size_t im_message__frame(struct im__plugin *p, const char *tl, const struct im__msg *m, bool notify);

#endif
