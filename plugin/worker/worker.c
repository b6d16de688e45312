/*
 * The store worker: one thread that owns the store. The broker thread
 * journals each message (the acknowledgement point) and queues it here;
 * the worker applies queued jobs in batches, one transaction each, with
 * the last journal position in that same transaction, and hands the
 * results (frames, receipts, replies) back to the broker thread in the
 * order it produced them: seq order per timeline.
 *
 * Why one thread: SQLite has one writer, so more writing threads only
 * queue on its lock; and one thread makes the order of completions the
 * order of commits with no further bookkeeping. Reads (sync) run in the
 * same batches; they are bounded by sync_max_frames/bytes.
 *
 * A batch that fails to commit (disk full, I/O error, a locked file) is
 * rolled back and tried again with a growing pause; its requests are
 * answered "store failure" at once, its messages wait: they are in the
 * journal and acknowledged, so they are never dropped. While they wait the
 * backlog grows, and past backlog_max the broker thread refuses new
 * publishes (without acknowledging them).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/wake.h"
#include "codec/record.h"
#include "store/open.h"
#include "worker/internal.h"

#define CUT_INTERVAL_MS 1000
#define BATCH_US 2000           /* stop adding jobs to a batch after this much work */
#define GATHER_FULL 64          /* a gathering batch is full enough at this many jobs */

static struct im__worker *g_worker; /* for post_log */

static bool post_log(int level, const char *text)
{
	struct im__worker *w = g_worker;
	size_t n = strlen(text) + 1;
	struct im__done *d;

	if(w == NULL) return false;
	d = im_work__done(IM_DONE_LOG, n);
	if(d == NULL) return true; /* out of memory: the line is lost, not the thread */
	memcpy(d->data, text, n);
	d->payload = d->data;
	d->len = n - 1;
	d->level = level;
	pthread_mutex_lock(&w->mu);
	*w->dtail = d;
	w->dtail = &d->next;
	__atomic_store_n(&w->has_done, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&w->mu);
	im_wake__poke();
	return true;
}

/* ---- the broker thread's side ---- */

