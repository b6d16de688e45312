/*
 * The store factory: plugin_opt_store picks the backend. Nothing above
 * this file names a backend.
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>

#include "base/util.h"
#include "store/open.h"
#include "store/pg/open.h"
#include "store/sqlite/open.h"

static int open_as(struct im__store *st, const struct im__config *cfg, bool reader)
{
	struct im__store_options o = {
		.path = cfg->db_path,
		.synchronous = cfg->synchronous,
		.busy_timeout_ms = cfg->busy_timeout_ms,
		.page_size = cfg->page_size,
		.checkpoint_thread = !cfg->checkpoint_inline && !reader,
		.reader = reader,
	};
	struct im__store_pg_options po = {.conninfo = cfg->pg_conninfo, .node_id = cfg->node_id,
		.reader = reader, .read_conninfo = cfg->pg_read_conninfo};
	char where[512];

	if(cfg->store != IM_STORE_PG) return im_store__open_sqlite(st, &o);
	if(im_store__open_pg(st, &po) == MOSQ_ERR_SUCCESS) return MOSQ_ERR_SUCCESS;
	if(reader) return MOSQ_ERR_UNKNOWN; /* logged by the backend */
	im_store__pg_describe(cfg->pg_conninfo, where, sizeof(where));
	im_log(MOSQ_LOG_ERR, "im: store: cannot open the PostgreSQL store at plugin_opt_pg_conninfo (%s) as node \"%s\" (plugin_opt_node_id); the plugin does not start.",
			where, cfg->node_id);
	return MOSQ_ERR_UNKNOWN;
}

int im_store__open(struct im__store *st, const struct im__config *cfg)
{
	return open_as(st, cfg, false);
}

int im_store__open_reader(struct im__store *st, const struct im__config *cfg)
{
	return open_as(st, cfg, true);
}

void im_store__describe(const struct im__config *cfg, char *out, size_t cap)
{
	size_t n;

	if(cap < 128){
		if(cap) out[0] = '\0';
		return;
	}
	if(cfg->store != IM_STORE_PG){
		snprintf(out, cap, "%s", cfg->db_path);
		return;
	}
	/* Hosts and database only: the conninfo may hold a password. */
	n = (size_t)snprintf(out, cap, "postgresql (");
	im_store__pg_describe(cfg->pg_conninfo, out + n, cap - n - 100); /* room for the node */
	n = strlen(out);
	snprintf(out + n, cap - n, ", node %s)", cfg->node_id);
}
