/*
 * One batch of jobs [W]: one transaction, with the batch's last journal
 * position in it, retried with a growing pause when the store fails (its
 * requests are answered "store failure" at once; its messages wait, they
 * are journaled and acknowledged). Its completions are published only
 * after the commit, and the broker thread is woken when it sleeps.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/wake.h"
#include "codec/record.h"
#include "worker/internal.h"

#define QUIET_US 1000           /* no tick for this long: the broker thread is probably asleep */

static void drop_batch_done(struct im__worker *w)
{
	struct im__done *d, *next;

	for(d = w->bhead; d; d = next){
		next = d->next;
		free(d);
	}
	w->bhead = NULL;
	w->btail = &w->bhead;
}

static int status_reply(struct im__worker *w, struct im__job *j)
{
	Im__V1__Response r = IM__V1__RESPONSE__INIT;

	r.has_status = 1;
	r.status = j->u.status.status;
	r.reason = j->u.status.reason;
	im_work__reply(w, j, &r.base, false);
	return MOSQ_ERR_SUCCESS;
}

static int run_job(struct im__worker *w, struct im__job *j)
{
	switch(j->kind){
		case IM_JOB_STATUS: return status_reply(w, j);
		case IM_JOB_READS: return im_work__reads(w, j);
		case IM_JOB_CONVS: return im_work__conversations(w, j);
		case IM_JOB_MSG: return im_work__message(w, j);
		case IM_JOB_SYNC: return im_work__sync(w, j);
		case IM_JOB_ACK: return im_work__ack(w, j);
		case IM_JOB_GROUP: return im_work__group(w, j);
		case IM_JOB_REPAIR: return im_work__repair(w, j);
		case IM_JOB_FORGET: return im_work__forget(w, j);
		default: return MOSQ_ERR_SUCCESS;
	}
}

/* Requests in a batch that failed get "store failure" now (they are not
 * acknowledged data); messages stay for the next attempt. */
static struct im__job *fail_requests(struct im__worker *w, struct im__job *jobs, size_t *n, size_t *removed)
{
	struct im__job *keep = NULL, **kt = &keep, *j, *next;
	Im__V1__Response r = IM__V1__RESPONSE__INIT;

	r.has_status = 1;
	r.status = IM__V1__STATUS__INTERNAL;
	r.reason = "store failure; nothing changed";
	for(j = jobs; j; j = next){
		next = j->next;
		if(j->kind == IM_JOB_MSG){
			*kt = j;
			kt = &j->next;
			continue;
		}
		if(j->kind == IM_JOB_REPAIR) im_work__repair_failed(w, j);
		else im_work__reply(w, j, &r.base, j->kind == IM_JOB_SYNC);
		im_job__free(j);
		(*n)--;
		(*removed)++;
	}
	*kt = NULL;
	return keep;
}

/* Hands the batch's completions over. The broker thread drains them at
 * its next tick; it is woken with a signal only when it is probably asleep
 * or has left them waiting for IM_WORK_REPOKE_US. A signal costs the broker thread
 * an interrupted system call and a trip through the kernel's signal code,
 * which measured ~10% of its time when sent per batch; so at most one per
 * tick. "Probably asleep": no tick for QUIET_US (a long sleep, or a long
 * pass), or no job queued since its last tick. The tick is the last step
 * of a pass of the broker's loop: a job queued after the last tick means
 * the pass that queued it is still running and will drain at its tick;
 * otherwise that pass has ticked already and the loop went back to
 * epoll_wait, where with nothing to read it sleeps (up to 100 ms on 2.0)
 * until the repoke. Without that second test a message that arrived
 * alone waited one or two IM_WORK_REPOKE_US for its delivery (lone DMs paced at
 * 200 and 1,000/s: hand-off p50 0.3-2 ms before, at most 0.13 ms after;
 * the cost, more signals at saturation, and how it was measured: "Waking
 * the broker thread" in docs/PERFORMANCE.md). */
static void publish_batch(struct im__worker *w, size_t n_jobs)
{
	/* A reader's completions join its writer's, in one queue. */
	struct im__worker *q = w->main ? w->main : w;
	int64_t now = im_mono_us(), tick;
	bool poke = false;

	/* Committed: other brokers of a cluster may hear of it now. */
	if(w->hooks.committed) w->hooks.committed(w->hooks.ctx, w->st.store_id, w->st.frame_key, w->bhead);

	pthread_mutex_lock(&q->mu);
	if(w->bhead){
		w->bhead->ready_us = now;
		if(q->dhead == NULL) q->pending_us = now;
		*q->dtail = w->bhead;
		q->dtail = w->btail;
		__atomic_store_n(&q->has_done, 1, __ATOMIC_RELEASE);
		tick = __atomic_load_n(&q->tick_us, __ATOMIC_RELAXED);
		poke = now - tick >= QUIET_US
			|| (__atomic_load_n(&q->submit_us, __ATOMIC_RELAXED) < tick && q->poked_us < tick)
			|| (now - q->pending_us >= IM_WORK_REPOKE_US && now - q->poked_us >= IM_WORK_REPOKE_US);
		if(poke) q->poked_us = now;
	}
	/* Replayed jobs were never submitted: counting them would make
	 * im_worker__wait_idle return while submitted ones are still queued. */
	if(!w->replaying) q->finished += n_jobs;
	/* Readers wait for the messages queued before their requests. */
	if(w->main == NULL && w->st.applied_lsn > w->stored_lsn){
		w->stored_lsn = w->st.applied_lsn;
		pthread_cond_broadcast(&w->stored_cv);
	}
	pthread_cond_broadcast(&q->idle_cv);
	pthread_mutex_unlock(&q->mu);
	w->bhead = NULL;
	w->btail = &w->bhead;
	if(poke) im_wake__poke();
}

