/*
 * mosquitto-im: private header of the plugin.
 *
 * Two threads run plugin code, and this header is split along that line:
 *
 *   broker thread [B]  every broker callback: checks, the journal append
 *                      (the acknowledgement point), and the completions
 *                      that publish frames and replies. It alone calls the
 *                      broker's API.
 *   store worker  [W]  worker.c and everything in store.h: the store, in
 *                      batches; it never calls the broker's API (not even
 *                      to log or allocate: see im_log and "Memory").
 *
 * Jobs go B -> W (struct im__job), completions W -> B (struct im__done),
 * each through one mutex-protected FIFO. Functions not marked run on B.
 *
 * Memory: the plugin allocates with libc (malloc/free), because most of
 * what it allocates crosses to the worker, which must not call
 * mosquitto_malloc (the broker's allocator is not thread-safe). Nothing
 * the plugin hands the broker is the broker's to free: payloads go through
 * mosquitto_broker_publish_copy, properties are built by the broker's own
 * mosquitto_property_add_*.
 *
 * Cross-file functions are named im_<module>__<verb>_<noun>; broker
 * callbacks end in _cb. Ownership is stated at each declaration.
 */
#ifndef IM_H
#define IM_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "im.pb-c.h"

struct mosquitto;
struct mosquitto_opt;
#include <mosquitto.h>

/* =========================================================================
 * Limits and constants
 * ========================================================================= */

#define IM_NAME_MAX 64          /* user and group names, bytes of UTF-8 */
#define IM_TL_MAX (2 + IM_NAME_MAX) /* "u/<name>" */
#define IM_TOPIC_MAX (64 + 1 + IM_TL_MAX) /* "<prefix>/u/<name>" */
#define IM_CMID_MAX 128         /* client message id, bytes */
#define IM_CTYPE_MAX 256        /* content type, bytes */
#define IM_CLIENT_ID_MAX 65535
#define IM_FRAME_FIXED 5        /* 'I' 'M' version len_hi len_lo */
#define IM_FRAME_VERSION 1
#define IM_EXPIRY_MAX (10LL * 365 * 86400) /* im-expiry, seconds: ten years */
#define IM_PREVIEW_MAX 64       /* bytes of a message's text in the conversation list */
/* Where a publish that must reach no one is retargeted (duplicates, and
 * every original publish once the plugin delivered its frame itself).
 * Short enough to be written over the shortest possible IM topic
 * ("x/u/y"); '$' so that '#' never matches it; the ACL refuses to let
 * anyone subscribe to or read it. */
#define IM_SINK_TOPIC "$IMD"
#define IM_CONTROL_PREFIX "$CONTROL/im/v1/"

enum im_payload_mode { IM_PAYLOAD_FRAME = 0, IM_PAYLOAD_RAW = 1 };
enum im_delivery { IM_DELIVERY_FULL = 0, IM_DELIVERY_NOTIFY = 1 };
enum im_nonim { IM_NONIM_DEFER = 0, IM_NONIM_ALLOW = 1 };
enum im_presence { IM_PRESENCE_OFF = 0, IM_PRESENCE_CONTACTS = 1, IM_PRESENCE_ALL = 2 };
enum im_store_kind { IM_STORE_SQLITE = 0, IM_STORE_PG = 1 };

/* Row callbacks (store ranges, group lists) answer one of these: never a
 * value that could be mistaken for an error code, or an error for "stop". */
enum im_row { IM_ROW_NEXT = 0, IM_ROW_STOP = 1, IM_ROW_ERROR = 2 };

/* =========================================================================
 * config.c — plugin_opt_* parsing
 * ========================================================================= */

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
	uint32_t metrics_interval;  /* seconds, 0 = no metrics */
	uint32_t max_devices;       /* per user, 0 = no limit */
	uint32_t compress_min;      /* bodies of at least this many bytes are deflated; 0 = never */
	int presence;               /* enum im_presence */
	uint32_t max_group_members;
	uint32_t trim_batch;        /* rows deleted per retention step at most */
	uint32_t user_msg_rate;     /* messages per second per user, 0 = no limit */
	uint32_t new_timelines_per_min; /* new timelines a user may open per minute, 0 = no limit */
	uint32_t typing_rate;       /* typing signals per second per user, 0 = no limit */
	uint32_t batch_max;         /* jobs per store transaction at most */
	uint32_t batch_gather_us;   /* under a steady stream, a batch waits this long for company; 0 = never */
	uint64_t backlog_max;       /* journal bytes not yet stored before publishes are refused */
	uint32_t journal_rotate_seconds; /* a non-empty segment older than this is closed (so it can be cut) */
	char *nats_servers;         /* owned; cluster mode when set */
	bool client_id_guard;       /* token login: a client id stays with its first user */
	int store;                  /* enum im_store_kind */
	char *pg_conninfo;          /* owned; libpq conninfo or URI (store postgresql); may hold a password: never logged */
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

