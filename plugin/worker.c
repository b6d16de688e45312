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

#include "worker.h"

#define CUT_INTERVAL_MS 1000
#define REPOKE_US 1000          /* re-wake the broker thread if it has not drained by then */
#define QUIET_US 1000           /* no tick for this long: the broker thread is probably asleep */
#define BATCH_US 2000           /* stop adding jobs to a batch after this much work */
#define GATHER_FULL 64          /* a gathering batch is full enough at this many jobs */

static struct im__worker *g_worker; /* for post_log */

/* ---- completions ---- */

struct im__done *im_work__done(enum im_done_kind kind, size_t extra)
{
	struct im__done *d = im_calloc(1, sizeof(*d) + extra);

	if(d) d->kind = kind;
	return d;
}

const char *im_work__str(struct im__done *d, size_t *used, const char *s)
{
	size_t n;
	char *out;

	if(s == NULL) return NULL;
	n = strlen(s) + 1;
	out = d->data + *used;
	memcpy(out, s, n);
	*used += n;
	return out;
}

void im_work__emit(struct im__worker *w, struct im__done *d)
{
	if(d == NULL) return;
	/* Replaying at start nobody here is connected yet; but other brokers
	 * of a cluster may have devices waiting for what was journaled here
	 * before a crash: kept to be shipped after the commit (run_batch). */
	if(w->replaying && !(w->p->cluster && (d->kind == IM_DONE_FRAME || d->kind == IM_DONE_MEMBERS))){
		free(d);
		return;
	}
	d->next = NULL;
	*w->btail = d;
	w->btail = &d->next;
}

#define SLEN(s) ((s) ? strlen(s) + 1 : 0)

void im_work__reply(struct im__worker *w, const struct im__job *j, const ProtobufCMessage *msg, bool sync_reply)
{
	char topic[sizeof(IM_CONTROL_PREFIX) + 64];
	const char *dest = j->to.topic;
	size_t n = protobuf_c_message_get_packed_size(msg), used = 0;
	struct im__done *d;

	if(j->to.client_id == NULL) return;
	if(dest == NULL){
		snprintf(topic, sizeof(topic), IM_CONTROL_PREFIX "%s/response", j->to.op);
		dest = topic;
	}
	d = im_work__done(IM_DONE_REPLY, SLEN(j->to.client_id) + SLEN(dest) + j->to.corr_len + n);
	if(d == NULL){
		im_log(MOSQ_LOG_WARNING, "im: out of memory: a %s reply to \"%s\" is lost.", j->to.op, j->to.client_id);
		return;
	}
	d->client_id = im_work__str(d, &used, j->to.client_id);
	d->topic = im_work__str(d, &used, dest);
	if(j->to.corr_len){
		memcpy(d->data + used, j->to.corr, j->to.corr_len);
		d->corr = d->data + used;
		d->corr_len = j->to.corr_len;
		used += j->to.corr_len;
	}
	protobuf_c_message_pack(msg, (uint8_t *)d->data + used);
	d->payload = d->data + used;
	d->len = n;
	d->sync_reply = sync_reply;
	im_work__emit(w, d);
}

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