void im_worker__submit(struct im__worker *w, struct im__job *j)
{

	j->next = NULL;
	j->queued_us = im_mono_us();
	if(w->n_readers && im_work__for_readers(j)){
		/* Not the writer's business: its batches, and a COMMIT that
		 * hangs, never hold a read up. */
		pthread_mutex_lock(&w->mu);
		j->lsn = w->last_msg_lsn;
		*w->rtail = j;
		w->rtail = &j->next;
		w->submitted++;
		w->rqueued++;
		pthread_cond_signal(&w->rcv);
		pthread_mutex_unlock(&w->mu);
		return;
	}
	__atomic_store_n(&w->submit_us, j->queued_us, __ATOMIC_RELAXED);
	pthread_mutex_lock(&w->mu);
	*w->tail = j;
	w->tail = &j->next;
	w->submitted++;
	w->queued++;
	if(j->kind == IM_JOB_MSG){
		__atomic_add_fetch(&w->backlog, j->len, __ATOMIC_RELAXED);
		if(j->lsn > w->last_msg_lsn) w->last_msg_lsn = j->lsn;
	}
	/* A gathering worker wakes by itself when its time is up; a signal
	 * per job would wake it for nothing (a futex call here, a context
	 * switch there). A full batch or a job that is not a message (a
	 * reply someone waits for, a reload, a stop) ends the gathering. */
	if(!w->gathering || w->queued >= GATHER_FULL || j->kind != IM_JOB_MSG) pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

size_t im_worker__drain(struct im__worker *w, void (*fn)(void *ctx, struct im__done *d), void *ctx)
{
	struct im__done *d, *next;
	size_t n = 0;

	if(w == NULL || !__atomic_load_n(&w->has_done, __ATOMIC_ACQUIRE)) return 0;
	pthread_mutex_lock(&w->mu);
	d = w->dhead;
	w->dhead = NULL;
	w->dtail = &w->dhead;
	__atomic_store_n(&w->has_done, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->mu);
	if(d) im_stats__hist(w->metrics->handoff_hist, im_mono_us() - d->ready_us);
	for(; d; d = next, n++){
		next = d->next;
		fn(ctx, d);
	}
	return n;
}

uint64_t im_worker__backlog(const struct im__worker *w)
{
	return w ? __atomic_load_n(&w->backlog, __ATOMIC_RELAXED) : 0;
}

void im_worker__wait_idle(struct im__worker *w)
{

	pthread_mutex_lock(&w->mu);
	while(w->finished < w->submitted && !w->stop) pthread_cond_wait(&w->idle_cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

int64_t im_worker__busy(const struct im__worker *w, const char **doing)
{
	if(w == NULL) return 0;
	if(doing) *doing = __atomic_load_n(&w->doing, __ATOMIC_RELAXED);
	return __atomic_load_n(&w->busy_us, __ATOMIC_ACQUIRE);
}

int64_t im_worker__readers_busy(const struct im__worker *w, const char **doing)
{
	int64_t since, latest = 0;
	size_t i;

	if(w == NULL || w->n_readers == 0) return 0;
	for(i = 0; i < w->n_readers; i++){
		since = __atomic_load_n(&w->readers[i]->busy_us, __ATOMIC_ACQUIRE);
		if(since == 0) return 0; /* one is free: the queue moves */
		if(since > latest){
			latest = since;
			if(doing) *doing = __atomic_load_n(&w->readers[i]->doing, __ATOMIC_RELAXED);
		}
	}
	return latest;
}

struct im__job *im_worker__withdraw_reads(struct im__worker *w)
{
	struct im__job *out;

	if(w == NULL || w->n_readers == 0) return NULL;
	pthread_mutex_lock(&w->mu);
	out = w->rhead;
	w->rhead = NULL;
	w->rtail = &w->rhead;
	w->finished += w->rqueued;
	w->rqueued = 0;
	pthread_cond_broadcast(&w->idle_cv);
	pthread_mutex_unlock(&w->mu);
	return out;
}

static bool withdrawable(const struct im__job *j)
{
	switch(j->kind){
		case IM_JOB_SYNC: case IM_JOB_ACK: case IM_JOB_GROUP: case IM_JOB_READS: case IM_JOB_CONVS: case IM_JOB_STATUS:
			return j->to.client_id != NULL;
		default:
			return false;
	}
}

struct im__job *im_worker__withdraw(struct im__worker *w)
{
	struct im__job *out = NULL, **ot = &out, **pp, *j;

	if(w == NULL) return NULL;
	pthread_mutex_lock(&w->mu);
	for(pp = &w->head; (j = *pp) != NULL;){
		if(!withdrawable(j)){
			pp = &j->next;
			continue;
		}
		*pp = j->next;
		j->next = NULL;
		*ot = j;
		ot = &j->next;
		w->queued--;
		w->finished++;
	}
	/* The tail may have been taken. */
	for(w->tail = &w->head; *w->tail; w->tail = &(*w->tail)->next);
	pthread_cond_broadcast(&w->idle_cv);
	pthread_mutex_unlock(&w->mu);
	return out;
}

void im_worker__ticked(struct im__worker *w)
{
	if(w) __atomic_store_n(&w->tick_us, im_mono_us(), __ATOMIC_RELAXED);
}

/* New options (a reload): the worker's copy and the keys. */
static void apply_options(struct im__worker *w, struct im__job *j)
{
	struct im__config *n = j->u.options;
	struct im__crypt *c;

	if(n == NULL) return;
	im_config__copy_runtime(&w->cfg, n);
	im_config__free_admins(&w->cfg);
	w->cfg.admins = n->admins;
	n->admins = NULL;
	/* The keys travel in the job's data: a loaded struct im__crypt. */
	if(j->len == sizeof(struct im__crypt)){
		c = (struct im__crypt *)(void *)j->data;
		if(w->crypt){
			im_crypt__free(w->crypt);
			memcpy(w->crypt, c, sizeof(*c));
			w->st.crypt = w->crypt;
		}else{
			im_crypt__free(c);
		}
		memset(c, 0, sizeof(*c));
	}
	w->next_trim_ms = 0;
	w->trim_cursor = 0;
	im_work__readers_options(w);
}

/* ---- background work: retention, journal cut ---- */

/* When housekeeping is next due (im_mono_ms()): the journal cut each
 * CUT_INTERVAL_MS, the next retention step. An idle writer sleeps until
 * then, not a fixed 5 ms (an idle broker woke it 200 times a second);
 * jobs, options and a stop signal its cv. */
static int64_t housekeeping_due(const struct im__worker *w)
{
	int64_t due = w->last_cut_ms + CUT_INTERVAL_MS;

	if((w->cfg.retention_seconds || w->cfg.retention_messages) && w->next_trim_ms < due) due = w->next_trim_ms;
	return due;
}

/* now: im_mono_ms() (the schedule); retention's cutoff is wall time. */
static void housekeeping(struct im__worker *w, int64_t now)
{
	const struct im__config *cfg = &w->cfg;
	int64_t cutoff = 0;
	bool done = false;
	size_t groups;
	int rows;

	if(now - w->last_cut_ms >= CUT_INTERVAL_MS){
		im_journal__cut(w->journal_dir, w->st.applied_lsn);
		w->last_cut_ms = now;
		IM_STAT_SET(w->metrics->timelines_cached, w->st.ops->cached(&w->st, &groups));
		IM_STAT_SET(w->metrics->groups_cached, groups);
	}
	if((cfg->retention_seconds == 0 && cfg->retention_messages == 0) || now < w->next_trim_ms) return;
	if(cfg->retention_seconds) cutoff = im_now_ms() - cfg->retention_seconds * 1000;
	/* A trim step is a transaction too: watched like a batch. */
	__atomic_store_n(&w->busy_us, im_mono_us(), __ATOMIC_RELEASE);
	im_work__doing(w, "a retention trim step");
	rows = w->st.ops->trim_step(&w->st, cutoff, cfg->retention_messages, cfg->trim_batch, &w->trim_cursor, &done);
	__atomic_store_n(&w->busy_us, 0, __ATOMIC_RELEASE);
	if(rows > 0) IM_STAT_ADD(w->metrics->trimmed, rows);
	/* A failed step is tried again later from where it stopped. Between
	 * steps of one sweep the queue goes first (the loop checks it). */
	w->next_trim_ms = now + (rows < 0 ? 1000 : done ? 1000 : 5);
}

/* Group commit. A commit has a fixed cost (on SQLite: the WAL frames of
 * every page the batch dirtied, the file locks, the applied marker), so
 * batches of one or two messages, which a fast worker takes from a
 * steady stream, spend most of their time committing: measured at one
 * QoS 1 publisher, 1.8 messages per batch, and the worker's share of CPU
 * as large as the broker thread's added share, on a machine where they
 * compete for the same cores. So while jobs keep coming (the recent gap
 * between them well below batch_gather_us), a batch of messages waits
 * until its first job is batch_gather_us old or GATHER_FULL jobs are
 * queued. Lone messages (chat: a gap longer than that) never wait;
 * requests (sync, acks, groups) end the wait at once. */

/* The gap between j and the last job taken, capped at the window: a
 * pause weighs like any gap the window would not bridge, so a new stream
 * is recognised after about ten jobs. */
static int64_t gap_of(const struct im__worker *w, const struct im__job *j)
{
	int64_t gap = j->queued_us - w->last_queued_us, cap = w->cfg.batch_gather_us;

	if(w->last_queued_us == 0 || gap > cap) return cap;
	return gap < 0 ? 0 : gap;
}

/* The moving average of the gap between jobs (over about eight) once j
 * is counted. */
static int64_t gap_with(const struct im__worker *w, const struct im__job *j)
{
	int64_t avg = w->last_queued_us ? w->gap_us : w->cfg.batch_gather_us;

	return avg + (gap_of(w, j) - avg) / 8;
}

/* Jobs reach the queue only through im_worker__submit, which stamps
 * queued_us. */
static void took(struct im__worker *w, const struct im__job *j)
{
	w->gap_us = gap_with(w, j);
	w->last_queued_us = j->queued_us;
}

/* With mu held. True after waiting (the caller looks at the queue again);
 * false: take the batch now. */
static bool gather(struct im__worker *w)
{
	int64_t age, wait_us, limit = w->cfg.batch_gather_us;
	const struct im__job *j;

	if(limit == 0 || w->stop || w->replaying || w->queued >= GATHER_FULL) return false;
	/* Once per first job: a wait cut short by a request, a stop or a
	 * full queue is not started again. */
	if(w->head->queued_us == w->gathered_for) return false;
	/* The first job came after a pause: it is alone, whatever the
	 * last stream was. Fewer than four jobs expected in the window:
	 * waiting buys little. */
	if(gap_of(w, w->head) >= limit || gap_with(w, w->head) * 4 > limit) return false;
	for(j = w->head; j; j = j->next){
		if(j->kind != IM_JOB_MSG) return false;
	}
	age = im_mono_us() - w->head->queued_us;
	if(age >= limit) return false;
	wait_us = limit - age;
	w->gathering = true;
	im_cond__wait_us(&w->cv, &w->mu, wait_us);
	w->gathering = false;
	w->gathered_for = w->head ? w->head->queued_us : 0;
	return true;
}

/* Reads and writes go in batches of their own. A read in a batch that
 * writes answers only after its COMMIT (what it read may be rolled back
 * with it), and a COMMIT can hang (a synchronous standby gone): the reads
 * queued behind it are answered "store stalled" by the broker thread
 * (broker/stall.c), but those inside it would wait for the standby (the
 * nemesis measured 33 s). A read-only transaction commits at once. */
static bool reads_only(const struct im__job *j)
{
	switch(j->kind){
		case IM_JOB_SYNC: case IM_JOB_READS: case IM_JOB_CONVS: case IM_JOB_REPAIR: case IM_JOB_STATUS:
			return true;
		case IM_JOB_GROUP:
			return !strcmp(j->u.group.op, "list") || !strcmp(j->u.group.op, "info");
		default:
			return false;
	}
}

/* What a reader can answer: requests that change nothing, but a repair
 * (the cluster's order filter: its anchor reads the head in the writer's
 * order of commits) and a sync that must follow that anchor. */
bool im_work__for_readers(const struct im__job *j)
{
	if(j->kind == IM_JOB_REPAIR || (j->kind == IM_JOB_SYNC && j->u.sync.behind_writer)) return false;
	return reads_only(j);
}


static void *run(void *arg)
{
	struct im__worker *w = arg;
	struct im__job *jobs, **jt;
	size_t n;
	int64_t now;
	sigset_t all;

	/* Signals are the broker thread's business (the wake-up one too). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&w->mu);
	for(;;){
		if(w->head == NULL && !w->stop){
			now = im_mono_us();
			/* Completions not drained yet: the wake-up may have come just
			 * before the broker's epoll_wait; wake it again shortly. */
			if(w->dhead && now - w->pending_us >= IM_WORK_REPOKE_US && now - w->poked_us >= IM_WORK_REPOKE_US){
				w->poked_us = now;
				pthread_mutex_unlock(&w->mu);
				im_wake__poke();
				pthread_mutex_lock(&w->mu);
				continue;
			}
			im_cond__wait_us(&w->cv, &w->mu, w->dhead ? IM_WORK_REPOKE_US / 2
					: (housekeeping_due(w) - now / 1000) * 1000);
			if(w->head == NULL && !w->stop){
				pthread_mutex_unlock(&w->mu);
				housekeeping(w, im_mono_ms());
				pthread_mutex_lock(&w->mu);
			}
			continue;
		}
		if(w->head == NULL) break; /* stopping, queue empty */
		if(gather(w)) continue;
		/* Take up to batch_max jobs; an options job runs alone, first. */
		jobs = w->head;
		if(jobs->kind == IM_JOB_OPTIONS){
			w->head = jobs->next;
			if(w->head == NULL) w->tail = &w->head;
			w->queued--;
			w->finished++;
			pthread_mutex_unlock(&w->mu);
			apply_options(w, jobs);
			im_job__free(jobs);
			pthread_mutex_lock(&w->mu);
			continue;
		}
		for(n = 0, jt = &w->head; *jt && n < w->cfg.batch_max && (*jt)->kind != IM_JOB_OPTIONS
				&& reads_only(*jt) == reads_only(jobs); jt = &(*jt)->next){
			took(w, *jt);
			n++;
		}
		w->head = *jt;
		*jt = NULL;
		if(w->head == NULL) w->tail = &w->head;
		w->queued -= (uint32_t)n;
		pthread_mutex_unlock(&w->mu);
		__atomic_store_n(&w->busy_us, im_mono_us(), __ATOMIC_RELEASE);
		im_work__run_batch(w, jobs, n);
		__atomic_store_n(&w->busy_us, 0, __ATOMIC_RELEASE);
		now = im_mono_ms();
		if(now >= housekeeping_due(w)) housekeeping(w, now);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int im_worker__start(const struct im__config *cfg, struct im__journal *journal, struct im__metrics *metrics,
		const struct im__worker_hooks *hooks, struct im__worker **out)
{
	struct im__worker *w = im_calloc(1, sizeof(*w));
	size_t groups;
	int rc;

	*out = NULL;
	if(w == NULL) return MOSQ_ERR_NOMEM;
	w->metrics = metrics;
	w->journal = journal;
	if(hooks) w->hooks = *hooks;
	w->tail = &w->head;
	w->rtail = &w->rhead;
	w->dtail = &w->dhead;
	w->btail = &w->bhead;
	w->marker_fd = -1;
	pthread_mutex_init(&w->mu, NULL);
	im_cond__init(&w->cv);
	im_cond__init(&w->idle_cv);
	im_cond__init(&w->rcv);
	im_cond__init(&w->stored_cv);
	w->journal_dir = im_strdup(cfg->journal_dir);
	rc = im_config__clone(&w->cfg, cfg);
	if(rc == MOSQ_ERR_SUCCESS && cfg->store_key_file){
		/* The worker gets a keyring of its own (OpenSSL contexts are not
		 * shared between threads). */
		w->crypt = im_calloc(1, sizeof(*w->crypt));
		rc = w->crypt ? im_crypt__load(w->crypt, cfg->store_key_file) : MOSQ_ERR_NOMEM;
	}
	if(rc == MOSQ_ERR_SUCCESS && w->journal_dir == NULL) rc = MOSQ_ERR_NOMEM;
	if(rc == MOSQ_ERR_SUCCESS) rc = im_work__recover(w, cfg);
	if(rc == MOSQ_ERR_SUCCESS && w->hooks.group) rc = w->st.ops->each_group(&w->st, w->hooks.group, w->hooks.ctx);
	if(rc == MOSQ_ERR_SUCCESS && cfg->presence == IM_PRESENCE_CONTACTS && w->hooks.wrote){
		rc = w->st.ops->each_wrote(&w->st, w->hooks.wrote, w->hooks.ctx);
	}
	w->stored_lsn = w->last_msg_lsn = w->st.applied_lsn;
	if(rc == MOSQ_ERR_SUCCESS){
		IM_STAT_SET(w->metrics->timelines_cached, w->st.ops->cached(&w->st, &groups));
		g_worker = w;
		im_log__sink(post_log);
		/* Readers after the sink: a line they log goes through the
		 * completions, never to the broker's API from their thread. */
		if(cfg->store_readers) rc = im_work__readers_start(w, cfg, cfg->store_readers);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		if(pthread_create(&w->thread, NULL, run, w) != 0){
			g_worker = NULL;
			rc = MOSQ_ERR_UNKNOWN;
		}else{
			w->started = true;
		}
	}
	if(rc != MOSQ_ERR_SUCCESS){
		im_worker__stop(w);
		return rc;
	}
	*out = w;
	return MOSQ_ERR_SUCCESS;
}

void im_worker__identity(const struct im__worker *w, uint64_t *store_id, uint8_t key[16])
{
	*store_id = w->st.store_id;
	memcpy(key, w->st.frame_key, sizeof(w->st.frame_key));
}

void im_worker__stop(struct im__worker *w)
{
	struct im__done *d, *dn;

	if(w == NULL) return;
	if(w->started){
		pthread_mutex_lock(&w->mu);
		w->stop = true;
		pthread_cond_broadcast(&w->cv);
		pthread_mutex_unlock(&w->mu);
		pthread_join(w->thread, NULL);
	}
	/* Their last answers join the completions below. */
	im_work__readers_stop(w);
	g_worker = NULL;
	im_log__sink(NULL);
	/* Completions the broker thread did not drain: their log lines still
	 * matter; deliveries are for clients that are going away. */
	for(d = w->dhead; d; d = dn){
		dn = d->next;
		if(d->kind == IM_DONE_LOG) mosquitto_log_printf(d->level, "%s", (const char *)d->payload);
		free(d);
	}
	im_job__free_list(w->head);
	if(w->st.ops && w->st.applied_lsn) im_journal__cut(w->journal_dir, w->st.applied_lsn);
	im_store__close(&w->st);
	im_journal__close(w->journal);
	if(w->crypt){
		im_crypt__free(w->crypt);
		free(w->crypt);
	}
	if(w->marker_fd >= 0) close(w->marker_fd);
	im_buf__free(&w->frame);
	im_buf__free(&w->zbuf);
	im_buf__free(&w->plain);
	im_map__free(&w->new_tl, free);
	im_config__free(&w->cfg);
	free(w->journal_dir);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	pthread_cond_destroy(&w->idle_cv);
	pthread_cond_destroy(&w->rcv);
	pthread_cond_destroy(&w->stored_cv);
	free(w);
}