/* =========================================================================
 * auth.c — token login, client id guard
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
 * route.c — topic and name rules [any thread]
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

/* True if buf (len bytes) is valid UTF-8 (no overlong forms or surrogates). */
bool im_route__utf8_valid(const void *buf, size_t len);

/* Parses "<prefix>/e/u/<name>" or "<prefix>/e/g/<name>" (a timeline's event
 * topic) into r. MOSQ_ERR_SUCCESS or MOSQ_ERR_INVAL. */
int im_route__parse_event_topic(const struct im__config *cfg, const char *topic, struct im__route *r);

/* True if a length-delimited field of a flat request payload contains a
 * NUL byte (a string protobuf-c would cut short). */
bool im_route__has_nul(const void *payload, size_t len);

/* Writes "u/<name>" into out (cap >= IM_TL_MAX + 1). Returns length, 0 if
 * it does not fit. */
size_t im_route__timeline(const struct im__route *r, char *out, size_t cap);

/* =========================================================================
 * siphash.c, frame.c — the frame codec (shared with examples/ and tests/)
 * ========================================================================= */

/* SipHash-2-4 of a || b under key. */
uint64_t im_siphash(const uint8_t key[16], const void *a, size_t alen, const void *b, size_t blen);

/* Size of the frame for hdr and a body of body_len bytes, or 0 if the
 * encoded header does not fit the 16-bit length field. */
size_t im_frame__size(const Im__V1__Header *hdr, size_t body_len);

/* Writes the frame into out (cap bytes). Returns the frame length, or 0 if
 * cap is too small or the header too large. body may be NULL if body_len
 * is 0. */
size_t im_frame__encode(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len);

/* The same with the plugin's authentication tag (Header field 13) keyed
 * with key: what the plugin sends. im_frame__verify is true only for a
 * frame sealed with key and unchanged since. */
size_t im_frame__sealed_size(const Im__V1__Header *hdr, size_t body_len);
size_t im_frame__encode_sealed(uint8_t *out, size_t cap, const Im__V1__Header *hdr,
		const void *body, size_t body_len, const uint8_t key[16]);
bool im_frame__verify(const uint8_t *buf, size_t len, const uint8_t key[16]);

/* Reads the timeline (field 1, pointing into buf) and seq of a frame's
 * header without unpacking it. False if buf is not a frame with a
 * timeline. */
bool im_frame__peek(const uint8_t *buf, size_t len, const char **tl, size_t *tl_len, uint64_t *seq);

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

/* =========================================================================
 * util.c — buffers, maps, time, JSON strings, logging [any thread]
 * ========================================================================= */

/* A growable byte buffer, reused across calls (no per-message malloc). */
struct im__buf {
	uint8_t *data;
	size_t cap;
};

/* Grows b to at least n bytes. MOSQ_ERR_SUCCESS or MOSQ_ERR_NOMEM. */
int im_buf__reserve(struct im__buf *b, size_t n);
void im_buf__free(struct im__buf *b);

/* Allocation hooks: libc by default; unit tests swap in a failing
 * allocator (failmalloc) to prove every path survives NULL. */
extern void *(*im_malloc)(size_t n);
extern void *(*im_calloc)(size_t n, size_t size);
extern void *(*im_realloc)(void *p, size_t n);
void im_free(void *p);
char *im_strdup(const char *s);
char *im_strndup(const char *s, size_t n);

/* A token bucket: rate per second, burst tokens at most. */
struct im__bucket {
	double tokens;
	int64_t last_ms;
};
/* Refills b for now and takes cost tokens if there are enough. A new
 * bucket (last_ms 0) starts full. */
