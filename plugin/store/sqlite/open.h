/*
 * The SQLite backend's door: the one function that fills the store's ops
 * table with it (store/open.c calls it; so do the store's unit tests).
 */
#ifndef IM_STORE_SQLITE_OPEN_H
#define IM_STORE_SQLITE_OPEN_H

#include "store/store.h"

struct im__store_options {
	const char *path;           /* SQLite file */
	int synchronous;
	int busy_timeout_ms;
	int page_size;
	bool checkpoint_thread;
	/* A reader's connection (worker/reader.c): reads only, in deferred
	 * transactions beside the writer's (WAL); the database must exist
	 * (the writer opened it first). No schema change, no checkpoints. */
	bool reader;
};

/* Opens (creating if needed) the SQLite database at o->path, applies
 * pragmas and migrations, prepares statements, reads or makes the store id
 * and frame key. MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN with a log line
 * naming the path and why. On failure st is closed. */
int im_store__open_sqlite(struct im__store *st, const struct im__store_options *o);
#endif
