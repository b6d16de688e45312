/*
 * libmosquitto-im-client: the client algorithm of mosquitto-im
 * (docs/PROTOCOL.md, section 7) on libmosquitto, as a library.
 *
 * An application creates one client per device (a device is its MQTT
 * client id), gives it callbacks, and runs its loop. The client then:
 *
 *  - delivers every message of the user's timelines (the inbox u/<user>
 *    and the groups the user is in) once, in seq order per timeline,
 *    across reconnects, broker restarts and restarts of the application
 *    (sync before live, gaps held and filled by sync, duplicates dropped);
 *  - stores every message sent exactly once: each gets a cmid, is kept
 *    (and persisted) until its Receipt comes, and is sent again with the
 *    same cmid after every reconnect and every restart;
 *  - acks what was delivered (or what the application says was read),
 *    reports read marks, typing, edits and recalls, membership news;
 *  - starts over when the server's history was replaced (a new store id).
 *
 * Threading: a client is not thread-safe. Every function of a client and
 * every callback runs in the thread that calls mim_loop() (callbacks are
 * called from inside mim_loop() and may call any function of the client
 * but mim_destroy()). Several clients may run in several threads.
 *
 * Strings and buffers handed to callbacks are valid during the call only.
 * Strings handed to the library are copied.
 *
 * Stability: the API and ABI of soname 1 only grow. Structures the
 * application fills (options, persistence) carry their size, set by their
 * _init function, so a newer library reads an older application's struct.
 * Structures the library hands out only gain fields at their end.
 */
#ifndef MOSQUITTO_IM_CLIENT_H
#define MOSQUITTO_IM_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOSQUITTO_IM_CLIENT_VERSION_MAJOR 1
#define MOSQUITTO_IM_CLIENT_VERSION_MINOR 1
#define MOSQUITTO_IM_CLIENT_VERSION_PATCH 0
/* 10000 * major + 100 * minor + patch: #if MOSQUITTO_IM_CLIENT_VERSION >= 10100 */
#define MOSQUITTO_IM_CLIENT_VERSION \
	(MOSQUITTO_IM_CLIENT_VERSION_MAJOR * 10000 + MOSQUITTO_IM_CLIENT_VERSION_MINOR * 100 \
	 + MOSQUITTO_IM_CLIENT_VERSION_PATCH)

#if defined(MIM_BUILDING_LIBRARY) && defined(__GNUC__)
#define MIM_EXPORT __attribute__((visibility("default")))
#else
#define MIM_EXPORT
#endif

/* The library's version at run time (any pointer may be NULL); returns
 * MOSQUITTO_IM_CLIENT_VERSION of the library that is loaded. */
MIM_EXPORT int mim_version(int *major, int *minor, int *patch);

/* ---- results ---- */

/* A result: the plugin's status (PROTOCOL.md section 6: 0 and 400..500),
 * or one of the library's (negative). */
enum mim_result {
	MIM_OK = 0,
	MIM_BAD_REQUEST = 400,
	MIM_UNAUTHENTICATED = 401,
	MIM_FORBIDDEN = 403,
	MIM_NOT_FOUND = 404,
	MIM_CONFLICT = 409,
	MIM_TOO_LARGE = 413,
	MIM_TOO_MANY = 429,
	MIM_INTERNAL = 500,
	MIM_ERR_INVAL = -1,          /* a bad argument: not a timeline, an invalid name, ... */
	MIM_ERR_NOMEM = -2,
	MIM_ERR_NOT_CONNECTED = -3,  /* a request while offline (sends never: they wait) */
	MIM_ERR_CONN_LOST = -4,      /* the connection dropped before the reply: ask again */
	MIM_ERR_TIMEOUT = -5,        /* no reply within request_timeout_ms: is the plugin loaded? */
	MIM_ERR_BROKER = -6,         /* the broker refused the publish (mqtt_reason: 0x87, 0x97, ...) */
	MIM_ERR_STORE = -7,          /* the persistence hook failed (load or save) */
	MIM_ERR_CLOSED = -8,         /* the client was destroyed before the answer */
	MIM_ERR_LOGIN = -9,          /* the broker refused the connection (mqtt_reason) */
	MIM_ERR_CONNECT = -10,       /* cannot reach the broker (errno) */
	MIM_ERR_FRAME = -11,         /* a payload that is not a frame or reply this library reads */
};

/* A short text for a result ("forbidden", "not connected", ...). */
MIM_EXPORT const char *mim_strerror(int result);

/* ---- what the client reports ---- */