bool im_bucket__take(struct im__bucket *b, double rate, double burst, double cost, int64_t now_ms);

/* Milliseconds since the epoch; monotonic microseconds. */
int64_t im_now_ms(void);
int64_t im_mono_us(void);

/* Appends s as the body of a JSON string (quotes, backslashes and control
 * characters escaped) to out[*len..cap). False if it does not fit. */
bool im_json__str(char *out, size_t cap, size_t *len, const char *s);

/* Logs from any thread: directly on the broker thread, else handed to it
 * as a completion (the broker's log function is not thread-safe). */
void im_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Where lines logged off the broker thread go (the worker's completion
 * queue); false from fn means "log directly". */
void im_log__sink(bool (*fn)(int level, const char *text));

/* =========================================================================
 * map.c — string-keyed hash map [any thread, one owner each]
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
 * crypt.c — encryption at rest (AES-256-GCM) [W, loaded on B]
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
 * record.c — a message as journaled [any thread]
 * ========================================================================= */

enum im_rec_kind { IM_REC_MESSAGE = 0, IM_REC_SYSTEM = 1 };
enum im_rec_op { IM_REC_PLAIN = 0, IM_REC_EDIT = 1, IM_REC_RECALL = 2 };

/* A message as it enters the store. Strings point into the record buffer
 * (decode) or the caller's memory (encode); "" for none. */
struct im__rec {
	uint8_t kind;           /* enum im_rec_kind */
	int64_t ts_ms;          /* server time at the acknowledgement */
	int64_t expires_ms;     /* 0 = never */
	uint16_t key_id;        /* 0: body as sent; else sealed (AAD: "" and the LSN) */
	uint8_t op;             /* enum im_rec_op */
	uint64_t ref_seq;       /* IM_REC_EDIT / IM_REC_RECALL: the seq in `to` it changes */
	const char *sender;
	const char *to;         /* "u/<user>" or "g/<group>" */
	const char *own;        /* the sender's inbox for its copy, "" for none */
	const char *cmid;
	const char *ctype;
	const void *body;
	uint32_t body_len;
};

/* Bytes im_rec__encode writes for r. */
size_t im_rec__size(const struct im__rec *r);
/* Writes r into out (exactly im_rec__size(r) bytes). */
void im_rec__encode(uint8_t *out, const struct im__rec *r);
/* Reads a record; false if buf does not hold exactly one valid record. */
bool im_rec__decode(const uint8_t *buf, size_t len, struct im__rec *r);

/* =========================================================================
 * journal.c — the acknowledgement point
 * ========================================================================= */

/* An append-only log of message records in segment files
 * <dir>/<first lsn, 16 hex digits>.log. On disk each record is
 *   u32 length | u32 crc32(lsn, payload) | u64 lsn | payload
 * little-endian. LSNs are consecutive across segments. */
struct im__journal {
	char *dir;
	int fd;                 /* the active (last) segment */
	int dir_fd;
	uint64_t next_lsn;      /* [B] */
	uint64_t seg_bytes;     /* [B] size of the active segment */
	uint64_t seg_first;     /* [B] first LSN of the active segment */
	uint64_t rotate_bytes;
	int64_t seg_opened_ms;  /* [B] */
	int64_t rotate_age_ms;  /* 0 = only by size */
	bool fsync;             /* synchronous full: fdatasync before the ack */
	struct im__buf buf;     /* [B] header + payload of one write */
};

/* Called at open for every record after applied_lsn, in order. A non-zero
 * return stops the replay (and fails the open). */
typedef int (*im_journal__replay_fn)(void *ctx, uint64_t lsn, const uint8_t *payload, size_t len);

/* Opens (creating) dir, replays the records after applied_lsn through fn,
 * drops a torn record at the very end of the last segment (a write cut
 * short by a crash or a full disk: never acknowledged), and opens a segment
 * for appending. *gap is set if records between applied_lsn and the oldest
 * segment are missing (the store was rolled back further than the journal
 * reaches). Returns MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN with a log line
 * (unreadable dir, a damaged record before the end). */
int im_journal__open(struct im__journal *j, const char *dir, bool fsync, uint64_t applied_lsn,
		im_journal__replay_fn fn, void *ctx, bool *gap);
