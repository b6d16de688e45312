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
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

#define CKPT_INTERVAL_MS 100

static void *run(void *arg)
{
	struct im__ckpt *c = arg;
	struct timespec until;
	int rc;

	pthread_mutex_lock(&c->mu);
	while(!c->stop){
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += CKPT_INTERVAL_MS * 1000000L;
		if(until.tv_nsec >= 1000000000L){
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		rc = pthread_cond_timedwait(&c->cv, &c->mu, &until);
		if(c->stop) break;
		if(rc != ETIMEDOUT && rc != 0) continue;
		pthread_mutex_unlock(&c->mu);
		rc = sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
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
	pthread_cond_init(&c->cv, NULL);
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
	pthread_mutex_lock(&c->mu);
	c->stop = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	/* Leave a short WAL behind for the next start. */
	sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_close(c->db);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	memset(c, 0, sizeof(*c));
}
