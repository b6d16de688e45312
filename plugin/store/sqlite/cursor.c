/*
 * Cursors (SQLite backend): per (timeline, user, client id), the highest
 * seq that device confirmed with an ack (msg-fin). Unread counts are
 * head - cursor. A cursor never moves back.
 */
#include <mosquitto.h>

#include "store/sqlite/internal.h"

int im_sqlite__cursor_get(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id, uint64_t *seq)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->cursor_get;
	int rc;

	*seq = 0;
	if(tl == NULL) return MOSQ_ERR_SUCCESS;
	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_text(q, 2, user, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, client_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if(rc == SQLITE_ROW) *seq = (uint64_t)sqlite3_column_int64(q, 0);
	sqlite3_reset(q);
	if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "reading a cursor");
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__cursor_set(struct im__store *st, struct im__tl *tl, const char *user, const char *client_id,
		uint64_t seq, uint64_t *now)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->cursor_set;
	int rc;

	sqlite3_bind_int64(q, 1, tl->id);
	sqlite3_bind_text(q, 2, user, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, client_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, (sqlite3_int64)seq);
	sqlite3_bind_int64(q, 5, im_now_ms());
	rc = sqlite3_step(q);
	if(rc == SQLITE_ROW) *now = (uint64_t)sqlite3_column_int64(q, 0);
	while(rc == SQLITE_ROW) rc = sqlite3_step(q);
	sqlite3_reset(q);
	if(rc != SQLITE_DONE) return im_sqlite__fail(s, "moving a cursor");
	return MOSQ_ERR_SUCCESS;
}