/* [B] Appends one record with one write(2) (and fdatasync if fsync).
 * Returns its LSN in *lsn. On failure (disk full, I/O error) the segment is
 * cut back to where it was: nothing half-written stays. MOSQ_ERR_SUCCESS or
 * MOSQ_ERR_UNKNOWN (errno kept for the caller's log line). */
int im_journal__append(struct im__journal *j, const void *payload, size_t len, uint64_t *lsn);
/* [B] Starts a new segment if the active one holds records and is a minute
 * old (rotate_age_ms), so that the worker's cut removes stored records (and the plaintext
 * of a recalled message) within about a minute even on a quiet broker. */
void im_journal__rotate_idle(struct im__journal *j, int64_t now_ms);
/* [W] Deletes every segment whose records are all <= applied_lsn, except
 * the active one. */
void im_journal__cut(const char *dir, uint64_t applied_lsn);
void im_journal__close(struct im__journal *j);

/* =========================================================================
 * Jobs and completions: what crosses between the threads
 * ========================================================================= */

/* Where a reply goes: the requesting client, on the request's Response
 * Topic (with its Correlation Data) or else $CONTROL/im/v1/<op>/response. */
struct im__reply_to {
	char *client_id;        /* NULL: no reply wanted (a publish without Response Topic) */
	char *topic;            /* NULL: the op's response topic */
	void *corr;
	uint16_t corr_len;
	char op[32];
};

enum im_job_kind {
	IM_JOB_MSG,             /* a journaled record: data = record bytes */
	IM_JOB_SYNC,
	IM_JOB_ACK,
	IM_JOB_GROUP,
	IM_JOB_OPTIONS,         /* new run-time options and keys (reload) */
	IM_JOB_STATUS,          /* answer a bare Response (an unknown op), in order with the rest */
	IM_JOB_READS,           /* read marks of a conversation */
	IM_JOB_CONVS,           /* the conversation list */
	IM_JOB_REPAIR,          /* cluster: frames a broker missed, from the store */
	IM_JOB_FORGET,          /* cluster: a group changed elsewhere ("" = all: reload them) */
};

struct im__group_req {
	char op[8];
	char group[IM_NAME_MAX + 1];
	size_t n;
	char (*members)[IM_NAME_MAX + 1];   /* points into the job */
};

/* A unit of work for the worker, in one malloc() block: strings and data
 * live after the struct. Owned by whoever holds it; the worker frees it. */
struct im__job {
	struct im__job *next;
	enum im_job_kind kind;
	uint64_t lsn;           /* IM_JOB_MSG */
	int64_t queued_us;      /* when it was submitted (metrics: store/queue_us) */
	char user[IM_NAME_MAX + 1];
	struct im__reply_to to;
	union {
		struct {
			char timeline[IM_TL_MAX + 1];
			bool has_after;
			uint64_t after;
			uint32_t limit;
		} sync;
		struct {
			char timeline[IM_TL_MAX + 1];
			uint64_t seq;
		} ack;
		struct im__group_req group;
		struct im__config *options;     /* IM_JOB_OPTIONS: owned */
		struct {
			int status;
			char reason[64];
		} status;
		struct {
			char timeline[IM_TL_MAX + 1];
		} reads;
		struct {
			uint32_t limit;
			int64_t before_ts;
			bool has_before;
			char before_tl[IM_TL_MAX + 1];
		} convs;
		struct {
			char timeline[IM_TL_MAX + 1];
			uint64_t after;
			uint64_t upto;          /* 0 = the head */
			bool anchor;            /* only report the head: where live delivery starts */
		} repair;
		struct {
			char group[IM_NAME_MAX + 1];
		} forget;
	} u;
	size_t len;
	uint8_t *data;          /* IM_JOB_MSG: the record; points after the struct */
};

/* Builds a job with room for data_len bytes of data and the reply route
 * (client_id, topic and corr copied). NULL on allocation failure. */
struct im__job *im_job__new(enum im_job_kind kind, size_t data_len, const char *client_id,
		const char *op, const char *resp_topic, const void *corr, uint16_t corr_len);
void im_job__free(struct im__job *j);

