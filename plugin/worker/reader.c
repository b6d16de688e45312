/*
 * Readers [W]: threads beside the writer that answer the requests which
 * change nothing (sync, read marks, the conversation list, group list and
 * info, bare answers), each on a store connection of its own.
 *
 * Why: with one thread doing everything, a heavy reader (the
 * conversation list of a user in 20,000 groups, a 100,000-message sync)
 * held up other users' messages for seconds, and a COMMIT that hung (a
 * lost synchronous standby) silenced every sync too. Readers see what
 * the writer committed: SQLite readers in WAL mode never wait for the
 * writer's lock, and a PostgreSQL read-only transaction does not wait for
 * a standby; a transaction that does is not visible to others until it
 * is confirmed, so a reader never hands out what a failover could lose.
 *
 * A reader is a struct im__worker with main pointing at the writer: the
 * job code (read.c, conv.c, group.c) and the batch code are the same. It
 * takes requests from the writer's read queue and hands its answers to
 * the writer's completions, both under the writer's mutex. It never calls
 * the broker. What it reads is the last commit: a request sent before the
 * answer to a change (an ack, a group change) may not see that change yet.
 */
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/open.h"
#include "worker/internal.h"

/* Requests a reader takes at once: one read transaction for several is
 * cheaper, but a heavy one holds up those beside it. */
#define READ_BATCH 8
/* How long a request waits for the messages queued before it (below). */
#define READ_WAIT_US 1000000
/* Readers' niceness (Linux: per thread). Reads are bulk work; what users
 * wait on is a message's path, the broker thread and the writer. On a
 * busy machine the readers yield to them: with 100 heavy reads kept
 * queued (bench/readers.py --quick, 2 cores), another user's DM p99 was
 * 24-41 ms with the readers at nice 0, 16-18 ms at 10 (and 154-401 ms
 * with no readers), at the cost of ~20% fewer heavy answers per second. */
#define READER_NICE 10

static void config_drop(struct im__config *cfg)
{
	if(cfg == NULL) return;
	im_config__free(cfg);
	free(cfg);
}

static void crypt_drop(struct im__crypt *c)
{
	if(c == NULL) return;
	im_crypt__free(c);
	free(c);
}

/* With the writer's mu held: options of a reload waiting for r. */
static void take_options(struct im__worker *r)
{
	struct im__config *cfg = r->new_cfg;
	struct im__crypt *c = r->new_crypt;

	r->new_cfg = NULL;
	r->new_crypt = NULL;
	if(cfg){
		im_config__free(&r->cfg);
		r->cfg = *cfg;
		free(cfg);
	}
	if(c && r->crypt){
		crypt_drop(r->crypt);
		r->crypt = c;
		r->st.crypt = c;
	}else{
		crypt_drop(c);
	}
}

/* With the writer's mu held. A client that publishes and then syncs (or
 * asks for its conversations) expects to see what it published: the
 * writer has it queued, acknowledged, and stores it within a batch or
 * two. So a reader lets the writer store the messages queued before its
 * requests, but waits READ_WAIT_US at most: a writer that is stuck (a
 * COMMIT waiting for a lost standby) does not hold reads up. Those then
 * answer with what is committed; the rest comes live once stored. */
static void wait_for_writer(struct im__worker *w, const struct im__job *jobs)
{
	const struct im__job *j;
	uint64_t need = 0;
	int64_t deadline = 0, left;

	for(j = jobs; j; j = j->next){
		if(j->lsn > need) need = j->lsn;
		if(deadline == 0 || j->queued_us + READ_WAIT_US < deadline) deadline = j->queued_us + READ_WAIT_US;
	}
	while(w->stored_lsn < need && !w->stop && (left = deadline - im_mono_us()) > 0){
		im_cond__wait_us(&w->stored_cv, &w->mu, left);
	}
}

