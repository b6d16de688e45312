/*
 * Groups, members and presence contacts (PostgreSQL backend). The database
 * is the truth; each broker caches the groups its worker used (owner,
 * member set). Other brokers change groups too, so the cache is only as
 * fresh as its last load: the forget_group op drops one group (for
 * cluster invalidation), a reconnect drops them all, and so does a rollback
 * of a transaction that changed one.
 *
 * A change takes the group timeline's lock first (its system message is
 * appended first), as every append does, then writes the rows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/pg/internal.h"

static const char *const seen = "s"; /* any non-NULL value */

void im_pg__group_forget_all(struct im__pg *s)
{
	im_cache__group_forget_all(&s->groups);
}

void im_pg__group_forget(struct im__pg *s, const char *name, size_t len)
{
	im_cache__group_forget(&s->groups, name, len);
}

void im_pg__group_close(struct im__pg *s)
{
	im_cache__group_forget_all(&s->groups);
	im_map__free(&s->wrote_seen, NULL);
}

/* Loads a group with its members (im_cache__load_fn). *err on a store
 * failure. */
static struct im__group *group_load(void *be, const char *name, size_t len, bool *err)
{
	struct im__pg *s = be;
	struct im__pgq q = {0};
	struct im__group *g;
	PGresult *r;
	int i, rows;

	im_pgq__text(&q, name, (int)len);
	r = im_pg__run(s, PG_GRP_LOAD, &q, "loading a group");
	if(r == NULL){
		*err = true;
		return NULL;
	}
	rows = PQntuples(r);
	if(rows == 0){
		PQclear(r);
		return NULL;
	}
	g = im_cache__group_new(im_pg__text(r, 0, 0));
	for(i = 0; g && i < rows; i++){
		const char *u = im_pg__text(r, i, 1);
		if(u && im_cache__group_add(g, u) != MOSQ_ERR_SUCCESS) break;
	}
	PQclear(r);
	if(g == NULL || i < rows){
		im_cache__group_free(g);
		*err = true;
		return NULL;
	}
	return g;
}

struct im__group *im_pg__group(struct im__store *st, const char *name, size_t len, bool *err)
{
	struct im__pg *s = im_pg(st);

	return im_cache__group(&s->groups, name, len, group_load, s, err);
}

static int member_write(struct im__pg *s, bool add, const char *group, const char *user, int64_t now)
{
	struct im__pgq q = {0};

	im_pgq__text(&q, group, -1);
	im_pgq__text(&q, user, -1);
	if(add) im_pgq__i64(&q, now);
	return im_pg__exec(s, add ? PG_MEM_INSERT : PG_MEM_DELETE, &q, "changing members");
}

/* The database part of a change. */
static int change_rows(struct im__pg *s, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, int64_t now)
{
	struct im__pgq q = {0};
	PGresult *r;
	size_t i;
	int rc = MOSQ_ERR_SUCCESS;

	if(op == IM_GROUP_CREATE){
		im_pgq__text(&q, group, -1);
		im_pgq__text(&q, actor, -1);
		im_pgq__i64(&q, now);
		r = im_pg__run(s, PG_GRP_INSERT, &q, "creating a group");
		if(r == NULL) return MOSQ_ERR_UNKNOWN;
		if(PQntuples(r) == 0){
			/* The seam has no "conflict" answer: the batch fails, and its
			 * retry (the cache dropped with the rollback) sees the group. */
			im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: group %s was created by another broker meanwhile.", group);
			rc = MOSQ_ERR_UNKNOWN;
		}
		PQclear(r);
		if(rc == MOSQ_ERR_SUCCESS) rc = member_write(s, true, group, actor, now);
	}
	if(op == IM_GROUP_LEAVE) return member_write(s, false, group, actor, now);
	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		rc = member_write(s, op != IM_GROUP_REMOVE, group, users[i], now);
	}
	return rc;
}