enum im_done_kind {
	IM_DONE_FRAME,          /* publish a frame (or raw body) to topic */
	IM_DONE_REPLY,          /* publish payload to one client */
	IM_DONE_MEMBERS,        /* the broker thread's membership view changed */
	IM_DONE_WROTE,          /* sender wrote its first direct message to peer */
	IM_DONE_LOG,            /* a log line from the worker */
	IM_DONE_REPAIRED,       /* cluster: a repair of timeline reached seq (level 0 = ok) */
	IM_DONE_SUBSCRIBED,     /* cluster: this broker now hears timeline over NATS */
};

/* One completion, in one malloc() block. */
struct im__done {
	struct im__done *next;
	enum im_done_kind kind;
	/* FRAME: where, and what v5 subscribers see as properties */
	const char *topic;
	const char *timeline, *sender, *cmid, *ctype;
	uint64_t seq;
	uint32_t expiry_s;          /* v5 Message Expiry Interval, 0 = none */
	bool event;                 /* an event frame (<prefix>/e/...): no seq, QoS 0, no properties */
	bool repair;                /* read back for a cluster repair: not news, not shipped */
	bool remote;                /* came from another broker over NATS */
	bool anchor;                /* REPAIRED: the answer to an anchor (seq = the head) */
	/* REPLY */
	const char *client_id;
	const void *corr;
	uint16_t corr_len;
	bool sync_reply;            /* ends one of the client's sync requests */
	/* FRAME and REPLY */
	const void *payload;
	size_t len;
	/* MEMBERS: group, op ("create", "add", "remove", "leave"), users */
	const char *group, *op, *owner;
	const char **users;
	size_t n_users;
	/* WROTE: sender -> peer; LOG: level, text in payload */
	int level;
	int64_t ready_us;           /* when the worker handed it over (metrics: deliver/handoff_us) */
	_Alignas(8) char data[];    /* MEMBERS keeps its pointer array here */
};

/* =========================================================================
 * worker.c — the store worker thread
 * ========================================================================= */

struct im__plugin;

/* Opens the store, replays the journal into it, loads what the broker
 * thread needs (memberships, contacts) and starts the worker thread. On
 * failure everything is logged and closed. Runs on the init thread. */
int im_worker__start(struct im__plugin *p);
/* Stops the thread after it finished every queued job; closes the store
 * and the journal. Idempotent. */
void im_worker__stop(struct im__plugin *p);
/* Queues a job; the worker owns it from now on. */
void im_worker__submit(struct im__plugin *p, struct im__job *j);
/* Hands the queued completions to fn in order (fn owns each). Returns how
 * many. Cheap when there are none (one atomic load). */
size_t im_worker__drain(struct im__plugin *p, void (*fn)(struct im__plugin *, struct im__done *));
/* The broker thread ticked (it is awake and will drain soon). */
void im_worker__ticked(struct im__plugin *p);
/* Bytes of journaled records not yet stored. */
uint64_t im_worker__backlog(const struct im__plugin *p);
/* Waits until every job submitted so far is done (the inline mode, for a
 * broker that sends no ticks). */
void im_worker__wait_idle(struct im__plugin *p);

/* =========================================================================
 * wake.c — waking the broker thread from the worker
 * ========================================================================= */

/* [B, at init] Installs a no-op handler for a free real-time signal.
 * False if none is free: completions then wait for the next tick. */
bool im_wake__init(void);
/* [W] Interrupts the broker's epoll_wait (EINTR) so its loop runs the tick,
 * which drains completions. */
void im_wake__poke(void);
bool im_wake__on_broker_thread(void);
void im_wake__cleanup(void);

/* =========================================================================
 * policy.c — who may do what (the broker thread's view)
 * ========================================================================= */

/* The username of client if it may use IM topics (set, a valid name),
 * else NULL with *why set. The one place names are checked for every path. */
const char *im_policy__user(const struct mosquitto *client, const char **why);
bool im_policy__is_admin(const struct im__config *cfg, const char *user);
/* May user read (subscribe, sync, ack) timeline r? Own inbox, or a group
 * the user is a member of (the broker thread's membership view). */
bool im_policy__may_read(struct im__plugin *p, const struct im__route *r, const char *user);
bool im_policy__is_member(struct im__plugin *p, const char *group, size_t glen, const char *user);
/* Applies a membership change to the view (from a completion, or loaded
 * at start). */
