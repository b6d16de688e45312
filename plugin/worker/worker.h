/*
 * The store worker: one thread that owns the store (worker/worker.c says
 * why one). What the layers above it see: start and stop, a queue of jobs
 * in, a queue of completions out, and hooks through which the worker tells
 * them what it cannot call.
 */
#ifndef IM_WORKER_WORKER_H
#define IM_WORKER_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/config.h"
#include "base/defs.h"
#include "base/stats.h"
#include "journal/journal.h"
#include "worker/job.h"

struct im__worker;

/* What the worker tells the layers above. ctx is passed to each hook. */
struct im__worker_hooks {
	void *ctx;
	/* [W] After each commit, before the broker thread gets them: the
	 * batch's completions (read-only; they stay the worker's), under the
	 * store's id and frame key. Also for the frames and membership changes
	 * of the journal replayed at start, which nobody here is waiting for
	 * but other brokers of a cluster may be. NULL: nobody listens (and
	 * replayed completions are dropped). */
	void (*committed)(void *ctx, uint64_t store_id, const uint8_t key[16], const struct im__done *list);
	/* [init thread] At start, for the broker thread's views: every group
	 * with its members, then (presence contacts) every writer -> reader
	 * pair. NULL: not wanted. */
	enum im_row (*group)(void *ctx, const char *group, const char *owner, const char *const *members, size_t n);
	enum im_row (*wrote)(void *ctx, const char *writer, const char *reader);
};

/* [init thread] Opens the store cfg names, the journal (into *journal,
 * which the broker thread appends to from then on) replaying into the
 * store what it does not hold yet, loads what the broker thread needs
 * through the hooks, and starts the thread. The worker keeps its own copy
 * of cfg; journal and metrics must outlive it. *out is the worker, or
 * NULL on failure (everything logged and closed). MOSQ_ERR_SUCCESS,
 * MOSQ_ERR_NOMEM or MOSQ_ERR_UNKNOWN. */
int im_worker__start(const struct im__config *cfg, struct im__journal *journal, struct im__metrics *metrics,
		const struct im__worker_hooks *hooks, struct im__worker **out);
/* The store's id and frame key (fixed from start on). */
void im_worker__identity(const struct im__worker *w, uint64_t *store_id, uint8_t key[16]);
/* Stops the thread after it finished every queued job; closes the store
 * and the journal; frees w. NULL is a no-op. */
void im_worker__stop(struct im__worker *w);
/* Queues a job; the worker owns it from now on. */
void im_worker__submit(struct im__worker *w, struct im__job *j);
/* Hands the queued completions to fn in order (fn owns each). Returns how
 * many. Cheap when there are none (one atomic load). w may be NULL. */
size_t im_worker__drain(struct im__worker *w, void (*fn)(void *ctx, struct im__done *d), void *ctx);
/* The broker thread ticked (it is awake and will drain soon). */
void im_worker__ticked(struct im__worker *w);
/* Bytes of journaled records not yet stored (0 for NULL). */
uint64_t im_worker__backlog(const struct im__worker *w);
/* Since when (im_mono_us) the worker has been on the batch it is on, and
 * what it is doing there (a static string: "COMMIT", "a retry pause after
 * a store error", ...); 0 when it is between batches. A batch that
 * takes longer than store_timeout is a stalled store (broker/stall.c). */
int64_t im_worker__busy(const struct im__worker *w, const char **doing);
/* Takes the queued requests out of the queue (sync, ack, group, reads,
 * conversations, and answers waiting their turn), in order, linked by
 * next: the broker thread answers them itself while the store is
 * stalled. Messages, repairs and options stay. They count as done. */
struct im__job *im_worker__withdraw(struct im__worker *w);
/* The readers (plugin_opt_store_readers): since when every one of them
 * has been on its batch (the latest start, and *doing what there), or 0
 * when one is free or there are none. */
int64_t im_worker__readers_busy(const struct im__worker *w, const char **doing);
/* Takes every request queued for the readers (the same answers as
 * im_worker__withdraw's). */
struct im__job *im_worker__withdraw_reads(struct im__worker *w);
/* Waits until every job submitted so far is done (the inline mode, for a
 * broker that sends no ticks). */
void im_worker__wait_idle(struct im__worker *w);

#endif
