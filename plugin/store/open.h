/*
 * Picks and opens the store the options name (plugin_opt_store): the
 * SQLite file by default, PostgreSQL in cluster mode.
 */
#ifndef IM_STORE_OPEN_H
#define IM_STORE_OPEN_H

#include <stddef.h>

#include "base/config.h"
#include "store/store.h"

/* Opens the store cfg names into st. MOSQ_ERR_SUCCESS, or
 * MOSQ_ERR_UNKNOWN with a log line saying which store and why (st is
 * closed then). [init thread, before the worker starts] */
int im_store__open(struct im__store *st, const struct im__config *cfg);
/* A reader's connection to the store im_store__open opened (and
 * migrated) before: reads only, beside the writer (worker/reader.c).
 * [init thread] */
int im_store__open_reader(struct im__store *st, const struct im__config *cfg);
/* The store as it may be logged: the SQLite path, or "postgresql (hosts,
 * database, user; node <id>)", never a password. */
void im_store__describe(const struct im__config *cfg, char *out, size_t cap);

#endif