void im_policy__members(struct im__plugin *p, const char *group, const char *op, const char *owner,
		const char *const *users, size_t n);
/* presence contacts: writer wrote a direct message to reader. */
void im_policy__wrote(struct im__plugin *p, const char *writer, const char *reader);
bool im_policy__has_written(struct im__plugin *p, const char *writer, size_t wlen, const char *reader);
void im_policy__free(struct im__plugin *p);

/* =========================================================================
 * deliver.c, reply.c — what the plugin says
 * ========================================================================= */

/* Runs one completion on the broker thread and frees it. */
void im_deliver__done(struct im__plugin *p, struct im__done *d);
/* Publishes one FRAME completion (does not free it). */
void im_deliver__frame(struct im__plugin *p, const struct im__done *d);
/* Drains every completion (the tick, or inline after a job). */
void im_deliver__drain(struct im__plugin *p);
/* Is this payload on an IM topic something the plugin sent? Frames carry
 * the plugin's tag; raw bodies and presence are matched against
 * fingerprints of what was published. */
bool im_deliver__is_ours(struct im__plugin *p, const char *topic, const struct im__route *r, bool event,
		const void *payload, uint32_t len);
/* Publishes presence retained on <prefix>/p/<user>, remembering it. */
void im_deliver__presence(struct im__plugin *p, const char *user, const char *json, size_t len);
bool im_deliver__presence_is_ours(struct im__plugin *p, const char *user, const void *payload, uint32_t len);
/* Rotates the fingerprints of raw deliveries (tick). */
void im_deliver__tick(struct im__plugin *p, int64_t now_ms);
void im_deliver__free(struct im__plugin *p);

/* Sends payload to the requesting client (as in struct im__reply_to). The
 * request's properties give Response Topic and Correlation Data. payload is
 * copied. */
void im_reply__send(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const void *payload, size_t len);
void im_reply__msg(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, const ProtobufCMessage *msg);
/* Replies with a bare im.v1.Response {status, reason}. */
void im_reply__status(const struct im__plugin *p, struct mosquitto *client, const char *op,
		const mosquitto_property *req_props, Im__V1__Status status, const char *reason);
/* Reads the reply route of a request (Response Topic if usable). The
 * strings are copied into the job by im_job__new. */
struct im__job *im_reply__job(struct mosquitto *client, enum im_job_kind kind, size_t data_len,
		const char *op, const mosquitto_property *req_props);

/* =========================================================================
 * metrics.c — $SYS/broker/im/...
 * ========================================================================= */

#define IM_HIST_BUCKETS 24      /* log2 µs: 1 µs .. 8 s */

/* Counters written by one thread each, read by the broker thread with
 * relaxed atomics (a metric may be one message behind; never torn). */
struct im__metrics {
	/* [B] */
	uint64_t refused, sync_requests, sync_limited, acks_requested, journal_errors, rate_limited;
	uint64_t journal_us_hist[IM_HIST_BUCKETS];
	/* [W] */
	uint64_t sequenced, duplicates, sync_frames, acks, group_changes;
	uint64_t store_errors, trimmed, batches, worker_refused;
	uint64_t commit_hist[IM_HIST_BUCKETS];  /* per batch, this interval */
	uint64_t queue_hist[IM_HIST_BUCKETS];   /* job waiting for the worker */
	uint64_t ship_hist[IM_HIST_BUCKETS];    /* per message: journal append to store commit */
	/* [B] */
	uint64_t handoff_hist[IM_HIST_BUCKETS]; /* completion waiting for the broker thread */
	uint64_t timelines_cached, groups_cached;
	/* cluster: [C] sent, [N] rejected, [B] the rest; dropped by any */
	uint64_t cluster_sent, cluster_received, cluster_rejected, cluster_dropped;
	uint64_t cluster_duplicates, cluster_gaps, cluster_repairs;
};

#define IM_STAT_ADD(field, n) __atomic_fetch_add(&(field), (uint64_t)(n), __ATOMIC_RELAXED)
#define IM_STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define IM_STAT_SET(field, v) __atomic_store_n(&(field), (uint64_t)(v), __ATOMIC_RELAXED)

