/*
 * The store worker's private state, shared by the files of worker/:
 * worker.c (the queues, the thread and its pacing, start and stop),
 * batch.c (one transaction of jobs), recover.c (opening the store and
 * applying the journal), marker.c, job.c, emit.c (completions),
 * frames.c (frames, events, membership by the store), and one file per
 * kind of job: msg.c, read.c (sync, ack), conv.c (read marks, the
 * conversation list), group.c, repair.c (cluster). Worker thread only,
 * but for the fields marked [mu], which the broker thread touches under
 * the mutex.
 */
#ifndef IM_WORKER_INTERNAL_H
#define IM_WORKER_INTERNAL_H

#include <pthread.h>

#include "im.pb-c.h"

#include "base/crypt.h"
#include "base/map.h"
#include "base/util.h"
#include "store/store.h"
#include "worker/worker.h"

/* A group's last message as the open batch's messages left it, noted
 * once at the end (msg.c: im_work__notes_flush). */
#define IM_WORK_GNOTES 16
struct im__gnote {
	char grp[IM_NAME_MAX + 1];
	char sender[IM_NAME_MAX + 1];
	char preview[IM_PREVIEW_MAX + 1];
	bool has_preview;
	uint32_t flags;
	uint64_t seq;
	int64_t ts;
	int edits;                      /* edits and recalls among the folded messages */
};

struct im__worker {
	struct im__metrics *metrics;    /* the plugin's counters (atomics) */
	struct im__journal *journal;    /* opened at start; the broker thread appends */
	struct im__worker_hooks hooks;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;              /* jobs arrived, stop */
	pthread_cond_t idle_cv;         /* a batch finished (the inline mode waits) */
	struct im__job *head, **tail;   /* [mu] queued jobs */
	struct im__done *dhead, **dtail;/* [mu] completions for the broker thread */
	int has_done;                   /* completions queued (atomic; drain checks it unlocked) */
	uint64_t submitted, finished;   /* [mu] jobs */
	uint32_t queued;                /* [mu] jobs in head..tail */
	bool gathering;                 /* [mu] the worker lets a batch fill: no signal per job */
	uint64_t backlog;               /* [mu] journal bytes queued, not yet stored (atomic reads) */
	bool stop;                      /* [mu] */
	bool started;
	int64_t poked_us;               /* [mu] when the broker thread was last woken */
	int64_t pending_us;             /* [mu] since when completions wait undrained */
	int64_t tick_us;                /* the broker thread's last tick (atomic) */
	int64_t submit_us;              /* when the broker thread last queued a job (atomic) */
	int64_t busy_us;                /* since when on the current batch, 0 between (atomic) */
	const char *doing;              /* what in it: a static string (atomic) */

	/* Worker-owned. */
	struct im__store st;
	struct im__config cfg;          /* the worker's copy of the options */
	struct im__crypt *crypt;        /* NULL: no encryption at rest */
	struct im__buf frame;           /* frames of a sync batch */
	struct im__buf zbuf;            /* deflated bodies */
	struct im__buf plain;           /* bodies opened from the journal */
	struct im__map new_tl;          /* sender -> struct im__bucket (new_timelines_per_min) */
	char *journal_dir;
	int marker_fd;                  /* <journal>/applied: the highest LSN ever stored */
	int64_t last_cut_ms;
	int64_t next_trim_ms;
	int64_t trim_cursor;
	bool replaying;                 /* applying the journal at start: no completions */
	/* The open batch's completions: published only after its commit. */
	struct im__done *bhead, **btail;
	int64_t batch_started_us;
	int64_t gap_us;                 /* recent time between jobs (a moving average) */
	int64_t last_queued_us;         /* when the last job taken was queued */
	int64_t gathered_for;           /* queued_us of the first job a batch waited for */
	struct im__gnote gnotes[IM_WORK_GNOTES];
	size_t n_gnotes;                /* pending in the open batch (msg.c) */

	/* Readers (reader.c): threads with store connections of their own that
	 * answer the read-only requests beside the writer. A reader is a
	 * struct im__worker too (the job code is the same), with main set;
	 * the queue and the completions are its writer's, under its mu. */
	struct im__worker *main;        /* a reader: its writer; NULL: the writer */
	struct im__worker **readers;    /* the writer's readers (n_readers) */
	size_t n_readers;
	struct im__job *rhead, **rtail; /* [mu] requests queued for the readers */
	uint32_t rqueued;               /* [mu] */
	pthread_cond_t rcv;             /* [mu] requests for the readers, stop */
	uint64_t groups_gen;            /* the writer: bumped after a commit that changed groups (atomic) */
	uint64_t last_msg_lsn;          /* [mu] the writer: the journal record of the newest message queued */
	uint64_t stored_lsn;            /* [mu] the writer: its applied_lsn after its last commit */
	/* Readers waiting for stored_lsn (reader.c) wait on a cv of their
	 * own: a broadcast on rcv after every commit woke every idle reader
	 * to go back to sleep, measured at 12% of the process's CPU paced at
	 * 2,000 DMs/s, and they took mu from the broker thread's submits on
	 * the way. A broadcast nobody waits for stays in user space. */
	pthread_cond_t stored_cv;       /* [mu] */
	uint64_t seen_gen;              /* a reader: the groups_gen its group cache is of */
	struct im__config *new_cfg;     /* [main's mu] a reader: options of a reload, for its next batch */
	struct im__crypt *new_crypt;    /* [main's mu] and its keys (NULL: unchanged) */
};

