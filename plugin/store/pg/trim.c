/*
 * Retention (PostgreSQL backend): the SQLite backend's sweep, by age and by
 * count, in steps of at most `budget` rows, each timeline in a short
 * transaction of its own.
 *
 * Several brokers may sweep at once. Each step moves the timeline's
 * first_seq before deleting, in one transaction: the UPDATE takes the row
 * (waiting for a batch that appends to it, or for another sweeper), and a
 * second sweeper that computed the same cut finds first_seq already there
 * and deletes nothing. Rows are only ever deleted below first_seq.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/pg/internal.h"

#define LIST 64

struct trim_row {
	int64_t id;
	uint64_t head, first;
	char name[IM_TL_MAX + 1];
};

/* The first seq to keep under the limits, looking at no more than budget
 * rows. *partial: the budget ended before the cutoff was found. */
static int keep_from(struct im__pg *s, const struct trim_row *t, int64_t cutoff_ms, int64_t keep,
		uint32_t budget, uint64_t *out, bool *partial)
{
	struct im__pgq q = {0};
	uint64_t first = t->first, last = 0;
	uint32_t n = 0;
	bool young = false;
	PGresult *r;
	int i;

	*partial = false;
	if(keep > 0 && t->head > (uint64_t)keep && t->head - (uint64_t)keep + 1 > first){
		first = t->head - (uint64_t)keep + 1;
	}
	if(first - t->first > budget){
		first = t->first + budget;
		*partial = true;
	}
	if(cutoff_ms > 0 && !*partial){
		im_pgq__i64(&q, t->id);
		im_pgq__i64(&q, (int64_t)first);
		im_pgq__i64(&q, (int64_t)budget - (int64_t)(first - t->first) + 1);
		r = im_pg__run(s, PG_TRIM_SCAN, &q, "retention scan");
		if(r == NULL) return MOSQ_ERR_UNKNOWN;
		for(i = 0; i < PQntuples(r); i++){
			last = (uint64_t)im_pg__int(r, i, 0);
			if(im_pg__int(r, i, 1) >= cutoff_ms){
				young = true;
				break;
			}
			n++;
		}
		PQclear(r);
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

/* A conversation's preview goes with its message, in the same
 * transaction: the list never keeps, nor shows, a body retention removed. */
static int trim_previews(struct im__pg *s, const struct trim_row *t, uint64_t new_first)
{
	struct im__pgq q = {0};

	im_pgq__text(&q, t->name + 2, -1);
	im_pgq__i64(&q, (int64_t)new_first);
	return im_pg__exec(s, t->name[0] == 'g' ? PG_TRIM_PREVIEW_G : PG_TRIM_PREVIEW_U, &q, "retention previews");
}

/* Rows deleted, or -1. */
static int trim_one(struct im__store *st, const struct trim_row *t, uint64_t new_first)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	struct im__tl *c;
	PGresult *r;
	uint64_t first = 0;
	int n = 0;

	if(im_pg__tx(st, "BEGIN") != MOSQ_ERR_SUCCESS) return -1;
	im_pgq__i64(&q, t->id);
	im_pgq__i64(&q, (int64_t)new_first);
	r = im_pg__run(s, PG_TRIM_FIRST, &q, "retention first_seq");
	if(r && PQntuples(r) == 1){
		first = (uint64_t)im_pg__int(r, 0, 0);
		PQclear(r);
		r = im_pg__run(s, PG_TRIM_DELETE, &q, "retention delete");
		if(r) n = atoi(PQcmdTuples(r));
		if(r && trim_previews(s, t, new_first) != MOSQ_ERR_SUCCESS){
			PQclear(r);
			r = NULL;
		}
	}
	PQclear(r);
	if(r == NULL || im_pg__tx(st, "COMMIT") != MOSQ_ERR_SUCCESS){
		if(!s->broken) im_pg__tx(st, "ROLLBACK");
		return -1;
	}
	c = im_pg__cache_find(s, t->name, strlen(t->name));
	if(c && first) c->first = first;
	return n;
}

int im_pg__trim_step(struct im__store *st, int64_t cutoff_ms, int64_t keep, uint32_t budget,
		int64_t *cursor_id, bool *done)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	struct trim_row rows[LIST];
	int n, i, deleted = 0, d;
	uint64_t new_first = 0;
	bool partial = false;
	PGresult *r;

	*done = false;
	/* Outside a batch: connect again here too if the connection is gone. */
	if(im_pg__ensure(st) != MOSQ_ERR_SUCCESS) return -1;
	im_pgq__i64(&q, *cursor_id);
	r = im_pg__run(s, PG_TRIM_LIST, &q, "retention list");
	if(r == NULL) return -1;
	n = PQntuples(r);
	for(i = 0; i < n; i++){
		rows[i].id = im_pg__int(r, i, 0);
		snprintf(rows[i].name, sizeof(rows[i].name), "%s", im_pg__text(r, i, 1));
		rows[i].head = (uint64_t)im_pg__int(r, i, 2);
		rows[i].first = (uint64_t)im_pg__int(r, i, 3);
	}
	PQclear(r);
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
