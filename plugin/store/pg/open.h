/*
 * The PostgreSQL backend's door (cluster mode): several brokers (nodes)
 * share one database; each has its own journal, worker and node_id.
 */
#ifndef IM_STORE_PG_OPEN_H
#define IM_STORE_PG_OPEN_H

#include <stddef.h>

#include "store/store.h"

/* The PostgreSQL backend (cluster mode): several brokers (nodes) share one
 * database; each has its own journal, worker and node_id. */
struct im__store_pg_options {
	/* A libpq connection string or URI. Several hosts with
	 * target_session_attrs=read-write find the primary, also when a
	 * reconnect follows a failover. Defaults that the string may override:
	 * connect_timeout=5, TCP keepalives (5 s idle, 2 s x 3), application_name. */
	const char *conninfo;
	const char *node_id;        /* 1..64 bytes, unique per broker, stable across restarts */
	/* synchronous_commit for the store's sessions: "on", "remote_apply",
	 * "remote_write", "local" or "off"; NULL keeps the server's setting. */
	const char *synchronous_commit;
	/* A reader's session (worker/reader.c): read-only transactions, no
	 * schema change, no claim on node_id. read_conninfo, if set, is where
	 * it reads (a standby, perhaps), with conninfo as the fallback. */
	bool reader;
	const char *read_conninfo;
};

/* Connects to PostgreSQL (o->conninfo), applies schema/pg/ migrations under
 * an advisory lock (several nodes may start at once), prepares statements,
 * reads or makes the shared store id and frame key, and claims node_id,
 * reading its applied LSN: a broker still using the same node_id can no
 * longer commit. MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN with a log line
 * saying why. On failure st is closed.
 *
 * Differences from SQLite: timeline(create) commits a new timeline's row at
 * once, apart from the batch (a rollback leaves it, empty). Every operation
 * on a lost connection fails with a logged error; the next begin (or
 * trim_step) connects again. A COMMIT whose answer was lost is looked up
 * (the node's commit_no) once reconnected: if it took, commit succeeds. A
 * deadlock between two brokers' batches fails one of them like any other
 * error: the worker's retry of the batch is the remedy. */
int im_store__open_pg(struct im__store *st, const struct im__store_pg_options *o);
/* conninfo as it may be logged: host(s), port(s), database and user, never
 * a password ("unparsable" if libpq cannot read it). */
void im_store__pg_describe(const char *conninfo, char *out, size_t cap);
#endif