enum mim_flag {
	MIM_FLAG_SYSTEM = 1,      /* written by the plugin (group changes: JSON body) */
	MIM_FLAG_COMPRESSED = 2,  /* (never seen by the application: bodies are inflated) */
	MIM_FLAG_EDIT = 4,        /* this message replaces the body of ref_seq */
	MIM_FLAG_RECALL = 8,      /* this message recalls ref_seq */
	MIM_FLAG_EDITED = 16,     /* this message was edited: its body is the latest */
	MIM_FLAG_RECALLED = 32,   /* this message was recalled: no body */
};

/* A message (a frame: PROTOCOL.md section 4). Absent strings are NULL;
 * body is the body as sent (inflated), len its length. */
struct mim_message {
	const char *timeline;     /* where it is stored: u/<me> or g/<group> */
	uint64_t seq;
	const char *sender;
	int64_t ts_ms;
	const char *cmid;
	const char *to;           /* the timeline the sender addressed: in my copy, the peer */
	const char *content_type;
	uint32_t flags;           /* enum mim_flag */
	uint64_t ref_seq;         /* edits and recalls: the seq they change, in `timeline` */
	uint64_t peer_seq;        /* direct messages: the seq in the other inbox */
	int64_t expires_ms;
	uint64_t store_id;
	bool outgoing;            /* sent by this user (from any device) */
	bool body_omitted;        /* notify mode (history only: the client syncs bodies) */
	uint32_t body_len;        /* the stored body's length (notify mode: the body not sent) */
	const uint8_t *body;
	size_t len;
};

/* The answer to a send (PROTOCOL.md 3.1). status MIM_OK: stored, at seq in
 * timeline (own_seq: my copy, direct messages); duplicate: a re-send of a
 * message stored before (the original's seq). Otherwise nothing was stored:
 * a plugin status with reason, or MIM_ERR_BROKER with mqtt_reason. */
struct mim_receipt {
	int status;
	const char *reason;
	const char *cmid;
	const char *timeline;
	uint64_t seq;
	uint64_t own_seq;
	int64_t ts_ms;
	bool duplicate;
	uint64_t store_id;
	int mqtt_reason;
};

/* user has read timeline up to seq (PROTOCOL.md 11.3). In a group the seq
 * is the group's; for a direct conversation the timeline is the reader's
 * inbox u/<reader> and the seq counts there: my copy c is read when
 * c.peer_seq <= seq. ts_ms 0: learned on connect, not live. */
struct mim_read {
	const char *timeline;
	const char *user;
	uint64_t seq;
	int64_t ts_ms;
};

/* user is typing (or stopped) in timeline: u/<typist> or g/<group>. A
 * typing state without news for 6 s is over. */
struct mim_typing {
	const char *timeline;
	const char *user;
	bool typing;
	int64_t ts_ms;
};

struct mim_conversation {
	const char *timeline;     /* where I send: u/<peer>, g/<group> */
	uint64_t last_seq;
	int64_t last_ts_ms;
	const char *last_sender;
	uint32_t last_flags;
	const char *last_preview; /* NULL: none */
	uint64_t unread;
	uint64_t peer_read_seq;
};

struct mim_group_info {
	const char *name;
	uint64_t head_seq;
	uint64_t cursor;
	uint64_t unread;
};

/* The reply to a request. status MIM_OK or why not (reason in words);
 * only the fields of the request's kind are filled. */
struct mim_reply {
	int status;
	const char *reason;
	const char *op;                    /* "group", "conversations", "reads", "typing", "sync" */
	uint64_t store_id;
	/* conversations */
	const struct mim_conversation *conversations;
	size_t n_conversations;
	bool has_more;                     /* also sync (mim_history) */
	/* group: create/add/remove/leave/info/list */
	const char *group;
	const char *owner;
	const char *const *members;
	size_t n_members;
	uint64_t head_seq;                 /* also reads, sync */
	uint64_t seq;                      /* the change's system message in the group */
	const struct mim_group_info *groups;
	size_t n_groups;
	/* reads */
	const char *timeline;              /* also sync */
	const struct mim_read *marks;
	size_t n_marks;
	/* sync (mim_history) */
	const struct mim_message *messages;
	size_t n_messages;
	uint64_t first_seq;
};

enum mim_state {
	MIM_STATE_NEW = 0,
	MIM_STATE_CONNECTING,
	MIM_STATE_SYNCING,   /* connected, catching up */
	MIM_STATE_ONLINE,    /* connected and caught up: live delivery is trusted */
	MIM_STATE_OFFLINE,   /* lost the connection; reconnecting */
};