/* Completion builders (worker/job.h), under the worker's names. */
static inline struct im__done *im_work__done(enum im_done_kind kind, size_t extra)
{
	return im_done__new(kind, extra);
}

static inline const char *im_work__str(struct im__done *d, size_t *used, const char *s)
{
	return im_done__str(d, used, s);
}

/* Queues d for after the batch's commit. */
void im_work__emit(struct im__worker *w, struct im__done *d);
/* A reply to the job's requester with a packed protobuf message. */
void im_work__reply(struct im__worker *w, const struct im__job *j, const ProtobufCMessage *msg, bool sync_reply);
/* Completions not drained after this long: wake the broker thread again
 * (worker.c, batch.c). */
#define IM_WORK_REPOKE_US 1000
/* What the worker is doing, for the broker thread's stall watch. */
static inline void im_work__doing(struct im__worker *w, const char *what)
{
	__atomic_store_n(&w->doing, what, __ATOMIC_RELAXED);
}

/* The store failed: the batch is rolled back and tried again. */
#define IM_WORK_RETRY MOSQ_ERR_UNKNOWN

/* batch.c: runs jobs (n of them, linked by next; the batch owns them) in
 * one transaction, retried until it commits, then publishes their
 * completions. MOSQ_ERR_UNKNOWN if it gave up (stopping, or a replayed
 * batch that failed three times). */
int im_work__run_batch(struct im__worker *w, struct im__job *jobs, size_t n);

/* reader.c */
/* Opens n readers' connections and starts their threads (after recovery:
 * the store is migrated and current). */
int im_work__readers_start(struct im__worker *w, const struct im__config *cfg, size_t n);
/* Lets them finish the queued requests, stops and closes them. */
void im_work__readers_stop(struct im__worker *w);
/* Hands the writer's new options (a reload) to every reader. */
void im_work__readers_options(struct im__worker *w);
/* Which jobs the readers take. */
bool im_work__for_readers(const struct im__job *j);

/* recover.c: opens the store cfg names and applies the journal to it. */
int im_work__recover(struct im__worker *w, const struct im__config *cfg);

/* marker.c: <journal>/applied, the highest LSN ever stored (fd may be -1). */
uint64_t im_work__marker_read(int fd);
void im_work__marker_write(struct im__worker *w, uint64_t lsn);

/* frames.c */
/* Builds the frame completion of m in timeline tl (a sealed frame, or the
 * raw body in payload mode raw). raw_body: the body as sent. */
struct im__done *im_work__frame(struct im__worker *w, const char *tl, const struct im__msg *m,
		const void *raw_body, size_t raw_len);
/* The sealed frame of a stored message m of tl, as sync returns it, into
 * out (cap bytes); with out NULL, only its size. 0 if it cannot be built. */
size_t im_work__sync_frame(struct im__worker *w, const char *tl, const struct im__msg *m, uint8_t *out, size_t cap);
/* An event frame (no seq) on <prefix>/e/<tl>, for everyone who may read tl. */
struct im__done *im_work__event(struct im__worker *w, const char *tl, const Im__V1__Event *ev);
/* Is user a member of group (the worker's authoritative cache)? *err on
 * a store failure. */
bool im_work__is_member(struct im__worker *w, const char *group, size_t glen, const char *user, bool *err);

/* msg.c */
int im_work__message(struct im__worker *w, struct im__job *j);
/* Writes the open batch's folded group notes (before a job that may read
 * them, and before the commit); _drop forgets them (a rollback). */
int im_work__notes_flush(struct im__worker *w);
void im_work__notes_drop(struct im__worker *w);

/* read.c */
int im_work__sync(struct im__worker *w, struct im__job *j);
int im_work__ack(struct im__worker *w, struct im__job *j);

/* conv.c */
int im_work__reads(struct im__worker *w, struct im__job *j);
int im_work__conversations(struct im__worker *w, struct im__job *j);

/* repair.c (cluster) */
int im_work__repair(struct im__worker *w, struct im__job *j);
void im_work__repair_failed(struct im__worker *w, const struct im__job *j);
int im_work__forget(struct im__worker *w, struct im__job *j);

/* group.c */
int im_work__group(struct im__worker *w, struct im__job *j);

#endif
