/*
 * What crosses between the threads: jobs go to the store worker (from the
 * broker thread and the cluster), completions come back (to the broker
 * thread, and to the cluster after a commit). Each is one allocation.
 */
#ifndef IM_WORKER_JOB_H
#define IM_WORKER_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "base/defs.h"

struct im__config;

/* Where a reply goes: the requesting client, on the request's Response
 * Topic (with its Correlation Data) or else $CONTROL/im/v1/<op>/response. */
struct im__reply_to {
	char *client_id;        /* NULL: no reply wanted (a publish without Response Topic) */
	char *topic;            /* NULL: the op's response topic */
	void *corr;
	uint16_t corr_len;
	char op[32];
	/* A request the broker thread counts until its reply is published
	 * (broker/clients.c): the reply carries these and the job's user back. */
	bool counted;
	uint32_t epoch;         /* of the client's entry when counted */
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
	uint64_t lsn;           /* IM_JOB_MSG: its journal record; a reader's request: the newest message queued before it */
	int64_t queued_us;      /* when it was submitted (metrics: store/queue_us) */
	char user[IM_NAME_MAX + 1];
	struct im__reply_to to;
	union {
		struct {
			char timeline[IM_TL_MAX + 1];
			bool has_after;
			uint64_t after;
			uint32_t limit;
			/* Cluster: this broker is still reading the timeline's head
			 * for the order filter (a device just came online). The
			 * sync then queues behind that read, in the writer's queue,
			 * so it returns every frame the filter leaves to it. */
			bool behind_writer;
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
/* Frees j and every job after it on its next chain. */
void im_job__free_list(struct im__job *j);

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
	int64_t ts_ms;              /* when it was sequenced (Header.ts_ms), 0 if unknown */
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
	bool counted;               /* ends a counted request (struct im__reply_to) of user */
	uint32_t epoch;
	const char *user;
	/* FRAME and REPLY */
	const void *payload;
	size_t len;
	/* MEMBERS: group, the change, owner, users */
	const char *group, *owner;
	enum im_group_op group_op;
	const char **users;
	size_t n_users;
	/* WROTE: sender -> peer; LOG: level, text in payload */
	int level;
	int64_t ready_us;           /* when the worker handed it over (metrics: deliver/handoff_us) */
	_Alignas(8) char data[];    /* MEMBERS keeps its pointer array here */
};

/* Completions are built by the worker, and by the broker thread when it
 * answers requests the worker cannot get to (a stalled store). */
/* A completion with extra bytes of data after it (zeroed); NULL without
 * memory. */
struct im__done *im_done__new(enum im_done_kind kind, size_t extra);
/* Copies s into d's data at *used (which moves on); s NULL gives NULL. */
const char *im_done__str(struct im__done *d, size_t *used, const char *s);
/* The reply completion to j's requester carrying msg, packed (on its
 * Response Topic with its Correlation Data). NULL: no reply wanted (a
 * request without a route) or no memory (logged). */
struct im__done *im_job__reply(const struct im__job *j, const ProtobufCMessage *msg, bool sync_reply);

#endif
