/*
 * The PostgreSQL backend (cluster mode): open and close, schema/pg/
 * migrations under an advisory lock, the shared store identity (meta), this
 * node's applied journal position (nodes), reconnecting, and transactions.
 * Connections and statements are in conn.c. Worker thread only
 * (the init thread before the worker starts).
 *
 * Policy, as for SQLite: a batch is one transaction and records this
 * node's applied_lsn in it, so nothing is half-applied. What differs:
 *
 * - The connection can go away (failover, a restart, pg_terminate_backend).
 *   Every operation on it then fails with a logged error, the worker rolls
 *   the batch back and retries it, and the next begin connects again (the
 *   same conninfo: with several hosts and target_session_attrs=read-write
 *   libpq finds the new primary) and prepares the statements again.
 * - A COMMIT whose answer was lost may or may not have taken. Each writing
 *   commit stores a per-node commit_no; after reconnecting it tells which.
 * - A node_id is claimed with a random token at open; a broker whose token
 *   was replaced (another broker opened with the same node_id) can no
 *   longer commit, so two brokers never share one applied_lsn.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include <mosquitto.h>

#include "store/pg/internal.h"

extern const char *const im_schema_pg_migrations[];

/* Applies schema/pg/ migrations, one transaction each, under an advisory
 * lock that makes nodes starting at once take turns. */
static int migrate(struct im__pg *s, int *before)
{
	struct im__pgq q = {0};
	PGresult *r;
	int version, target = 0, rc;
	bool first = true;
	char sql[96];

	while(im_schema_pg_migrations[target]) target++;
	im_pgq__i64(&q, im_pg__key64("mosquitto-im schema", NULL));
	for(;;){
		if(im_pg__txn(s, "BEGIN") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		/* Another node's migration may take a while: wait for it. */
		rc = im_pg__adhoc_ok(s, "SET LOCAL lock_timeout = 0", NULL, "locking the schema");
		if(rc == MOSQ_ERR_SUCCESS) rc = im_pg__adhoc_ok(s, "SELECT pg_advisory_xact_lock($1::bigint)", &q, "locking the schema");
		if(rc == MOSQ_ERR_SUCCESS){
			rc = im_pg__adhoc_ok(s, "CREATE TABLE IF NOT EXISTS im_schema_version("
					"one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL);"
					" INSERT INTO im_schema_version(version) VALUES(0) ON CONFLICT DO NOTHING", NULL, "the schema version table");
		}
		r = rc == MOSQ_ERR_SUCCESS ? im_pg__adhoc(s, "SELECT version FROM im_schema_version", NULL, "reading the schema version") : NULL;
		if(r == NULL){
			im_pg__txn(s, "ROLLBACK");
			return MOSQ_ERR_UNKNOWN;
		}
		version = atoi(PQgetvalue(r, 0, 0));
		PQclear(r);
		if(first) *before = version;
		first = false;
		if(version > target){
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL schema version %d is newer than this plugin's (%d); refusing to use it.",
					version, target);
			im_pg__txn(s, "ROLLBACK");
			return MOSQ_ERR_UNKNOWN;
		}
		if(version == target) return im_pg__txn(s, "COMMIT");
		snprintf(sql, sizeof(sql), "UPDATE im_schema_version SET version = %d", version + 1);
		if(im_pg__adhoc_ok(s, im_schema_pg_migrations[version], NULL, "migrating the schema") != MOSQ_ERR_SUCCESS
				|| im_pg__adhoc_ok(s, sql, NULL, "writing the schema version") != MOSQ_ERR_SUCCESS
				|| im_pg__txn(s, "COMMIT") != MOSQ_ERR_SUCCESS){
			im_pg__txn(s, "ROLLBACK");
			return MOSQ_ERR_UNKNOWN;
		}
		im_log(MOSQ_LOG_INFO, "im: store: PostgreSQL schema migrated to version %d.", version + 1);
	}
}

static uint64_t be_u64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for(i = 0; i < 8; i++) v = (v << 8) | p[i];
	return v;
}

static void be64_put(uint8_t *out, uint64_t v)
{
	int i;

	for(i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (56 - 8 * i));
}

static int random_id(uint64_t *id)
{
	uint8_t b[8];

	if(RAND_bytes(b, sizeof(b)) != 1) return MOSQ_ERR_UNKNOWN;
	*id = be_u64(b);
	if(*id == 0) *id = 1;
	return MOSQ_ERR_SUCCESS;
}