typedef void (*mim_receipt_fn)(void *ud, const struct mim_receipt *r);
typedef void (*mim_reply_fn)(void *ud, const struct mim_reply *r);

/* Callbacks, all optional, all given the options' `userdata`. */
struct mim_callbacks {
	/* A message, once, in seq order per timeline (edits and recalls go to
	 * on_edit and on_recall instead, in the same order). */
	void (*on_message)(void *ud, const struct mim_message *m);
	/* An edit (its body is the new body of edit->ref_seq); orig is the
	 * original as the client holds it, already changed, or NULL when it is
	 * older than what the client keeps (options.history). */
	void (*on_edit)(void *ud, const struct mim_message *edit, const struct mim_message *orig);
	/* A recall of recall->ref_seq; orig as for on_edit (its body now empty). */
	void (*on_recall)(void *ud, const struct mim_message *recall, const struct mim_message *orig);
	/* A read mark moved: each (timeline, user) reported only when it grows. */
	void (*on_read)(void *ud, const struct mim_read *r);
	void (*on_typing)(void *ud, const struct mim_typing *t);
	/* The user joined (member true) or left a group; the client already
	 * follows it (syncs it from seq 1) or dropped it. seq: the change's
	 * system message, 0 when learned from the group list. */
	void (*on_membership)(void *ud, const char *group, bool member, uint64_t seq);
	/* The server's history was replaced (store id old -> new): every
	 * timeline is delivered again from seq 1; forget what was shown. */
	void (*on_reset)(void *ud, uint64_t old_id, uint64_t new_id);
	/* Seqs first..last of timeline were removed by retention before this
	 * device read them: gone, not lost. */
	void (*on_gap)(void *ud, const char *timeline, uint64_t first, uint64_t last);
	/* The answer to a send that has no callback of its own (sent by an
	 * earlier run, or mim_send(..., NULL, NULL)). */
	void (*on_receipt)(void *ud, const struct mim_receipt *r);
	void (*on_state)(void *ud, enum mim_state s);
	/* Something went wrong that no request is waiting for: a refused login
	 * (MIM_ERR_LOGIN), a sync refused, a failed save, an unreadable frame. */
	void (*on_error)(void *ud, int result, const char *what);
};

/* ---- persistence ---- */

/* A message sent and not yet answered by a Receipt. */
struct mim_pending {
	const char *cmid;
	const char *timeline;      /* where it was sent: u/<user>, g/<group> */
	int kind;                  /* 0 a message, 1 an edit, 2 a recall */
	uint64_t ref_seq;          /* edit, recall */
	const char *content_type;  /* NULL: none */
	int64_t expiry_s;          /* im-expiry; -1: none */
	const uint8_t *body;
	size_t len;
};

struct mim_cursor {
	const char *timeline;
	uint64_t last;             /* the highest seq delivered */
};

/* What a device keeps between runs. */
struct mim_saved {
	const char *client_id;     /* NULL: the application names the device */
	uint64_t store_id;         /* the store the seqs count in; 0: not known */
	const struct mim_cursor *cursors;
	size_t n_cursors;
	const struct mim_pending *pending; /* in send order */
	size_t n_pending;
};

struct mim_loader;  /* handed to load(): add what was kept with the functions below */
MIM_EXPORT int mim_loader_client_id(struct mim_loader *l, const char *client_id);
MIM_EXPORT int mim_loader_store_id(struct mim_loader *l, uint64_t store_id);
MIM_EXPORT int mim_loader_cursor(struct mim_loader *l, const char *timeline, uint64_t last);
MIM_EXPORT int mim_loader_pending(struct mim_loader *l, const struct mim_pending *p);

/* Where a device keeps its state. load() runs once, in mim_new(); save()
 * gets the whole state and MUST replace the saved one atomically (the old
 * or the new, never a mix), and MUST NOT call the client. Both return 0 or
 * a negative mim_result. save() runs when a message is sent (before
 * mim_send returns), when a Receipt came, and for delivered seqs at most
 * every save_interval_ms; and in mim_destroy(). close() (optional) runs in
 * mim_destroy(). */
struct mim_persist {
	size_t size;               /* sizeof(struct mim_persist): mim_persist_init sets it */
	void *ctx;
	int (*load)(void *ctx, struct mim_loader *l);
	int (*save)(void *ctx, const struct mim_saved *s);
	void (*close)(void *ctx);
};

MIM_EXPORT void mim_persist_init(struct mim_persist *p);

