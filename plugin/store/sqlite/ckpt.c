/*
 * WAL checkpoints off the broker's thread.
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses the
 * threshold, on whichever thread committed: here, the broker's only
 * thread, so every client would wait for a checkpoint (and its fsync).
 * Instead the main connection turns wal_autocheckpoint off and this thread,
 * with a connection of its own, runs PASSIVE checkpoints: they copy what
 * they can without taking any lock a writer needs, and the writer restarts
 * the WAL from its beginning once a checkpoint has caught up.
 *
 * The thread touches nothing but its own SQLite connection (no broker
 * function, no log call): the broker is not thread-safe. With the store
 * worker the commits are off the broker's thread already; checkpoints stay
 * off the worker too, so a checkpoint's fsync never delays a batch.
 *
 * A PASSIVE checkpoint alone never lets the WAL start over while the
 * worker keeps committing: the writer restarts the WAL only if, when it
 * begins, the last checkpoint copied every frame, and under a steady
 * stream a new commit always lands while the checkpoint copies and
 * syncs. So the WAL grew for as long as the load lasted (~10 MB/s at
 * 2,000 DMs/s with 1 KiB pages), and at the first pause the checkpoint
 * caught up, the next commit restarted the WAL and, the file being over
 * journal_size_limit (64 MiB), truncated it: an ftruncate of tens of MB
 * on the worker thread, 20-50 ms here and more on a busy disk, every
 * message queued behind it late by as much (docs/PERFORMANCE.md, "Latency
 * spikes at 2,000 msgs/s"). Now, once the WAL holds more than
 * RESTART_BYTES, the PASSIVE pass that copied the bulk without blocking
 * anyone is followed at once by a RESTART: it takes the write lock, copies
 * the few frames committed meanwhile, syncs and waits until the next
 * writer will start the WAL over. The worker waits for that (a few ms,
 * plus its busy handler's 1-2-5 ms steps) about once per RESTART_BYTES of
 * WAL, and the WAL file stays far below journal_size_limit, so no commit
 * ever truncates it. A RESTART holds the write lock while it waits for
 * readers still on the old WAL (a long read on another connection), so
 * its waits are bounded (busy(): RESTART_WAIT_MS): past that it gives the
 * lock back and the next interval tries again; a busy timeout of seconds
 * there would hold every commit for as long.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

#define CKPT_INTERVAL_MS 100
#define RESTART_BYTES (16 << 20)  /* WAL content past which a RESTART follows the PASSIVE pass */
#define RESTART_WAIT_MS 10        /* a RESTART waits this long for the write lock, then for readers */

/* The thread's busy handler: 1 ms at a time, RESTART_WAIT_MS in all. A
 * PASSIVE checkpoint never calls it. */
static int busy(void *arg, int count)
{
	struct timespec ms = {0, 1000000L};

	(void)arg;
	if(count >= RESTART_WAIT_MS) return 0;
	nanosleep(&ms, NULL);
	return 1;
}

/* On the writer's thread, after each of its commits (wal_autocheckpoint
 * is off, so nothing else uses the hook). */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
	(void)db;
	(void)name;
	(void)frames;
	__atomic_add_fetch(&((struct im__ckpt *)arg)->commits, 1, __ATOMIC_RELAXED);
	return SQLITE_OK;
}

void im_ckpt__watch(struct im__ckpt *c, sqlite3 *writer)
{
	c->writer = writer;
	sqlite3_wal_hook(writer, wal_hook, c);
}

static void *run(void *arg)
{
	struct im__ckpt *c = arg;
	int rc, log_frames, done_frames, page_size = 0;
	unsigned long seen = 0, now;
	bool behind = true;     /* the first pass copies what the last run left */
	sqlite3_stmt *q;

	/* A frame is a page and its 24-byte header. */
	if(sqlite3_prepare_v2(c->db, "PRAGMA page_size", -1, &q, NULL) == SQLITE_OK){
		if(sqlite3_step(q) == SQLITE_ROW) page_size = sqlite3_column_int(q, 0);
		sqlite3_finalize(q);
	}
	if(page_size <= 0) page_size = 4096;
	sqlite3_busy_handler(c->db, busy, NULL);

	pthread_mutex_lock(&c->mu);
	while(!c->stop){
		rc = im_cond__wait_us(&c->cv, &c->mu, CKPT_INTERVAL_MS * 1000L);
		if(c->stop) break;
		if(rc != ETIMEDOUT && rc != 0) continue;
		/* An idle store is left alone: a pass costs file locks and a
		 * look at the WAL index, ten times a second for nothing. */
		now = __atomic_load_n(&c->commits, __ATOMIC_RELAXED);
		if(now == seen && !behind) continue;
		seen = now;
		pthread_mutex_unlock(&c->mu);
		log_frames = done_frames = 0;
		rc = sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, &log_frames, &done_frames);
		if(rc == SQLITE_OK && (int64_t)log_frames * (page_size + 24) >= RESTART_BYTES){
			/* SQLITE_BUSY (the writer or a reader held on past
			 * RESTART_WAIT_MS) is harmless: tried again at the next
			 * interval, the frames are copied already. */
			rc = sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_RESTART, NULL, NULL);
		}
		/* Frames a reader still held, a busy RESTART: again next time. */
		behind = rc != SQLITE_OK || done_frames < log_frames;
		pthread_mutex_lock(&c->mu);
		c->last_rc = rc;
		c->checkpoints++;
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int im_ckpt__start(struct im__ckpt *c, const char *path)
{
	memset(c, 0, sizeof(*c));
	if(sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK){
		sqlite3_close(c->db);
		c->db = NULL;
		return MOSQ_ERR_UNKNOWN;
	}
	sqlite3_busy_timeout(c->db, 1000);
	/* A connection that has read nothing has not opened the WAL yet, and
	 * sqlite3_wal_checkpoint_v2 on it returns SQLITE_OK having done
	 * nothing (found in 2026-11: the WAL grew until a restart). Reading
	 * the schema version opens it. */
	if(sqlite3_exec(c->db, "PRAGMA schema_version", NULL, NULL, NULL) != SQLITE_OK){
		sqlite3_close(c->db);
		c->db = NULL;
		return MOSQ_ERR_UNKNOWN;
	}
	pthread_mutex_init(&c->mu, NULL);
	im_cond__init(&c->cv);
	if(pthread_create(&c->thread, NULL, run, c) != 0){
		pthread_mutex_destroy(&c->mu);
		pthread_cond_destroy(&c->cv);
		sqlite3_close(c->db);
		c->db = NULL;
		return MOSQ_ERR_UNKNOWN;
	}
	c->running = true;
	return MOSQ_ERR_SUCCESS;
}

void im_ckpt__stop(struct im__ckpt *c)
{
	if(!c->running) return;
	if(c->writer) sqlite3_wal_hook(c->writer, NULL, NULL);
	pthread_mutex_lock(&c->mu);
	c->stop = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	/* Leave a short WAL behind for the next start: the worker has
	 * stopped, so this may wait. */
	sqlite3_busy_timeout(c->db, 1000);
	sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_close(c->db);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	memset(c, 0, sizeof(*c));
}