/* Reads store_id and frame_key, offering random ones first: the first
 * node's offer is kept, every node reads the same. */
static int meta_load(struct im__store *st, struct im__pg *s)
{
	uint8_t offer_id[8], offer_key[16];
	struct im__pgq q = {0};
	bool have_id = false, have_key = false;
	PGresult *r;
	int i;

	if(RAND_bytes(offer_id, sizeof(offer_id)) != 1 || RAND_bytes(offer_key, sizeof(offer_key)) != 1) return MOSQ_ERR_UNKNOWN;
	if(be_u64(offer_id) == 0) offer_id[7] = 1;
	im_pgq__bytes(&q, offer_id, sizeof(offer_id));
	im_pgq__bytes(&q, offer_key, sizeof(offer_key));
	/* A reader finds what the writer made (it may sit on a standby). */
	if(!s->reader && im_pg__adhoc_ok(s, "INSERT INTO meta(key, value) VALUES('store_id', $1::bytea), ('frame_key', $2::bytea) ON CONFLICT (key) DO NOTHING",
				&q, "making the store id") != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	memset(&q, 0, sizeof(q)); /* no parameters, binary results */
	r = im_pg__adhoc(s, "SELECT key, value FROM meta", &q, "reading meta");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(i = 0; i < PQntuples(r); i++){
		const char *k = PQgetvalue(r, i, 0);
		const uint8_t *v = (const uint8_t *)PQgetvalue(r, i, 1);
		int n = PQgetlength(r, i, 1);

		if(!strcmp(k, "store_id") && n == 8){
			st->store_id = be_u64(v);
			have_id = true;
		}else if(!strcmp(k, "frame_key") && n == 16){
			memcpy(st->frame_key, v, 16);
			have_key = true;
		}
	}
	PQclear(r);
	if(!have_id || !have_key){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: meta holds a malformed store_id or frame_key.");
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

/* Claims node_id for this broker (a new token) and reads its position. */
static int node_claim(struct im__store *st, struct im__pg *s)
{
	struct im__pgq q = {0};
	PGresult *r;

	if(random_id(&s->token) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pgq__text(&q, s->node_id, -1);
	im_pgq__i64(&q, (int64_t)s->token);
	im_pgq__i64(&q, im_now_ms());
	r = im_pg__adhoc(s, "INSERT INTO nodes(node_id, token, updated_ms) VALUES($1::text, $2::bigint, $3::bigint)"
			" ON CONFLICT (node_id) DO UPDATE SET token = excluded.token, updated_ms = excluded.updated_ms"
			" RETURNING applied_lsn, commit_no", &q, "claiming the node id");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	st->applied_lsn = (uint64_t)im_pg__int(r, 0, 0);
	s->commit_no = (uint64_t)im_pg__int(r, 0, 1);
	PQclear(r);
	return MOSQ_ERR_SUCCESS;
}

/* After a reconnect: is the node still ours, did the server keep what we
 * committed, and did a commit whose answer was lost take? */
static int node_check(struct im__store *st, struct im__pg *s)
{
	struct im__pgq q = {0};
	PGresult *r;
	uint64_t lsn, no, token;

	/* FOR SHARE waits for the transaction that last wrote the row: a
	 * COMMIT whose connection died may still be finishing on the server
	 * (waiting for a synchronous standby, say). Not for ever: a server
	 * that has not noticed the old connection is gone yet holds it. */
	im_pgq__text(&q, s->node_id, -1);
	if(im_pg__txn(s, "BEGIN") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	r = NULL;
	if(im_pg__adhoc_ok(s, "SET LOCAL lock_timeout = '10s'", NULL, "reading the node's position") == MOSQ_ERR_SUCCESS){
		r = im_pg__run(s, PG_NODE_GET, &q, "reading the node's position");
	}
	if(r == NULL || im_pg__txn(s, "COMMIT") != MOSQ_ERR_SUCCESS){
		PQclear(r);
		if(!s->broken) im_pg__txn(s, "ROLLBACK");
		return MOSQ_ERR_UNKNOWN;
	}
	if(PQntuples(r) != 1){
		PQclear(r);
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: node \"%s\" is not in the nodes table any more (a restored or replaced database?).", s->node_id);
		return MOSQ_ERR_UNKNOWN;
	}
	lsn = (uint64_t)im_pg__int(r, 0, 0);
	no = (uint64_t)im_pg__int(r, 0, 1);
	token = (uint64_t)im_pg__int(r, 0, 2);
	PQclear(r);
	if(token != s->token){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: another broker opened the store as node \"%s\": this one stops writing (each broker needs a node_id of its own).",
				s->node_id);
		return MOSQ_ERR_UNKNOWN;
	}
	if(s->unsure_commit && no >= s->unsure_commit){
		/* In pg_commit this is its success; later, the worker has already
		 * begun the batch again. */
		if(!s->resolving){
			im_log(MOSQ_LOG_WARNING, "im: store: PostgreSQL: the batch whose COMMIT went unanswered (up to journal record %" PRIu64 ") did commit; its messages are not applied again.",
					s->unsure_lsn);
		}
		if(s->unsure_lsn) st->applied_lsn = s->unsure_lsn;
		s->commit_no = no;
	}
	s->unsure_commit = 0;
	if(no < s->commit_no || lsn < st->applied_lsn){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL lost committed transactions of node \"%s\" (it holds journal record %" PRIu64 ", commit %" PRIu64 "; this broker had committed %" PRIu64 ", commit %" PRIu64 "): a failover to a standby that was behind, or a restored backup. Seqs may be handed out again; restart the brokers so that they apply their journals again and take a new store id. Use synchronous replication to fail over without loss.",
				s->node_id, lsn, no, st->applied_lsn, s->commit_no);
		st->applied_lsn = lsn;
		s->commit_no = no;
	}
	return MOSQ_ERR_SUCCESS;
}

static int reconnect(struct im__store *st, struct im__pg *s)
{
	if(im_pg__session_open(s) != MOSQ_ERR_SUCCESS || im_pg__prepare_all(s) != MOSQ_ERR_SUCCESS
			|| (!s->reader && node_check(st, s) != MOSQ_ERR_SUCCESS)){
		s->broken = true;
		return MOSQ_ERR_UNKNOWN;
	}
	/* Another node may have changed groups meanwhile: start the cache over. */
	im_pg__group_forget_all(s);
	im_log(MOSQ_LOG_NOTICE, "im: store: reconnected to PostgreSQL at %s:%s.", PQhost(s->conn), PQport(s->conn));
	return MOSQ_ERR_SUCCESS;
}

int im_pg__ensure(struct im__store *st)
{
	struct im__pg *s = im_pg(st);

	return (s->broken || s->conn == NULL) ? reconnect(st, s) : MOSQ_ERR_SUCCESS;
}

int im_pg__tx(struct im__store *st, const char *sql)
{
	if(!strcmp(sql, "BEGIN") && im_pg__ensure(st) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	return im_pg__txn(im_pg(st), sql);
}

/* ---- open, close ---- */

static void pg_close(struct im__store *st);
static const struct im__store_ops pg_ops;

#define READER_CACHE_MAX 4096       /* timelines a reader keeps entries for */

static bool sync_commit_valid(const char *v)
{
	static const char *const ok[] = {"on", "off", "local", "remote_write", "remote_apply"};
	size_t i;

	for(i = 0; i < sizeof(ok) / sizeof(ok[0]); i++){
		if(!strcmp(v, ok[i])) return true;
	}
	return false;
}

int im_store__open_pg(struct im__store *st, const struct im__store_pg_options *o)
{
	struct im__pg *s;
	int before = 0;

	memset(st, 0, sizeof(*st));
	if(o->node_id == NULL || o->node_id[0] == '\0' || strlen(o->node_id) > 64){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: node_id must be 1 to 64 bytes.");
		return MOSQ_ERR_UNKNOWN;
	}
	if(o->synchronous_commit && !sync_commit_valid(o->synchronous_commit)){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: synchronous_commit \"%s\" is not one of on, remote_apply, remote_write, local, off.",
				o->synchronous_commit);
		return MOSQ_ERR_UNKNOWN;
	}
	st->ops = &pg_ops;
	s = calloc(1, sizeof(*s));
	if(s == NULL) return MOSQ_ERR_NOMEM;
	st->be = s;
	s->reader = o->reader;
	if(o->reader && o->read_conninfo){
		s->conninfo = strdup(o->read_conninfo);
		s->primary_conninfo = strdup(o->conninfo ? o->conninfo : "");
	}else{
		s->conninfo = strdup(o->conninfo ? o->conninfo : "");
	}
	s->node_id = strdup(o->node_id);
	if(o->reader){
		/* Readers change nothing: no migration, no claim on node_id. */
		if(s->conninfo == NULL || s->node_id == NULL || (o->read_conninfo && s->primary_conninfo == NULL)
				|| im_pg__session_open(s) != MOSQ_ERR_SUCCESS
				|| im_pg__prepare_all(s) != MOSQ_ERR_SUCCESS || meta_load(st, s) != MOSQ_ERR_SUCCESS){
			im_log(MOSQ_LOG_ERR, "im: store: a reader cannot use the PostgreSQL store (node \"%s\").", o->node_id);
			pg_close(st);
			return MOSQ_ERR_UNKNOWN;
		}
		return MOSQ_ERR_SUCCESS;
	}
	if(o->synchronous_commit) snprintf(s->sync_commit, sizeof(s->sync_commit), "%s", o->synchronous_commit);
	s->gen = 1;
	if(s->conninfo == NULL || s->node_id == NULL
			|| im_pg__session_open(s) != MOSQ_ERR_SUCCESS
			|| migrate(s, &before) != MOSQ_ERR_SUCCESS
			|| im_pg__prepare_all(s) != MOSQ_ERR_SUCCESS
			|| meta_load(st, s) != MOSQ_ERR_SUCCESS
			|| node_claim(st, s) != MOSQ_ERR_SUCCESS){
		im_log(MOSQ_LOG_ERR, "im: store: cannot use the PostgreSQL store (node \"%s\").", o->node_id);
		pg_close(st);
		return MOSQ_ERR_UNKNOWN;
	}
	st->created = before == 0;
	im_log(MOSQ_LOG_INFO, "im: store: PostgreSQL at %s:%s, node \"%s\", applied journal record %" PRIu64 ".",
			PQhost(s->conn), PQport(s->conn), s->node_id, st->applied_lsn);
	return MOSQ_ERR_SUCCESS;
}

static void pg_close(struct im__store *st)
{
	struct im__pg *s = im_pg(st);

	if(s == NULL) return;
	if(s->conn) PQfinish(s->conn);
	if(s->aux) PQfinish(s->aux);
	im_pg__cache_free(s);
	im_pg__group_close(s);
	im_cache__touched_free(&s->touched);
	im_pg__wb_free(s);
	if(s->conninfo) memset(s->conninfo, 0, strlen(s->conninfo));
	free(s->conninfo);
	if(s->primary_conninfo) memset(s->primary_conninfo, 0, strlen(s->primary_conninfo));
	free(s->primary_conninfo);
	free(s->node_id);
	free(s);
	st->be = NULL;
	st->ops = NULL;
}

static void pg_forget_group(struct im__store *st, const char *name, size_t len)
{
	if(name == NULL) im_pg__group_forget_all(im_pg(st));
	else im_pg__group_forget(im_pg(st), name, len);
}

static int pg_renew_id(struct im__store *st)
{
	if(random_id(&st->store_id) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	im_pg(st)->id_dirty = true;
	return MOSQ_ERR_SUCCESS;
}

/* ---- transactions ---- */

/* The end of a transaction, either way: no row lock is held any more. */
static void txn_over(struct im__pg *s)
{
	s->in_txn = false;
	s->gen++;
	s->touched.n = 0;
	s->wrote = false;
	s->groups_dirty = false;
	/* What the buffer held is the transaction's: committed with it, or
	 * gone with it (the worker applies the batch's jobs again). */
	im_pg__wb_drop(s);
}

static int pg_begin(struct im__store *st)
{
	struct im__pg *s = im_pg(st);
	const char *begin = s->reader ? "BEGIN READ ONLY" : "BEGIN";

	if(im_pg__ensure(st) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	/* A reader re-reads every head it uses: its cache is only memory. */
	if(s->reader && s->tls.count > READER_CACHE_MAX) im_pg__cache_free(s);
	if(im_pg__txn(s, begin) != MOSQ_ERR_SUCCESS){
		/* An idle connection that died shows it here; nothing was done in
		 * the transaction yet, so connecting again at once is safe. */
		if(!s->broken || reconnect(st, s) != MOSQ_ERR_SUCCESS || im_pg__txn(s, begin) != MOSQ_ERR_SUCCESS){
			return MOSQ_ERR_UNKNOWN;
		}
	}
	txn_over(s);
	s->in_txn = true;
	return MOSQ_ERR_SUCCESS;
}

static void pg_rollback(struct im__store *st)
{
	struct im__pg *s = im_pg(st);

	if(s->conn && !s->broken && PQtransactionStatus(s->conn) != PQTRANS_IDLE) im_pg__txn(s, "ROLLBACK");
	/* Heads moved inside the transaction: re-read on next use. */
	im_cache__touched_stale(&s->touched);
	if(s->groups_dirty) im_pg__group_forget_all(s);
	txn_over(s);
}

static int pg_commit(struct im__store *st, uint64_t applied_lsn)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	uint64_t no = s->commit_no;
	uint8_t idb[8];
	long node_rows = 0;
	bool writing = s->wrote || applied_lsn || s->id_dirty;
	int rc = MOSQ_ERR_SUCCESS;

	if(writing){
		no = s->commit_no + 1;
		im_pgq__text(&q, s->node_id, -1);
		im_pgq__i64(&q, (int64_t)applied_lsn);
		im_pgq__i64(&q, (int64_t)no);
		im_pgq__i64(&q, im_now_ms());
		im_pgq__i64(&q, (int64_t)s->token);
		/* The batch's buffered writes and the node's position, in one
		 * round trip. */
		rc = im_pg__flush_then(s, PG_NODE_COMMIT, &q, &node_rows);
		if(rc == MOSQ_ERR_SUCCESS && node_rows != 1){
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: another broker opened the store as node \"%s\": this one stops writing (each broker needs a node_id of its own).",
					s->node_id);
			rc = MOSQ_ERR_UNKNOWN;
		}
	}
	if(rc == MOSQ_ERR_SUCCESS && s->id_dirty){
		be64_put(idb, st->store_id);
		memset(&q, 0, sizeof(q));
		im_pgq__text(&q, "store_id", -1);
		im_pgq__bytes(&q, idb, sizeof(idb));
		rc = im_pg__exec(s, PG_META_PUT, &q, "writing the store id");
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = im_pg__txn(s, "COMMIT");
		if(rc != MOSQ_ERR_SUCCESS && s->broken && writing){
			/* The answer was lost with the connection: ask the server. If
			 * it cannot be asked now, the next reconnect does. */
			s->unsure_commit = no;
			s->unsure_lsn = applied_lsn;
			s->resolving = true;
			if(reconnect(st, s) == MOSQ_ERR_SUCCESS && s->commit_no >= no){
				im_log(MOSQ_LOG_NOTICE, "im: store: PostgreSQL: the COMMIT whose answer was lost did take.");
				rc = MOSQ_ERR_SUCCESS;
			}
			s->resolving = false;
		}
	}
	if(rc != MOSQ_ERR_SUCCESS){
		pg_rollback(st);
		return MOSQ_ERR_UNKNOWN;
	}
	s->commit_no = no;
	if(applied_lsn) st->applied_lsn = applied_lsn;
	s->id_dirty = false;
	txn_over(s);
	return MOSQ_ERR_SUCCESS;
}

static size_t pg_cached(struct im__store *st, size_t *groups)
{
	struct im__pg *s = im_pg(st);

	*groups = s->groups.count;
	return s->tls.count;
}

/* A recalled body is gone from the table at commit; PostgreSQL reclaims the
 * dead tuple's bytes at its next (auto)vacuum, which the plugin does not
 * force from a batch. */
static void pg_scrub(struct im__store *st)
{
	(void)st;
}

static const struct im__store_ops pg_ops = {
	.name = "postgresql",
	.close = pg_close,
	.begin = pg_begin,
	.commit = pg_commit,
	.rollback = pg_rollback,
	.timeline = im_pg__timeline,
	.append = im_pg__append,
	.range = im_pg__range,
	.cursor_get = im_pg__cursor_get,
	.cursor_set = im_pg__cursor_set,
	.group = im_pg__group,
	.group_change = im_pg__group_change,
	.groups_of = im_pg__groups_of,
	.group_counts = im_pg__group_counts,
	.each_group = im_pg__each_group,
	.wrote = im_pg__wrote,
	.each_wrote = im_pg__each_wrote,
	.trim_step = im_pg__trim_step,
	.cached = pg_cached,
	.renew_id = pg_renew_id,
	.scrub = pg_scrub,
	.dedup = im_pg__dedup,
	.lookup = im_pg__lookup,
	.amend = im_pg__amend,
	.note_last = im_pg__note_last,
	.read_mark = im_pg__read_mark,
	.reads_of = im_pg__reads_of,
	.has_conv = im_pg__has_conv,
	.conversations = im_pg__conversations,
	.prelock = im_pg__prelock,
	.dedup_batch = im_pg__dedup_batch,
	.forget_group = pg_forget_group,
};