/* The default: a small text file at path, replaced atomically (written to
 * path.tmp, fsync'ed if do_fsync, renamed over path). Lines: "<timeline>
 * <last>", "client <id>", "send ..." and "store <16 hex digits>" last.
 * Lines it does not know are dropped; cursors of timelines the client does
 * not follow are kept. Fills *p (close() frees it). */
MIM_EXPORT int mim_persist_file(struct mim_persist *p, const char *path, bool do_fsync);

/* ---- the client ---- */

struct mim_options {
	size_t size;               /* sizeof(struct mim_options): mim_options_init sets it */
	const char *host;          /* default 127.0.0.1 */
	int port;                  /* default 1883 */
	const char *user;          /* required: the MQTT username */
	const char *password;
	const char *client_id;     /* default: the persisted one, else "<user>-c-<random>" (persisted) */
	const char *prefix;        /* default "im" */
	const char *cafile;        /* TLS with this CA file */
	int keepalive;             /* seconds, default 30 */
	const char *state_path;    /* the default file persistence (mim_persist_file), if persist is NULL */
	const struct mim_persist *persist;  /* NULL and no state_path: memory only (a new device each run) */
	const char *const *groups; /* NULL-terminated group names to follow; NULL: see follow_groups */
	bool follow_groups;        /* mim_options_init: true: follow every group the user is in (the
	                              group list on connect, membership news); false: only `groups` */
	bool auto_ack;             /* mim_options_init: true: ack what was delivered; false: mim_ack */
	int ack_interval_ms;       /* default 1000: at most this long between a delivery and its ack */
	int request_timeout_ms;    /* default 30000 */
	uint32_t sync_limit;       /* frames per sync batch, default 500 */
	int history;               /* messages per timeline kept for edits/recalls, default 200 */
	int save_interval_ms;      /* cursors saved at most this often, default 200; 0: every delivery */
	uint32_t session_expiry;   /* seconds, default 7 days */
	int reconnect_min_ms;      /* default 250 */
	int reconnect_max_ms;      /* default 5000 */
	bool read_marks_on_connect;/* mim_options_init: true (if on_read is set): ask the marks
	                              that moved while away (conversation list, each group's reads) */
	int verbose;               /* log what the algorithm does on stderr */
	struct mim_callbacks cb;
	void *userdata;
	/* Since 1.1. true: a client for sends and requests only (a one-shot
	 * tool, a bot that only writes): it follows no timeline (no
	 * subscription, no sync, no group list, no read marks), and its MQTT
	 * session ends with the connection. Sends keep their promise (same
	 * cmid after a reconnect, the Receipt). */
	bool requests_only;
};

MIM_EXPORT void mim_options_init(struct mim_options *o);

struct mim_client;

/* Creates the client and loads its persisted state (no network yet).
 * NULL on bad options, out of memory or a failed load (*result says). */
MIM_EXPORT struct mim_client *mim_new(const struct mim_options *o, int *result);

/* Starts connecting. MIM_OK, or MIM_ERR_CONNECT when the broker cannot be
 * reached now (errno set); the client keeps trying in mim_loop either way. */
MIM_EXPORT int mim_connect(struct mim_client *c);

/* Runs the network and the timers for up to timeout_ms (callbacks are
 * called from here). MIM_OK, or MIM_ERR_LOGIN when the broker refused the
 * login (the client then stops trying). */
MIM_EXPORT int mim_loop(struct mim_client *c, int timeout_ms);

/* mim_loop until mim_stop() (from a callback or a signal handler). */
MIM_EXPORT int mim_loop_forever(struct mim_client *c);
MIM_EXPORT void mim_stop(struct mim_client *c);

/* Sends the acks due, disconnects and saves; pending sends stay saved and
 * go out on the next run. Their callbacks and those of requests waiting
 * are called with MIM_ERR_CLOSED. */
MIM_EXPORT void mim_destroy(struct mim_client *c);

/* The socket to poll for reading (-1 while not connected), for an
 * application that waits on more than the client. */
MIM_EXPORT int mim_socket(const struct mim_client *c);

/* ---- sending ---- */

struct mim_send_options {
	const char *content_type;  /* NULL: none */
	const char *cmid;          /* NULL: a new UUID; your own id makes a re-run store nothing twice */
	int64_t expiry_s;          /* > 0: im-expiry */
};

/* Queues a message to timeline (u/<user>, g/<group>, or a bare user name)
 * and returns at once, online or not. It is saved before this returns and
 * sent (again, with the same cmid, after every reconnect and restart) until
 * its Receipt, which goes to cb (or callbacks.on_receipt). cmid_out (if
 * not NULL, at least 129 bytes) gets its cmid. */
