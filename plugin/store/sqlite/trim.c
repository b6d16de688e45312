/*
 * Retention (SQLite backend): by age (retention_seconds) and by count
 * (retention_messages), in steps of at most `budget` rows, each timeline in
 * a short transaction of its own, so the worker never holds the write lock
 * for long and completions keep flowing while a million rows go.
 *
 * There is no index on time: messages are read in seq order from the
 * timeline's first_seq, at most budget rows per step, and the prefix older
 * than the cutoff is deleted. Server times grow with seq (they are taken
 * when the message is acknowledged, in journal order), so that prefix is
 * what is expired; a clock that jumped back only keeps a few rows longer.
 *
 * A conversation's preview goes with its message, in the same transaction:
 * the list never keeps, nor shows, a body that retention removed.
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

#define LIST 64

int im_sqlite__prepare_trim(struct im__sqlite *s)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		{&s->trim_list, "SELECT id, name, max(head_seq, coalesce((SELECT max(seq) FROM messages WHERE tl = timelines.id), 0)),"
			" first_seq FROM timelines WHERE id > ?1 ORDER BY id LIMIT 64"},
		{&s->trim_scan, "SELECT seq, ts_ms FROM messages WHERE tl = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3"},
		{&s->trim_delete, "DELETE FROM messages WHERE tl = ?1 AND seq < ?2"},
		{&s->trim_preview_u, "UPDATE convs SET preview = NULL WHERE owner = ?1 AND last_seq < ?2 AND preview IS NOT NULL"},
		{&s->trim_preview_g, "UPDATE group_last SET preview = NULL WHERE grp = ?1 AND last_seq < ?2 AND preview IS NOT NULL"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(im_sqlite__prepare(s, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

struct trim_row {
	int64_t id;
	uint64_t head, first;
	char name[IM_TL_MAX + 1];
};

/* The first seq to keep under the limits, looking at no more than budget
 * rows. *partial: the budget ended before the cutoff was found. */
static int keep_from(struct im__sqlite *s, const struct trim_row *t, int64_t cutoff_ms, int64_t keep,
		uint32_t budget, uint64_t *out, bool *partial)
{
	uint64_t first = t->first, last = 0;
	uint32_t n = 0;
	bool young = false;
	int rc;

	*partial = false;
	if(keep > 0 && t->head > (uint64_t)keep && t->head - (uint64_t)keep + 1 > first){
		first = t->head - (uint64_t)keep + 1;
	}
	if(first - t->first > budget){
		first = t->first + budget;
		*partial = true;
	}
	if(cutoff_ms > 0 && !*partial){
		sqlite3_bind_int64(s->trim_scan, 1, t->id);
		sqlite3_bind_int64(s->trim_scan, 2, (sqlite3_int64)first);
		sqlite3_bind_int64(s->trim_scan, 3, (sqlite3_int64)budget - (sqlite3_int64)(first - t->first) + 1);
		while((rc = sqlite3_step(s->trim_scan)) == SQLITE_ROW){
			last = (uint64_t)sqlite3_column_int64(s->trim_scan, 0);
			if(sqlite3_column_int64(s->trim_scan, 1) >= cutoff_ms){
				young = true;
				break;
			}
			n++;
		}
		sqlite3_reset(s->trim_scan);
		if(rc != SQLITE_ROW && rc != SQLITE_DONE) return im_sqlite__fail(s, "retention scan");
		if(young){
			first = last;                   /* the first row to keep */
		}else if(n > budget - (first - t->first)){
			first = last;                   /* budget spent: keep the last one seen for now */
			*partial = true;
		}else{
			first = t->head + 1;            /* everything stored is older */
		}
	}
	*out = first;
	return MOSQ_ERR_SUCCESS;
}

static int trim_one(struct im__store *st, const struct trim_row *t, uint64_t new_first)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *pv = t->name[0] == 'g' ? s->trim_preview_g : s->trim_preview_u;
	struct im__tl *c;
	int n;

	if(im_sqlite__step(s, s->begin, "BEGIN") != MOSQ_ERR_SUCCESS) return -1;
	sqlite3_bind_int64(s->trim_delete, 1, t->id);
	sqlite3_bind_int64(s->trim_delete, 2, (sqlite3_int64)new_first);
	sqlite3_bind_int64(s->tl_set_first, 1, t->id);
	sqlite3_bind_int64(s->tl_set_first, 2, (sqlite3_int64)new_first);
	sqlite3_bind_int64(s->tl_set_first, 3, (sqlite3_int64)t->head);
	sqlite3_bind_text(pv, 1, t->name + 2, -1, SQLITE_STATIC);
	sqlite3_bind_int64(pv, 2, (sqlite3_int64)new_first);
	if(im_sqlite__step(s, s->trim_delete, "retention delete") != MOSQ_ERR_SUCCESS
			|| (n = sqlite3_changes(s->db), im_sqlite__step(s, s->tl_set_first, "retention first_seq")) != MOSQ_ERR_SUCCESS
			|| im_sqlite__step(s, pv, "retention previews") != MOSQ_ERR_SUCCESS
			|| im_sqlite__step(s, s->commit, "COMMIT") != MOSQ_ERR_SUCCESS){
		if(!sqlite3_get_autocommit(s->db)) im_sqlite__step(s, s->rollback, "ROLLBACK");
		return -1;
	}
	c = im_sqlite__cache_find(&s->tls, t->name, strlen(t->name));
	if(c) c->first = new_first;
	return n;
}

int im_sqlite__trim_step(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
		int64_t *cursor_id, bool *done)
{
	struct im__sqlite *s = im_sqlite(st);
	struct trim_row rows[LIST];
	int n = 0, i, rc = SQLITE_DONE, deleted = 0, d;
	uint64_t new_first = 0;
	bool partial = false;

	/* Read the list first: no statement stays open across the writes. */
	*done = false;
	sqlite3_bind_int64(s->trim_list, 1, *cursor_id);
	while(n < LIST && (rc = sqlite3_step(s->trim_list)) == SQLITE_ROW){
		rows[n].id = sqlite3_column_int64(s->trim_list, 0);
		snprintf(rows[n].name, sizeof(rows[n].name), "%s", im_sqlite__text(s->trim_list, 1));
		rows[n].head = (uint64_t)sqlite3_column_int64(s->trim_list, 2);
		rows[n].first = (uint64_t)sqlite3_column_int64(s->trim_list, 3);
		n++;
	}
	sqlite3_reset(s->trim_list);
	if(n < LIST && rc != SQLITE_DONE) return im_sqlite__fail(s, "retention list"), -1;
	for(i = 0; i < n; i++){
		if((uint32_t)deleted >= budget) return deleted; /* resume at this timeline */
		if(keep_from(s, &rows[i], cutoff_ms, keep, budget - (uint32_t)deleted, &new_first, &partial) != MOSQ_ERR_SUCCESS){
			return -1;
		}
		if(new_first > rows[i].first){
			d = trim_one(st, &rows[i], new_first);
			if(d < 0) return -1;
			deleted += d;
			if(partial) return deleted; /* more to do here */
		}
		*cursor_id = rows[i].id;
	}
	if(n < LIST){
		*cursor_id = 0;
		*done = true;
	}
	return deleted;
}