/* ---- several writers: the batch's timelines locked in one order ---- */

struct lock_name { const char *name; bool create; };

static int cmp_lock_name(const void *x, const void *y)
{
	return strcmp(((const struct lock_name *)x)->name, ((const struct lock_name *)y)->name);
}

/* With a store that several brokers write (ops->prelock), the timelines
 * the batch will write are locked at its start, sorted: the messages'
 * timelines and the senders' inboxes (made if missing: every message
 * makes its sender's), and the inboxes whose owners acknowledge (a read
 * mark there changes the owner's unread counts, under the inbox's lock).
 * A message's target is not made here: the new-conversation budget
 * decides that. Without memory the batch runs unlocked, as before. */
static int prelock_batch(struct im__worker *w, struct im__job *jobs, size_t n)
{
	struct lock_name *l = im_malloc(2 * n * sizeof(*l));
	const char **names = im_malloc(2 * n * sizeof(*names));
	bool *create = im_malloc(2 * n * sizeof(*create));
	const char **senders = im_malloc(n * sizeof(*senders));
	const char **cmids = im_malloc(n * sizeof(*cmids));
	struct im__job *j;
	struct im__rec r;
	size_t k = 0, u = 0, i, c = 0;
	int rc = MOSQ_ERR_SUCCESS;

	if(l && names && create && senders && cmids){
		for(j = jobs; j; j = j->next){
			if(j->kind == IM_JOB_MSG && im_rec__decode(j->data, j->len, &r)){
				l[k++] = (struct lock_name){r.to, false};
				if(r.own[0]) l[k++] = (struct lock_name){r.own, true};
				if(r.cmid[0]){
					senders[c] = r.sender;
					cmids[c++] = r.cmid;
				}
			}else if(j->kind == IM_JOB_ACK && j->u.ack.timeline[0] == 'u' && !strcmp(j->u.ack.timeline + 2, j->user)){
				l[k++] = (struct lock_name){j->u.ack.timeline, false};
			}
		}
		qsort(l, k, sizeof(*l), cmp_lock_name);
		for(i = 0; i < k; i++){
			if(u && !strcmp(names[u - 1], l[i].name)){
				create[u - 1] |= l[i].create;
				continue;
			}
			names[u] = l[i].name;
			create[u++] = l[i].create;
		}
		rc = w->st.ops->prelock(&w->st, names, create, u);
		/* Under the locks: the batch's cmids looked up at once. */
		if(rc == MOSQ_ERR_SUCCESS && c && w->st.ops->dedup_batch) rc = w->st.ops->dedup_batch(&w->st, senders, cmids, c);
	}
	im_free(l);
	im_free(names);
	im_free(create);
	im_free(senders);
	im_free(cmids);
	return rc;
}

/* Messages of a batch that the store holds already: a COMMIT whose answer
 * was lost (PostgreSQL down at that moment) that the store's reconnect
 * found had taken (st.applied_lsn moved past them). Applying them again
 * would store them twice (those without a cmid under new seqs). They are
 * dropped: stored once, their Receipts are lost, and live delivery goes
 * on past them (in cluster mode the gap is repaired from the store;
 * otherwise clients see a gap and sync, PROTOCOL.md 7). */
static struct im__job *drop_applied(struct im__worker *w, struct im__job *jobs, size_t *n)
{
	struct im__job *keep = NULL, **kt = &keep, *j, *next;
	size_t dropped = 0;

	for(j = jobs; j; j = next){
		next = j->next;
		if(j->kind == IM_JOB_MSG && j->lsn && j->lsn <= w->st.applied_lsn){
			if(!w->replaying) __atomic_sub_fetch(&w->backlog, (uint64_t)j->len, __ATOMIC_RELAXED);
			im_job__free(j);
			(*n)--;
			dropped++;
			continue;
		}
		*kt = j;
		kt = &j->next;
	}
	*kt = NULL;
	if(dropped){
		im_log(MOSQ_LOG_WARNING, "im: store: %zu message(s) of the retried batch were stored by the commit whose answer was lost; not applied again (their Receipts are lost, clients sync past them).",
				dropped);
	}
	return keep;
}