MIM_EXPORT int mim_send(struct mim_client *c, const char *timeline, const void *body, size_t len,
		const struct mim_send_options *o, mim_receipt_fn cb, void *ud, char *cmid_out);

/* Replaces the body of my message seq of timeline (its seq in the timeline
 * it was sent to: Receipt.seq), or recalls it; answered by a Receipt. */
MIM_EXPORT int mim_edit(struct mim_client *c, const char *timeline, uint64_t seq, const void *body,
		size_t len, mim_receipt_fn cb, void *ud);
MIM_EXPORT int mim_recall(struct mim_client *c, const char *timeline, uint64_t seq, mim_receipt_fn cb, void *ud);

/* Messages without a Receipt yet. */
MIM_EXPORT size_t mim_pending_count(const struct mim_client *c);

/* ---- reading ---- */

/* Marks timeline read up to seq (0: all delivered): this device's cursor
 * and the user's read mark (with auto_ack false; auto_ack does it itself). */
MIM_EXPORT int mim_ack(struct mim_client *c, const char *timeline, uint64_t seq);

/* The last seq delivered on a timeline, 0 if none. */
MIM_EXPORT uint64_t mim_last(const struct mim_client *c, const char *timeline);
/* The highest read mark reported for (timeline, user), 0 if none. */
MIM_EXPORT uint64_t mim_read_mark(const struct mim_client *c, const char *timeline, const char *user);
MIM_EXPORT uint64_t mim_store_id(const struct mim_client *c);
MIM_EXPORT const char *mim_client_id(const struct mim_client *c);
MIM_EXPORT enum mim_state mim_get_state(const struct mim_client *c);
/* Connected, every followed timeline caught up, nothing held: true when
 * the state is MIM_STATE_ONLINE. */
MIM_EXPORT bool mim_caught_up(const struct mim_client *c);
/* The timelines followed; index from 0, NULL past the end. */
MIM_EXPORT const char *mim_timeline(const struct mim_client *c, size_t i);

/* ---- requests: answered once, to cb, from mim_loop (MIM_ERR_NOT_CONNECTED
 * at once while offline) ---- */

MIM_EXPORT int mim_typing(struct mim_client *c, const char *timeline, bool typing, mim_reply_fn cb, void *ud);
/* The conversation list, latest first (limit 0: 50; the next page: the
 * last entry's last_ts_ms and timeline, else 0 and NULL). */
MIM_EXPORT int mim_conversations(struct mim_client *c, uint32_t limit, int64_t before_ts_ms,
		const char *before_timeline, mim_reply_fn cb, void *ud);
/* The read marks of a timeline as they are (reported to on_read as well). */
MIM_EXPORT int mim_reads(struct mim_client *c, const char *timeline, mim_reply_fn cb, void *ud);
/* op: "create", "add", "remove", "leave", "info" or "list". The client
 * follows the change without waiting for the membership news. */
MIM_EXPORT int mim_group(struct mim_client *c, const char *op, const char *group, const char *const *members,
		size_t n_members, mim_reply_fn cb, void *ud);
/* A page of a timeline's messages after after_seq (older history, a view):
 * changes nothing the client keeps. reply->messages, has_more. */
MIM_EXPORT int mim_history(struct mim_client *c, const char *timeline, uint64_t after_seq, uint32_t limit,
		mim_reply_fn cb, void *ud);

/* ---- decoding payloads (tools such as imcat) ---- */

/* A frame (a message, or an event: seq 0) decoded; owns its memory.
 * msg.flags are the frame's as sent: MIM_FLAG_COMPRESSED says the body
 * came deflated (msg.body is inflated, or NULL with not_inflated when it
 * does not inflate: wire_body_len bytes). */
struct mim_frame {
	struct mim_message msg;
	int event_kind;            /* 0 none, 1 read, 2 typing, 3 membership */
	const char *event_user;
	const char *event_timeline;
	uint64_t event_seq;
	bool event_typing, event_has_typing, event_member;
	int64_t event_ts_ms;
	bool has_event_seq;
	bool not_inflated;
	size_t wire_body_len;
};
/* NULL if buf is not a frame of a version this library reads. */
MIM_EXPORT struct mim_frame *mim_frame_parse(const void *buf, size_t len);
MIM_EXPORT void mim_frame_free(struct mim_frame *f);

#ifdef __cplusplus
}
#endif

#endif