void im_metrics__hist(uint64_t *hist, int64_t us);
/* Publishes every metric once (retained). */
void im_metrics__publish(struct im__plugin *p);

/* =========================================================================
 * plugin.c — shared plugin state
 * ========================================================================= */

struct im__worker;
struct im__fpset;

struct im__plugin {
	void *pid;                      /* mosquitto_plugin_id_t * */
	struct im__config cfg;          /* [B]; the worker has its own copy */
	struct im__crypt crypt;         /* loaded here, handed to the worker */
	struct im__journal journal;     /* [B] appends */
	struct im__worker *worker;
	uint64_t store_id;              /* set at start, then read-only */
	uint8_t frame_key[16];          /* set at start, then read-only */
	bool v21;                       /* the broker offers the 2.1 plugin API */
	bool ticks;                     /* a tick arrived: completions may wait for ticks */
	struct im__buf scratch;         /* [B] journal records are built here */
	ProtobufCAllocator pb_alloc;    /* protobuf-c through mosquitto_* */
	/* A client whose MOSQ_EVT_DISCONNECT just fired: the broker sends its
	 * will right after, and a will on an IM topic must be refused. Only
	 * meaningful until the next event. */
	const struct mosquitto *disconnecting;
	bool fallback_registered;       /* the non-IM "allow" ACL callback */
	bool auth_registered;           /* MOSQ_EVT_BASIC_AUTH (token login) */
	struct im__map clients;         /* client id -> struct im__client (rate, budgets, owner) */
	struct im__map users;           /* user -> struct im__user (rates) */
	struct im__map groups;          /* [B] group -> struct im__bgroup (membership view) */
	struct im__map wrote;           /* [B] "writer\nreader" -> (presence contacts) */
	struct im__fpset *raw_fps;      /* fingerprints of raw deliveries */
	struct im__map presence_fps;    /* user -> uint64_t * fingerprint of the retained presence */
	struct im__metrics metrics;
	char *config_file;              /* the broker's -c file, absolute; NULL if unknown */
	struct im__map devices;         /* client id -> device (presence.c) */
	struct im__map users_online;    /* user -> its devices */
	int64_t next_metrics_ms;
	int64_t last_backlog_log_ms;
	struct im__cluster *cluster;    /* cluster mode (nats_servers), else NULL */
};

/* Per client id. */
struct im__client {
	char owner[IM_NAME_MAX + 1];    /* the first user seen with this id ("" = none yet) */
	struct im__bucket sync_bucket;  /* sync_rate */
	struct im__bucket reply_bucket; /* reply_bytes_rate */
	uint32_t sync_inflight;         /* sync jobs queued, not answered */
};
/* The client's entry, created on first use; NULL if id is NULL or on
 * allocation failure. */
struct im__client *im_plugin__client(struct im__plugin *p, const char *id);

/* Per user (all its connections). */
struct im__user {
	struct im__bucket msg;          /* user_msg_rate */
	struct im__bucket typing;       /* typing_rate */
};
struct im__user *im_plugin__user(struct im__plugin *p, const char *user);

/* The frame key and store id are known once the worker opened the store. */

/* =========================================================================
 * presence.c — devices and presence
 * ========================================================================= */

/* client subscribed to an IM topic: it is an online device of its user
 * from now on (may disconnect the user's oldest device). */
void im_presence__seen(struct im__plugin *p, const struct mosquitto *client);
/* 2.1's MOSQ_EVT_SUBSCRIBE: an accepted subscription. */
int im_presence__subscribe_cb(int event, void *event_data, void *userdata);
/* client disconnected. */
void im_presence__gone(struct im__plugin *p, const struct mosquitto *client);
/* May reader see user's presence (user is len bytes, not terminated)? */
bool im_presence__may_read(struct im__plugin *p, const char *reader, const char *user, size_t len);
void im_presence__free(struct im__plugin *p);

/* =========================================================================
 * cluster.c, cluster_wire.c — many brokers, one set of timelines (NATS)
 * ========================================================================= */

enum { IM_CWIRE_FRAME = 1, IM_CWIRE_MEMBERS = 2 };
#define IM_CWIRE_SUBJECT_MAX (32 + 3 + 3 * IM_NAME_MAX + 1)

