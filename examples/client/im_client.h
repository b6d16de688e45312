/*
 * im_client: the reference implementation of the client algorithm of
 * docs/PROTOCOL.md, section 7, on libmosquitto. Copy it into your app.
 *
 * One client follows a set of timelines (its inbox u/<user>, and groups).
 * For each it keeps `last`, the highest seq delivered, in a state file, so
 * a restart resumes where it stopped. Frames from live delivery and from
 * sync batches go through one function that delivers seq == last+1, drops
 * seq <= last and holds seq > last+1 until a sync fills the gap.
 *
 * Seqs are only comparable within one store id (Header.store_id and the
 * replies' store_id): the state file keeps the id with `last`, and when the
 * server answers with another one (its database was replaced or rolled
 * back) the client forgets every `last`, tells the application (on_reset)
 * and syncs every timeline from 0.
 *
 * Threading: everything runs in the thread that calls im_client_run.
 */
#ifndef IM_CLIENT_H
#define IM_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"

struct im_client;

/* Called once per message, in seq order per timeline, never twice for one
 * (timeline, seq) of one store id across restarts that share the state
 * file (after on_reset, seqs start again at 1). body is only valid during
 * the call.
 *
 * Edits and recalls are messages of their own, with their own seq, so they
 * come in order like any other: hdr->flags has FLAG_EDIT (body: the new
 * body of message hdr->ref_seq of the same timeline) or FLAG_RECALL (no
 * body; message hdr->ref_seq is withdrawn: stop showing its body). A
 * message first delivered after it was changed already says so: FLAG_EDITED
 * (its body is the latest) or FLAG_RECALLED (no body); the edit or recall
 * follows it all the same, and applying it again changes nothing. */
typedef void (*im_client_deliver_fn)(void *ud, const Im__V1__Header *hdr, const uint8_t *body, size_t len);

/* Called (with the deliver function's ud) for the events of the followed
 * timelines, which come on <prefix>/e/<timeline>:
 *  - READ: ev->user has read ev->timeline up to ev->seq. In a group the
 *    seq is the group's; for a direct message it is the reader's inbox,
 *    u/<reader> (your copies of what you sent there carry that seq in
 *    Header.peer_seq). Your own marks in a group come too.
 *  - TYPING: ev->user is typing (ev->typing true) or stopped, in
 *    ev->timeline: the conversation as you see it (u/<typist>, g/<group>).
 * Events are not stored: they reach only who is connected. So on every
 * connection the client also asks for the read marks as they are (the
 * peers' marks from the conversation list, the latest 200 conversations;
 * each group's `reads`) and reports them as READ events with ts_ms 0. A
 * read mark is reported only when it is above the last one reported for
 * that (user, timeline) in this run. ev is only valid during the call. */
typedef void (*im_client_event_fn)(void *ud, const Im__V1__Event *ev);

/* Called (with the deliver function's ud) when the server's history was
 * replaced: its store id changed from old_id to new_id (a new or restored
 * database). Every timeline starts over: messages will be delivered again
 * from seq 1, including ones the application may have shown before, so it
 * should tell the user and may clear what it shows. The new id is already
 * saved in the state file. */
typedef void (*im_client_reset_fn)(void *ud, uint64_t old_id, uint64_t new_id);

struct im_client_options {
	const char *host;          /* default 127.0.0.1 */
	int port;                  /* default 1883 */
	const char *user;          /* required: the MQTT username */
	const char *password;      /* optional */
	const char *client_id;     /* default "<user>-imclient": a device is its client id */
	const char *state_path;    /* optional: "timeline last" lines and "store <16 hex digits>" */
	const char *cafile;        /* optional: TLS */
	const char *prefix;        /* default "im" */
	const char *const *groups; /* optional, NULL-terminated: g/<name> timelines to follow */
	uint32_t sync_limit;       /* frames per batch asked for, default 500 */
	int verbose;
	im_client_reset_fn on_reset; /* optional: the server's history was replaced (see above) */
	im_client_event_fn on_event; /* optional: read marks and typing (see above) */
};

/* Returns NULL on bad options or out of memory. */
struct im_client *im_client_new(const struct im_client_options *opt, im_client_deliver_fn fn, void *ud);

/* Connects (and reconnects) and runs until max_messages were delivered
 * (0 = no limit), or idle_ms passed without a delivery once caught up
 * (0 = forever), or im_client_stop was called. Returns 0, or -1 if the
 * first connection was refused (bad login, broker down): the reason is
 * printed on stderr. */
int im_client_run(struct im_client *c, long max_messages, int idle_ms);

void im_client_stop(struct im_client *c);

/* The last seq delivered on a timeline ("u/bob"), 0 if none. */
uint64_t im_client_last(const struct im_client *c, const char *timeline);

void im_client_free(struct im_client *c);

#endif