void im_worker__submit(struct im__plugin *p, struct im__job *j)
{
	struct im__worker *w = p->worker;

	j->next = NULL;
	j->queued_us = im_mono_us();
	__atomic_store_n(&w->submit_us, j->queued_us, __ATOMIC_RELAXED);
	pthread_mutex_lock(&w->mu);
	*w->tail = j;
	w->tail = &j->next;
	w->submitted++;
	w->queued++;
	if(j->kind == IM_JOB_MSG) __atomic_add_fetch(&w->backlog, j->len, __ATOMIC_RELAXED);
	/* A gathering worker wakes by itself when its time is up; a signal
	 * per job would wake it for nothing (a futex call here, a context
	 * switch there). A full batch or a job that is not a message (a
	 * reply someone waits for, a reload, a stop) ends the gathering. */
	if(!w->gathering || w->queued >= GATHER_FULL || j->kind != IM_JOB_MSG) pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

size_t im_worker__drain(struct im__plugin *p, void (*fn)(struct im__plugin *, struct im__done *))
{
	struct im__worker *w = p->worker;
	struct im__done *d, *next;
	size_t n = 0;

	if(w == NULL || !__atomic_load_n(&w->has_done, __ATOMIC_ACQUIRE)) return 0;
	pthread_mutex_lock(&w->mu);
	d = w->dhead;
	w->dhead = NULL;
	w->dtail = &w->dhead;
	__atomic_store_n(&w->has_done, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->mu);
	if(d) im_metrics__hist(p->metrics.handoff_hist, im_mono_us() - d->ready_us);
	for(; d; d = next, n++){
		next = d->next;
		fn(p, d);
	}
	return n;
}

uint64_t im_worker__backlog(const struct im__plugin *p)
{
	return p->worker ? __atomic_load_n(&p->worker->backlog, __ATOMIC_RELAXED) : 0;
}

void im_worker__wait_idle(struct im__plugin *p)
{
	struct im__worker *w = p->worker;

	pthread_mutex_lock(&w->mu);
	while(w->finished < w->submitted && !w->stop) pthread_cond_wait(&w->idle_cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

/* ---- jobs ---- */

struct im__job *im_job__new(enum im_job_kind kind, size_t data_len, const char *client_id,
		const char *op, const char *resp_topic, const void *corr, uint16_t corr_len)
{
	size_t extra = data_len + SLEN(client_id) + SLEN(resp_topic) + corr_len, used = 0;
	struct im__job *j = im_calloc(1, sizeof(*j) + extra);
	char *tail;

	if(j == NULL) return NULL;
	tail = (char *)(j + 1);
	j->kind = kind;
	j->len = data_len;
	j->data = (uint8_t *)tail;
	used = data_len;
	if(client_id){
		j->to.client_id = tail + used;
		memcpy(tail + used, client_id, strlen(client_id) + 1);
		used += strlen(client_id) + 1;
	}
	if(resp_topic){
		j->to.topic = tail + used;
		memcpy(tail + used, resp_topic, strlen(resp_topic) + 1);
		used += strlen(resp_topic) + 1;
	}
	if(corr_len){
		j->to.corr = tail + used;
		memcpy(tail + used, corr, corr_len);
		j->to.corr_len = corr_len;
	}
	snprintf(j->to.op, sizeof(j->to.op), "%s", op ? op : "receipt");
	return j;
}

void im_job__free(struct im__job *j)
{
	if(j == NULL) return;
	if(j->kind == IM_JOB_OPTIONS && j->u.options){
		im_config__free(j->u.options);
		free(j->u.options);
	}
	free(j);
}

/* ---- the applied marker ----
 * <journal>/applied holds the highest LSN the worker saw committed. The
 * database holds its own applied LSN, in the same transaction as the
 * records. If the database is ever behind the marker, it lost committed
 * transactions (a deleted or damaged WAL, a restored backup): the journal
 * may still hold the records and roll it forward, but group changes and
 * cursors of that time are gone, and history may differ from what clients
 * saw. The store then takes a new id so that clients start over. The marker
 * is written after the commit, never ahead of it, so a crash cannot make
 * it claim more than the database has. */

static uint64_t marker_read(int fd)
{
	uint8_t b[8];
	uint64_t v = 0;
	int i;

	if(fd < 0 || pread(fd, b, 8, 0) != 8) return 0;
	for(i = 7; i >= 0; i--) v = (v << 8) | b[i];
	return v;
}

static void marker_write(struct im__worker *w, uint64_t lsn)
{
	uint8_t b[8];
	int i;

	for(i = 0; i < 8; i++) b[i] = (uint8_t)(lsn >> (8 * i));
	if(w->marker_fd >= 0 && pwrite(w->marker_fd, b, 8, 0) != 8){
		im_log(MOSQ_LOG_WARNING, "im: journal: cannot update %s/applied: %s.", w->journal_dir, strerror(errno));
	}
}

/* ---- batches ---- */

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
 * or has left them waiting for REPOKE_US. A signal costs the broker thread
 * an interrupted system call and a trip through the kernel's signal code,
 * which measured ~10% of its time when sent per batch; so at most one per
 * tick. "Probably asleep": no tick for QUIET_US (a long sleep, or a long
 * pass), or no job queued since its last tick. The tick is the last step
 * of a pass of the broker's loop: a job queued after the last tick means
 * the pass that queued it is still running and will drain at its tick;
 * otherwise that pass has ticked already and the loop went back to
 * epoll_wait, where with nothing to read it sleeps (up to 100 ms on 2.0)
 * until the repoke. Without that second test a message that arrived
 * alone waited one or two REPOKE_US for its delivery (lone DMs paced at
 * 200 and 1,000/s: hand-off p50 0.3-2 ms before, at most 0.13 ms after;
 * the cost, more signals at saturation, and how it was measured: "Waking
 * the broker thread" in docs/PERFORMANCE.md). */
static void publish_batch(struct im__worker *w, size_t n_jobs)
{
	int64_t now = im_mono_us(), tick;
	bool poke = false;

	/* Committed: other brokers of a cluster may hear of it now. */
	im_cluster__ship(w->p, w->st.store_id, w->st.frame_key, w->bhead);

	pthread_mutex_lock(&w->mu);
	if(w->bhead){
		w->bhead->ready_us = now;
		if(w->dhead == NULL) w->pending_us = now;
		*w->dtail = w->bhead;
		w->dtail = w->btail;
		__atomic_store_n(&w->has_done, 1, __ATOMIC_RELEASE);
		tick = __atomic_load_n(&w->tick_us, __ATOMIC_RELAXED);
		poke = now - tick >= QUIET_US
			|| (__atomic_load_n(&w->submit_us, __ATOMIC_RELAXED) < tick && w->poked_us < tick)
			|| (now - w->pending_us >= REPOKE_US && now - w->poked_us >= REPOKE_US);
		if(poke) w->poked_us = now;
	}
	/* Replayed jobs were never submitted: counting them would make
	 * im_worker__wait_idle return while submitted ones are still queued. */
	if(!w->replaying) w->finished += n_jobs;
	pthread_cond_broadcast(&w->idle_cv);
	pthread_mutex_unlock(&w->mu);
	w->bhead = NULL;
	w->btail = &w->bhead;
	if(poke) im_wake__poke();
}

void im_worker__ticked(struct im__plugin *p)
{
	if(p->worker) __atomic_store_n(&p->worker->tick_us, im_mono_us(), __ATOMIC_RELAXED);
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
	struct im__job *j;
	struct im__rec r;
	size_t k = 0, u = 0, i;
	int rc = MOSQ_ERR_SUCCESS;

	if(l && names && create){
		for(j = jobs; j; j = j->next){
			if(j->kind == IM_JOB_MSG && im_rec__decode(j->data, j->len, &r)){
				l[k++] = (struct lock_name){r.to, false};
				if(r.own[0]) l[k++] = (struct lock_name){r.own, true};
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
	}
	im_free(l);
	im_free(names);
	im_free(create);
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

/* Applies jobs (a list) in one transaction; retries until it commits or
 * the worker stops (or, replaying at start, gives up after a few tries:
 * then the broker does not start). Frees the jobs. */
static int run_batch(struct im__worker *w, struct im__job *jobs, size_t n)
{
	struct im__job *j, *next;
	uint64_t last_lsn, bytes;
	int64_t t0;
	int attempt = 0, rc;
	unsigned pause_ms = 50;
	size_t removed = 0;

	for(;;){
		last_lsn = 0;
		bytes = 0;
		t0 = im_mono_us();
		if(attempt == 0 && jobs->queued_us) im_metrics__hist(w->p->metrics.queue_hist, t0 - jobs->queued_us);
		rc = w->st.ops->begin(&w->st);
		if(rc == MOSQ_ERR_SUCCESS && attempt > 0 && (jobs = drop_applied(w, jobs, &n)) == NULL){
			w->st.ops->rollback(&w->st);
			last_lsn = w->st.applied_lsn;   /* for the marker */
			break;
		}
		if(rc == MOSQ_ERR_SUCCESS && w->st.ops->prelock) rc = prelock_batch(w, jobs, n);
		for(j = jobs; j && rc == MOSQ_ERR_SUCCESS; j = j->next){
			rc = run_job(w, j);
			if(j->kind == IM_JOB_MSG){
				last_lsn = j->lsn;
				bytes += j->len;
			}
		}
		if(rc == MOSQ_ERR_SUCCESS) rc = w->st.ops->commit(&w->st, last_lsn);
		else w->st.ops->rollback(&w->st);
		im_metrics__hist(w->p->metrics.commit_hist, im_mono_us() - t0);
		if(rc == MOSQ_ERR_SUCCESS) break;
		IM_STAT_ADD(w->p->metrics.store_errors, 1);
		drop_batch_done(w);
		if(attempt++ == 0){
			im_log(MOSQ_LOG_ERR, "im: store: a batch of %zu jobs failed; its requests are answered \"store failure\", its messages are kept in the journal and retried.", n);
			jobs = fail_requests(w, jobs, &n, &removed);
			publish_batch(w, removed);
		}
		if(jobs == NULL) break;
		if(w->replaying && attempt >= 3){
			for(; jobs; jobs = next){
				next = jobs->next;
				im_job__free(jobs);
			}
			return MOSQ_ERR_UNKNOWN;
		}
		pthread_mutex_lock(&w->mu);
		if(!w->stop){
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_nsec += (long)pause_ms * 1000000L;
			until.tv_sec += until.tv_nsec / 1000000000L;
			until.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&w->cv, &w->mu, &until);
		}
		rc = w->stop;
		pthread_mutex_unlock(&w->mu);
		if(rc){
			/* Stopping with messages unstored: they stay in the journal
			 * and are applied at the next start. */
			for(; jobs; jobs = next){
				next = jobs->next;
				im_job__free(jobs);
			}
			return MOSQ_ERR_UNKNOWN;
		}
		if(pause_ms < 2000) pause_ms *= 2;
	}
	if(last_lsn) marker_write(w, last_lsn);
	t0 = im_mono_us();
	for(j = jobs; j; j = j->next){
		if(j->kind == IM_JOB_MSG && j->queued_us) im_metrics__hist(w->p->metrics.ship_hist, t0 - j->queued_us);
	}
	w->st.ops->scrub(&w->st);
	if(attempt > 0) im_log(MOSQ_LOG_NOTICE, "im: store: the batch committed after %d attempt(s).", attempt + 1);
	IM_STAT_ADD(w->p->metrics.batches, 1);
	/* Replayed records were never submitted, so never counted. */
	if(!w->replaying) __atomic_sub_fetch(&w->backlog, bytes, __ATOMIC_RELAXED);
	for(; jobs; jobs = next){
		next = jobs->next;
		im_job__free(jobs);
	}
	if(w->replaying){
		im_cluster__ship(w->p, w->st.store_id, w->st.frame_key, w->bhead);
		drop_batch_done(w);
		return MOSQ_ERR_SUCCESS;
	}
	publish_batch(w, n);
	return MOSQ_ERR_SUCCESS;
}

/* ---- background work: retention, journal cut ---- */

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
		IM_STAT_SET(w->p->metrics.timelines_cached, w->st.ops->cached(&w->st, &groups));
		IM_STAT_SET(w->p->metrics.groups_cached, groups);
	}
	if((cfg->retention_seconds == 0 && cfg->retention_messages == 0) || now < w->next_trim_ms) return;
	if(cfg->retention_seconds) cutoff = now - cfg->retention_seconds * 1000;
	rows = w->st.ops->trim_step(&w->st, cutoff, cfg->retention_messages, cfg->trim_batch, &w->trim_cursor, &done);
	if(rows > 0) IM_STAT_ADD(w->p->metrics.trimmed, rows);
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
	struct timespec until;

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
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += wait_us * 1000L;
	until.tv_sec += until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	w->gathering = true;
	pthread_cond_timedwait(&w->cv, &w->mu, &until);
	w->gathering = false;
	w->gathered_for = w->head ? w->head->queued_us : 0;
	return true;
}

static void *run(void *arg)
{
	struct im__worker *w = arg;
	struct im__job *jobs, **jt;
	struct timespec until;
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
			if(w->dhead && now - w->pending_us >= REPOKE_US && now - w->poked_us >= REPOKE_US){
				w->poked_us = now;
				pthread_mutex_unlock(&w->mu);
				im_wake__poke();
				pthread_mutex_lock(&w->mu);
				continue;
			}
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_nsec += w->dhead ? REPOKE_US * 1000L / 2 : 5000000L;
			until.tv_sec += until.tv_nsec / 1000000000L;
			until.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&w->cv, &w->mu, &until);
			if(w->head == NULL && !w->stop){
				pthread_mutex_unlock(&w->mu);
				housekeeping(w, im_now_ms());
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
		for(n = 0, jt = &w->head; *jt && n < w->cfg.batch_max && (*jt)->kind != IM_JOB_OPTIONS; jt = &(*jt)->next){
			took(w, *jt);
			n++;
		}
		w->head = *jt;
		*jt = NULL;
		if(w->head == NULL) w->tail = &w->head;
		w->queued -= (uint32_t)n;
		pthread_mutex_unlock(&w->mu);
		run_batch(w, jobs, n);
		now = im_now_ms();
		if(now - w->last_cut_ms >= CUT_INTERVAL_MS || now >= w->next_trim_ms) housekeeping(w, now);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* ---- start, replay, stop ---- */

struct replay {
	struct im__worker *w;
	struct im__job *jobs, **tail;
	size_t n;
	uint64_t count;
};

static int replay_flush(struct replay *r)
{
	int rc = MOSQ_ERR_SUCCESS;

	if(r->n) rc = run_batch(r->w, r->jobs, r->n);
	r->jobs = NULL;
	r->tail = &r->jobs;
	r->n = 0;
	return rc;
}

static int replay_one(void *ctx, uint64_t lsn, const uint8_t *payload, size_t len)
{
	struct replay *r = ctx;
	struct im__job *j = im_job__new(IM_JOB_MSG, len, NULL, NULL, NULL, NULL, 0);
	struct im__rec rec;

	if(j == NULL) return -1;
	memcpy(j->data, payload, len);
	j->lsn = lsn;
	if(!im_rec__decode(j->data, len, &rec)){
		im_log(MOSQ_LOG_ERR, "im: journal: record %" PRIu64 " is not a message record this plugin can read.", lsn);
		im_job__free(j);
		return -1;
	}
	snprintf(j->user, sizeof(j->user), "%s", rec.sender);
	*r->tail = j;
	r->tail = &j->next;
	r->n++;
	r->count++;
	if(r->n >= 1024 && replay_flush(r) != MOSQ_ERR_SUCCESS) return -1;
	return 0;
}

static enum im_row load_group(void *ctx, const char *group, const char *owner, const char *const *members, size_t n)
{
	im_policy__members(ctx, group, "create", owner, members, n);
	return IM_ROW_NEXT;
}

static enum im_row load_wrote(void *ctx, const char *writer, const char *reader)
{
	im_policy__wrote(ctx, writer, reader);
	return IM_ROW_NEXT;
}

static int clone_config(struct im__config *dst, const struct im__config *src)
{
	char **a;
	size_t n = 0, i;

	memset(dst, 0, sizeof(*dst));
	im_config__copy_runtime(dst, src);
	dst->synchronous = src->synchronous;
	dst->page_size = src->page_size;
	dst->presence = src->presence;
	dst->prefix = im_strdup(src->prefix);
	dst->prefix_len = src->prefix_len;
	for(a = src->admins; a && *a; a++) n++;
	dst->admins = im_calloc(n + 1, sizeof(char *));
	if(dst->prefix == NULL || dst->admins == NULL) return MOSQ_ERR_NOMEM;
	for(i = 0; i < n; i++){
		if((dst->admins[i] = im_strdup(src->admins[i])) == NULL) return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}

/* The backend plugin_opt_store names. */
static int open_backend(struct im__plugin *p, struct im__worker *w, const struct im__store_options *o)
{
	struct im__store_pg_options po = {.conninfo = p->cfg.pg_conninfo, .node_id = p->cfg.node_id};
	char where[512];

	if(p->cfg.store != IM_STORE_PG) return im_store__open_sqlite(&w->st, o);
	if(im_store__open_pg(&w->st, &po) == MOSQ_ERR_SUCCESS) return MOSQ_ERR_SUCCESS;
	im_store__pg_describe(p->cfg.pg_conninfo, where, sizeof(where));
	im_log(MOSQ_LOG_ERR, "im: store: cannot open the PostgreSQL store at plugin_opt_pg_conninfo (%s) as node \"%s\" (plugin_opt_node_id); the plugin does not start.",
			where, p->cfg.node_id);
	return MOSQ_ERR_UNKNOWN;
}

static int open_store(struct im__plugin *p, struct im__worker *w)
{
	struct im__store_options o = {
		.path = p->cfg.db_path,
		.synchronous = p->cfg.synchronous,
		.busy_timeout_ms = p->cfg.busy_timeout_ms,
		.page_size = p->cfg.page_size,
		.checkpoint_thread = !p->cfg.checkpoint_inline,
	};
	struct replay r = {0};
	bool gap = false, rollback, existed;
	int rc;

	uint64_t marker;
	char path[4096];
	/* What the store is called in log lines. */
	const char *name = p->cfg.store == IM_STORE_PG ? "the PostgreSQL store" : p->cfg.db_path;

	if(open_backend(p, w, &o) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	w->st.crypt = w->crypt;
	if(mkdir(p->cfg.journal_dir, 0700) != 0 && errno != EEXIST){
		im_log(MOSQ_LOG_ERR, "im: journal: cannot create \"%s\": %s (it must be writable by the broker's user).",
				p->cfg.journal_dir, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	snprintf(path, sizeof(path), "%s/applied", p->cfg.journal_dir);
	w->marker_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	marker = marker_read(w->marker_fd);
	if(marker > w->st.applied_lsn && w->st.created){
		gap = true; /* a database existed here: warned about below */
	}else if(marker > w->st.applied_lsn){
		im_log(MOSQ_LOG_WARNING, "im: store: \"%s\" lost stored messages (it holds up to journal record %" PRIu64 ", it had stored %" PRIu64 "): a deleted or damaged write-ahead log, or a restored backup. What the journal still holds is applied again; a new store id tells clients to start over.",
				name, w->st.applied_lsn, marker);
		gap = true;
	}
	r.w = w;
	r.tail = &r.jobs;
	w->replaying = true;
	rollback = gap && !w->st.created;
	existed = gap;
	rc = im_journal__open(&p->journal, p->cfg.journal_dir, p->cfg.synchronous == 2, w->st.applied_lsn,
			replay_one, &r, &gap);
	gap = gap || existed;
	p->journal.rotate_age_ms = (int64_t)p->cfg.journal_rotate_seconds * 1000;
	if(rc == MOSQ_ERR_SUCCESS) rc = replay_flush(&r);
	else while(r.jobs){ struct im__job *nx = r.jobs->next; im_job__free(r.jobs); r.jobs = nx; }
	w->replaying = false;
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	if(r.count){
		im_log(MOSQ_LOG_NOTICE, "im: journal: %" PRIu64 " acknowledged message(s) not yet stored at the last stop were applied (up to record %" PRIu64 ").",
				r.count, w->st.applied_lsn);
	}
	if(gap && !rollback && !w->st.created){
		im_log(MOSQ_LOG_WARNING, "im: store: \"%s\" is behind its journal (stored up to record %" PRIu64 ", the journal starts later): it was rolled back or restored and what came after is lost.",
				name, w->st.applied_lsn);
	}else if(gap && w->st.created){
		im_log(MOSQ_LOG_WARNING, "im: store: a new database was made at \"%s\" although the journal in \"%s\" shows an earlier one existed.",
				name, p->cfg.journal_dir);
	}
	if(gap){
		/* Seqs would be handed out again to other messages: a new store id
		 * tells clients to start over instead of dropping new messages as
		 * duplicates of ones they hold. (A new database has a new id.) */
		if((!w->st.created && im_store__renew_id(&w->st) != MOSQ_ERR_SUCCESS)
				|| w->st.ops->begin(&w->st) != MOSQ_ERR_SUCCESS
				|| w->st.ops->commit(&w->st, p->journal.next_lsn - 1) != MOSQ_ERR_SUCCESS){
			return MOSQ_ERR_UNKNOWN;
		}
		marker_write(w, p->journal.next_lsn - 1);
		im_log(MOSQ_LOG_WARNING, "im: store: new store id %016" PRIx64 ": clients drop what they remember of seqs and sync from 0.", w->st.store_id);
	}
	im_journal__cut(p->cfg.journal_dir, w->st.applied_lsn);
	return MOSQ_ERR_SUCCESS;
}

int im_worker__start(struct im__plugin *p)
{
	struct im__worker *w = im_calloc(1, sizeof(*w));
	size_t groups;
	int rc;

	if(w == NULL) return MOSQ_ERR_NOMEM;
	p->worker = w;
	w->p = p;
	w->tail = &w->head;
	w->dtail = &w->dhead;
	w->btail = &w->bhead;
	w->marker_fd = -1;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	pthread_cond_init(&w->idle_cv, NULL);
	w->journal_dir = im_strdup(p->cfg.journal_dir);
	rc = clone_config(&w->cfg, &p->cfg);
	if(rc == MOSQ_ERR_SUCCESS && p->cfg.store_key_file){
		/* The worker gets a keyring of its own (OpenSSL contexts are not
		 * shared between threads). */
		w->crypt = im_calloc(1, sizeof(*w->crypt));
		rc = w->crypt ? im_crypt__load(w->crypt, p->cfg.store_key_file) : MOSQ_ERR_NOMEM;
	}
	if(rc == MOSQ_ERR_SUCCESS && w->journal_dir == NULL) rc = MOSQ_ERR_NOMEM;
	if(rc == MOSQ_ERR_SUCCESS) rc = open_store(p, w);
	if(rc == MOSQ_ERR_SUCCESS){
		p->store_id = w->st.store_id;
		memcpy(p->frame_key, w->st.frame_key, sizeof(p->frame_key));
		rc = w->st.ops->each_group(&w->st, load_group, p);
	}
	if(rc == MOSQ_ERR_SUCCESS && p->cfg.presence == IM_PRESENCE_CONTACTS){
		rc = w->st.ops->each_wrote(&w->st, load_wrote, p);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		IM_STAT_SET(p->metrics.timelines_cached, w->st.ops->cached(&w->st, &groups));
		g_worker = w;
		im_log__sink(post_log);
		if(pthread_create(&w->thread, NULL, run, w) != 0){
			g_worker = NULL;
			rc = MOSQ_ERR_UNKNOWN;
		}else{
			w->started = true;
		}
	}
	if(rc != MOSQ_ERR_SUCCESS) im_worker__stop(p);
	return rc;
}

void im_worker__stop(struct im__plugin *p)
{
	struct im__worker *w = p->worker;
	struct im__job *j, *next;
	struct im__done *d, *dn;

	if(w == NULL) return;
	if(w->started){
		pthread_mutex_lock(&w->mu);
		w->stop = true;
		pthread_cond_broadcast(&w->cv);
		pthread_mutex_unlock(&w->mu);
		pthread_join(w->thread, NULL);
	}
	g_worker = NULL;
	im_log__sink(NULL);
	/* Completions the broker thread did not drain: their log lines still
	 * matter; deliveries are for clients that are going away. */
	for(d = w->dhead; d; d = dn){
		dn = d->next;
		if(d->kind == IM_DONE_LOG) mosquitto_log_printf(d->level, "%s", (const char *)d->payload);
		free(d);
	}
	for(j = w->head; j; j = next){
		next = j->next;
		im_job__free(j);
	}
	if(w->st.ops && w->st.applied_lsn) im_journal__cut(w->journal_dir, w->st.applied_lsn);
	im_store__close(&w->st);
	im_journal__close(&p->journal);
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
	free(w);
	p->worker = NULL;
}