/* "<root>.<u|g>.<escaped name>" for timeline tl; 0 if it does not fit or
 * tl is not a timeline. */
size_t im_cwire__subject(char *out, size_t cap, const char *root, const char *tl);
/* Encodes into b (grown as needed), MAC'd with key for subject. Returns
 * the length, 0 on failure. */
size_t im_cwire__frame(struct im__buf *b, const uint8_t key[16], const char *subject, const struct im__done *d);
size_t im_cwire__members(struct im__buf *b, const uint8_t key[16], const char *subject, const char *group,
		const char *op, const char *owner, const char *const *users, size_t n);
/* A completion (FRAME with its topic under prefix, or MEMBERS) from a
 * message that verifies and is well-formed; NULL otherwise. */
struct im__done *im_cwire__decode(const uint8_t key[16], const char *subject, const void *data, size_t len,
		const char *prefix);

struct im__cluster;
/* [init] Before the worker starts (it loads the groups through the
 * hooks); nothing connects yet. MOSQ_ERR_INVAL on a bad server list. */
int im_cluster__init(struct im__plugin *p);
/* [init] After the store is open (its id names the subjects): connects in
 * the background. */
int im_cluster__start(struct im__plugin *p);
void im_cluster__stop(struct im__plugin *p);
/* [W] After a commit: the batch's new frames, events, membership changes,
 * under the store's id and frame key (also while the journal is replayed
 * at start, before the broker thread knows them). */
void im_cluster__ship(struct im__plugin *p, uint64_t store_id, const uint8_t key[16], const struct im__done *list);
/* [B] */
void im_cluster__event(struct im__plugin *p, const char *tl, const void *frame, size_t len);
void im_cluster__user(struct im__plugin *p, const char *user, bool online);
void im_cluster__member(struct im__plugin *p, const char *group, const char *user, bool joined);
/* A FRAME completion, local or remote: delivered in seq order per
 * timeline, gaps repaired. Takes d; false (d untouched) without a cluster. */
bool im_cluster__deliver(struct im__plugin *p, struct im__done *d);
void im_cluster__repaired(struct im__plugin *p, const char *tl, uint64_t reached, bool ok, bool anchor);
void im_cluster__tick(struct im__plugin *p, int64_t now_ms);
/* Gaps open or checks due: the tick should come soon. */
bool im_cluster__busy(const struct im__plugin *p);

/* =========================================================================
 * on_message.c — the publish path
 * ========================================================================= */

/* Journals a record the plugin itself writes (a system notice) and queues
 * it for the worker; rec's body may be replaced by its sealed form.
 * MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN (logged): the journal refused it or
 * the backlog is full; nothing was queued. */
int im_message__submit(struct im__plugin *p, struct im__rec *rec);

/* =========================================================================
 * Broker callbacks: on_acl.c, on_message.c, on_control.c, on_group.c,
 * on_tick.c, reload.c
 * ========================================================================= */

int im_acl__check_cb(int event, void *event_data, void *userdata);
int im_acl__fallback_cb(int event, void *event_data, void *userdata);
int im_acl__disconnect_cb(int event, void *event_data, void *userdata);
int im_message__cb(int event, void *event_data, void *userdata);
int im_control__sync_cb(int event, void *event_data, void *userdata);
int im_control__ack_cb(int event, void *event_data, void *userdata);
int im_control__group_cb(int event, void *event_data, void *userdata);
int im_control__typing_cb(int event, void *event_data, void *userdata);
int im_control__reads_cb(int event, void *event_data, void *userdata);
int im_control__conversations_cb(int event, void *event_data, void *userdata);
int im_tick__cb(int event, void *event_data, void *userdata);
int im_reload__cb(int event, void *event_data, void *userdata);
/* Remembers the broker's configuration file for reloads. */
int im_reload__init(struct im__plugin *p);

/* The ops with a MOSQ_EVT_CONTROL handler; anything else under
 * $CONTROL/im/v1/ is answered "unknown op" from the ACL check. */
bool im_control__op_known(const char *op);
/* After a job was queued from a callback: in the inline mode (a broker
 * that sends no ticks) wait for it and deliver its completions now. */
void im_tick__settle(struct im__plugin *p);

#endif