int im_pg__group_change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, struct im__tl *tl, const struct im__msg *sys, uint64_t *seq)
{
	struct im__pg *s = im_pg(st);

	s->groups_dirty = true;
	s->wrote = true;
	if(im_pg__append_one(st, tl, sys, seq) != MOSQ_ERR_SUCCESS
			|| change_rows(s, op, group, actor, users, n, im_now_ms()) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	im_cache__group_change(&s->groups, op, group, actor, users, n, group_load, s);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__groups_of(struct im__store *st, const char *user, im_store__name_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	int i;

	im_pgq__text(&q, user, -1);
	r = im_pg__run(s, PG_GRP_OF_USER, &q, "listing groups");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(i = 0; row == IM_ROW_NEXT && i < PQntuples(r); i++) row = fn(ctx, im_pg__text(r, i, 0));
	PQclear(r);
	return row == IM_ROW_ERROR ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
}

/* One round trip for all the users ("\n"-separated: names hold no control
 * characters), each counted through members_by_user up to upto rows (an
 * owner is always a member). Not prepared: group changes are rare. */
int im_pg__group_counts(struct im__store *st, const char *const *users, size_t n, bool owned, uint32_t upto,
		uint32_t *counts)
{
	static const char *const sql[2] = {
		"SELECT (SELECT count(*) FROM (SELECT 1 FROM members WHERE usr = t.u LIMIT $2::int8) x)"
		" FROM unnest(string_to_array($1::text, E'\n') COLLATE \"C\") WITH ORDINALITY AS t(u, i) ORDER BY t.i",
		"SELECT (SELECT count(*) FROM (SELECT 1 FROM members m JOIN groups g ON g.name = m.grp"
		" WHERE m.usr = t.u AND g.owner = t.u LIMIT $2::int8) x)"
		" FROM unnest(string_to_array($1::text, E'\n') COLLATE \"C\") WITH ORDINALITY AS t(u, i) ORDER BY t.i",
	};
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	size_t i, len = 0;
	char *names;
	PGresult *r;
	int rc = MOSQ_ERR_SUCCESS;

	if(n == 0) return MOSQ_ERR_SUCCESS;
	for(i = 0; i < n; i++) len += strlen(users[i]) + 1;
	if((names = im_malloc(len)) == NULL) return MOSQ_ERR_NOMEM;
	for(i = 0, len = 0; i < n; i++){
		if(i) names[len++] = '\n';
		memcpy(names + len, users[i], strlen(users[i]));
		len += strlen(users[i]);
	}
	im_pgq__text(&q, names, (int)len);
	im_pgq__i64(&q, upto ? (int64_t)upto : INT64_MAX);
	r = im_pg__adhoc(s, sql[owned], &q, "counting users' groups");
	free(names);
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	if(PQntuples(r) != (int)n){
		im_log(MOSQ_LOG_ERR, "im: store: PostgreSQL: counting users' groups: %d rows for %zu users.", PQntuples(r), n);
		rc = MOSQ_ERR_UNKNOWN;
	}
	for(i = 0; rc == MOSQ_ERR_SUCCESS && i < n; i++) counts[i] = (uint32_t)im_pg__int(r, (int)i, 0);
	PQclear(r);
	return rc;
}

/* Rows come ordered by group: members are gathered until the name changes. */
int im_pg__each_group(struct im__store *st, im_store__group_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	enum im_row row = IM_ROW_NEXT;
	const char **members = NULL;
	size_t cap = 0, n;
	PGresult *r;
	int i, start, rows;

	r = im_pg__run(s, PG_GRP_ALL, NULL, "loading groups");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	rows = PQntuples(r);
	for(start = 0; row == IM_ROW_NEXT && start < rows; start = i){
		const char *name = im_pg__text(r, start, 0);
		for(i = start; i < rows && !strcmp(im_pg__text(r, i, 0), name); i++);
		n = (size_t)(i - start);
		if(n > cap){
			const char **nm = realloc(members, n * sizeof(*nm));
			if(nm == NULL){
				row = IM_ROW_ERROR;
				break;
			}
			members = nm;
			cap = n;
		}
		for(n = 0; (int)n < i - start; n++) members[n] = im_pg__text(r, start + (int)n, 2);
		row = fn(ctx, name, im_pg__text(r, start, 1), members, n);
	}
	PQclear(r);
	free(members);
	return row == IM_ROW_ERROR ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
}

int im_pg__wrote(struct im__store *st, const char *writer, const char *reader, bool *first)
{
	struct im__pg *s = im_pg(st);
	struct im__pgq q = {0};
	char key[2 * IM_NAME_MAX + 2];
	int n = snprintf(key, sizeof(key), "%s\n%s", writer, reader);
	PGresult *r;

	*first = false;
	if(n <= 0 || (size_t)n >= sizeof(key) || im_map__get(&s->wrote_seen, key, (size_t)n)) return MOSQ_ERR_SUCCESS;
	s->wrote = true;
	im_pgq__text(&q, writer, -1);
	im_pgq__text(&q, reader, -1);
	im_pgq__i64(&q, im_now_ms());
	r = im_pg__run(s, PG_WROTE_INSERT, &q, "noting a contact");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	/* Another broker noting the same pair at once: one of them is first. */
	*first = PQntuples(r) == 1;
	PQclear(r);
	/* Remembered even if the transaction rolls back, as in the SQLite
	 * backend: a contact is a permission the writer gave by writing. */
	im_map__put(&s->wrote_seen, key, (size_t)n, (void *)seen);
	return MOSQ_ERR_SUCCESS;
}

int im_pg__each_wrote(struct im__store *st, im_store__pair_fn fn, void *ctx)
{
	struct im__pg *s = im_pg(st);
	enum im_row row = IM_ROW_NEXT;
	PGresult *r;
	int i;

	r = im_pg__run(s, PG_WROTE_ALL, NULL, "loading contacts");
	if(r == NULL) return MOSQ_ERR_UNKNOWN;
	for(i = 0; row == IM_ROW_NEXT && i < PQntuples(r); i++) row = fn(ctx, im_pg__text(r, i, 0), im_pg__text(r, i, 1));
	PQclear(r);
	return row == IM_ROW_ERROR ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
}