static void *read_run(void *arg)
{
	struct im__worker *r = arg, *w = r->main;
	struct im__job *jobs, **jt;
	uint64_t gen;
	size_t n;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	/* Best effort: without it the readers just compete as equals. */
	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), READER_NICE);
	pthread_mutex_lock(&w->mu);
	for(;;){
		if(w->rhead == NULL){
			if(w->stop) break;
			pthread_cond_wait(&w->rcv, &w->mu);
			continue;
		}
		jobs = w->rhead;
		for(n = 0, jt = &w->rhead; *jt && n < READ_BATCH; jt = &(*jt)->next) n++;
		w->rhead = *jt;
		*jt = NULL;
		if(w->rhead == NULL) w->rtail = &w->rhead;
		w->rqueued -= (uint32_t)n;
		/* More left: another reader may take them meanwhile. */
		if(w->rhead) pthread_cond_signal(&w->rcv);
		if(r->new_cfg || r->new_crypt) take_options(r);
		wait_for_writer(w, jobs);
		pthread_mutex_unlock(&w->mu);
		/* Busy from here: the wait above is bounded and no sign of a
		 * stuck store (the stall watch looks at the writer for that). */
		__atomic_store_n(&r->busy_us, im_mono_us(), __ATOMIC_RELEASE);
		/* The writer changed groups since this reader last looked: its
		 * cached member sets may be old. */
		gen = __atomic_load_n(&w->groups_gen, __ATOMIC_ACQUIRE);
		if(gen != r->seen_gen){
			im_store__forget_group(&r->st, NULL, 0);
			r->seen_gen = gen;
		}
		im_work__run_batch(r, jobs, n);
		__atomic_store_n(&r->busy_us, 0, __ATOMIC_RELEASE);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void reader_free(struct im__worker *r)
{
	if(r == NULL) return;
	im_store__close(&r->st);
	crypt_drop(r->crypt);
	config_drop(r->new_cfg);
	crypt_drop(r->new_crypt);
	im_buf__free(&r->frame);
	im_buf__free(&r->zbuf);
	im_buf__free(&r->plain);
	im_config__free(&r->cfg);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	pthread_cond_destroy(&r->idle_cv);
	free(r);
}

static struct im__worker *reader_new(struct im__worker *w, const struct im__config *cfg)
{
	struct im__worker *r = im_calloc(1, sizeof(*r));

	if(r == NULL) return NULL;
	r->main = w;
	r->metrics = w->metrics;
	r->btail = &r->bhead;
	r->marker_fd = -1;
	pthread_mutex_init(&r->mu, NULL);
	im_cond__init(&r->cv);
	im_cond__init(&r->idle_cv);
	if(im_config__clone(&r->cfg, &w->cfg) != MOSQ_ERR_SUCCESS
			|| (w->crypt && ((r->crypt = im_calloc(1, sizeof(*r->crypt))) == NULL
				|| im_crypt__clone(r->crypt, w->crypt) != MOSQ_ERR_SUCCESS))
			|| im_store__open_reader(&r->st, cfg) != MOSQ_ERR_SUCCESS){
		reader_free(r);
		return NULL;
	}
	r->st.crypt = r->crypt;
	/* The writer's identity, which recovery may have just renewed (it is
	 * written at the writer's next commit). */
	r->st.store_id = w->st.store_id;
	memcpy(r->st.frame_key, w->st.frame_key, sizeof(r->st.frame_key));
	return r;
}

int im_work__readers_start(struct im__worker *w, const struct im__config *cfg, size_t n)
{
	struct im__worker *r;

	w->readers = im_calloc(n, sizeof(*w->readers));
	if(w->readers == NULL) return MOSQ_ERR_NOMEM;
	while(w->n_readers < n){
		if((r = reader_new(w, cfg)) == NULL){
			im_log(MOSQ_LOG_ERR, "im: store: cannot open reader %zu of %zu (plugin_opt_store_readers).", w->n_readers + 1, n);
			return MOSQ_ERR_UNKNOWN;
		}
		if(pthread_create(&r->thread, NULL, read_run, r) != 0){
			reader_free(r);
			return MOSQ_ERR_UNKNOWN;
		}
		r->started = true;
		w->readers[w->n_readers++] = r;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_work__readers_stop(struct im__worker *w)
{
	size_t i;

	if(w->readers == NULL) return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_broadcast(&w->rcv);
	pthread_cond_broadcast(&w->stored_cv);
	pthread_mutex_unlock(&w->mu);
	for(i = 0; i < w->n_readers; i++){
		pthread_join(w->readers[i]->thread, NULL);
		reader_free(w->readers[i]);
	}
	free(w->readers);
	w->readers = NULL;
	w->n_readers = 0;
	im_job__free_list(w->rhead);
	w->rhead = NULL;
	w->rtail = &w->rhead;
}

void im_work__readers_options(struct im__worker *w)
{
	struct im__config *cfg;
	struct im__crypt *c;
	struct im__worker *r;
	size_t i;

	for(i = 0; i < w->n_readers; i++){
		r = w->readers[i];
		cfg = im_calloc(1, sizeof(*cfg));
		c = w->crypt ? im_calloc(1, sizeof(*c)) : NULL;
		if(cfg == NULL || im_config__clone(cfg, &w->cfg) != MOSQ_ERR_SUCCESS
				|| (w->crypt && (c == NULL || im_crypt__clone(c, w->crypt) != MOSQ_ERR_SUCCESS))){
			/* Out of memory: that reader keeps the options it had. */
			config_drop(cfg);
			free(c);
			continue;
		}
		pthread_mutex_lock(&w->mu);
		config_drop(r->new_cfg);
		crypt_drop(r->new_crypt);
		r->new_cfg = cfg;
		r->new_crypt = c;
		pthread_mutex_unlock(&w->mu);
	}
}