/* Did the committed batch change groups (here or, in a cluster, on
 * another broker)? Then the readers' member sets are dropped before their
 * next batch; bumped before the answers go out, so a request made after
 * the answer to a change sees the change. */
static bool changed_groups(const struct im__job *jobs)
{
	for(; jobs; jobs = jobs->next){
		if(jobs->kind == IM_JOB_GROUP || jobs->kind == IM_JOB_FORGET) return true;
	}
	return false;
}

/* Applies jobs (a list) in one transaction; retries until it commits or
 * the worker stops (or, replaying at start, gives up after a few tries:
 * then the broker does not start). Frees the jobs. */
int im_work__run_batch(struct im__worker *w, struct im__job *jobs, size_t n)
{
	struct im__job *j;
	uint64_t last_lsn, bytes;
	int64_t t0;
	int attempt = 0, rc;
	unsigned pause_ms = 50;
	size_t removed = 0;

	for(;;){
		last_lsn = 0;
		bytes = 0;
		t0 = im_mono_us();
		if(attempt == 0 && jobs->queued_us) im_stats__hist(w->metrics->queue_hist, t0 - jobs->queued_us);
		im_work__doing(w, "BEGIN");
		rc = w->st.ops->begin(&w->st);
		if(rc == MOSQ_ERR_SUCCESS && attempt > 0 && (jobs = drop_applied(w, jobs, &n)) == NULL){
			w->st.ops->rollback(&w->st);
			last_lsn = w->st.applied_lsn;   /* for the marker */
			break;
		}
		im_work__doing(w, "the batch's statements");
		/* A reader writes nothing: it locks nothing. */
		if(rc == MOSQ_ERR_SUCCESS && w->st.ops->prelock && w->main == NULL) rc = prelock_batch(w, jobs, n);
		im_work__notes_drop(w);
		for(j = jobs; j && rc == MOSQ_ERR_SUCCESS; j = j->next){
			/* What a message job folds, another kind may read. */
			if(j->kind != IM_JOB_MSG) rc = im_work__notes_flush(w);
			if(rc == MOSQ_ERR_SUCCESS) rc = run_job(w, j);
			if(j->kind == IM_JOB_MSG){
				last_lsn = j->lsn;
				bytes += j->len;
			}
		}
		if(rc == MOSQ_ERR_SUCCESS) rc = im_work__notes_flush(w);
		im_work__doing(w, "COMMIT");
		if(rc == MOSQ_ERR_SUCCESS) rc = w->st.ops->commit(&w->st, last_lsn);
		else w->st.ops->rollback(&w->st);
		im_stats__hist(w->metrics->commit_hist, im_mono_us() - t0);
		if(rc == MOSQ_ERR_SUCCESS) break;
		IM_STAT_ADD(w->metrics->store_errors, 1);
		drop_batch_done(w);
		if(attempt++ == 0){
			im_log(MOSQ_LOG_ERR, "im: store: a batch of %zu jobs failed; its requests are answered \"store failure\", its messages are kept in the journal and retried.", n);
			jobs = fail_requests(w, jobs, &n, &removed);
			publish_batch(w, removed);
		}
		if(jobs == NULL) break;
		if(w->replaying && attempt >= 3){
			im_job__free_list(jobs);
			return MOSQ_ERR_UNKNOWN;
		}
		im_work__doing(w, "retrying after a store error");
		pthread_mutex_lock(&w->mu);
		if(!w->stop) im_cond__wait_us(&w->cv, &w->mu, (int64_t)pause_ms * 1000);
		rc = w->stop;
		pthread_mutex_unlock(&w->mu);
		if(rc){
			/* Stopping with messages unstored: they stay in the journal
			 * and are applied at the next start. */
			im_job__free_list(jobs);
			return MOSQ_ERR_UNKNOWN;
		}
		if(pause_ms < 2000) pause_ms *= 2;
	}
	if(last_lsn) im_work__marker_write(w, last_lsn);
	t0 = im_mono_us();
	for(j = jobs; j; j = j->next){
		if(j->kind == IM_JOB_MSG && j->queued_us) im_stats__hist(w->metrics->ship_hist, t0 - j->queued_us);
	}
	w->st.ops->scrub(&w->st);
	if(attempt > 0) im_log(MOSQ_LOG_NOTICE, "im: store: the batch committed after %d attempt(s).", attempt + 1);
	IM_STAT_ADD(w->metrics->batches, 1);
	/* Replayed records were never submitted, so never counted. */
	if(!w->replaying) __atomic_sub_fetch(&w->backlog, bytes, __ATOMIC_RELAXED);
	if(changed_groups(jobs)) __atomic_add_fetch(&w->groups_gen, 1, __ATOMIC_RELEASE);
	im_job__free_list(jobs);
	if(w->replaying){
		if(w->hooks.committed) w->hooks.committed(w->hooks.ctx, w->st.store_id, w->st.frame_key, w->bhead);
		drop_batch_done(w);
		return MOSQ_ERR_SUCCESS;
	}
	publish_batch(w, n);
	return MOSQ_ERR_SUCCESS;
}
