/*
 * The SQLite backend's helpers, below every other file of it: errors
 * logged once with sqlite3_errmsg, statements stepped and reset, and the
 * list of timelines the open transaction touched (store/cache.c).
 */
#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "store/sqlite/internal.h"

int im_sqlite__fail(struct im__sqlite *s, const char *what)
{
	im_log(MOSQ_LOG_ERR, "im: store: %s: %s", what, s->db ? sqlite3_errmsg(s->db) : "no database");
	return MOSQ_ERR_UNKNOWN;
}

int im_sqlite__step(struct im__sqlite *s, sqlite3_stmt *stmt, const char *what)
{
	int rc = sqlite3_step(stmt);

	sqlite3_reset(stmt);
	return rc == SQLITE_DONE ? MOSQ_ERR_SUCCESS : im_sqlite__fail(s, what);
}

int im_sqlite__prepare(struct im__sqlite *s, sqlite3_stmt **stmt, const char *sql)
{
	if(sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK){
		return im_sqlite__fail(s, sql);
	}
	return MOSQ_ERR_SUCCESS;
}

const char *im_sqlite__text(sqlite3_stmt *s, int col)
{
	return (const char *)sqlite3_column_text(s, col);
}

void im_sqlite__touch(struct im__sqlite *s, struct im__tl *t)
{
	im_cache__touch(&s->touched, t);
}
