/*
 * Groups, members and presence contacts (SQLite backend). The database is
 * the truth; the worker caches each group it touched (owner, member set)
 * to authorise group requests, group messages and syncs. The broker thread
 * keeps a view of its own for its ACL checks, fed by completions.
 *
 * Cache changes are made inside the transaction that writes them; a
 * rollback drops the whole cache (reloaded on next use), which is rare
 * and always correct.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "store/sqlite/internal.h"

static const char *const seen = "s"; /* any non-NULL value */

int im_sqlite__prepare_group(struct im__sqlite *s)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		{&s->grp_get, "SELECT owner FROM groups WHERE name = ?1"},
		{&s->grp_members, "SELECT user FROM members WHERE grp = ?1"},
		{&s->grp_insert, "INSERT INTO groups(name, owner, created_ms) VALUES(?1, ?2, ?3)"},
		{&s->mem_insert, "INSERT OR IGNORE INTO members(grp, user, joined_ms) VALUES(?1, ?2, ?3)"},
		{&s->mem_delete, "DELETE FROM members WHERE grp = ?1 AND user = ?2"},
		{&s->grp_of_user, "SELECT grp FROM members WHERE user = ?1 ORDER BY grp"},
		/* Both through members_by_user: at most ?2 index entries of the
		 * user (an owner is always a member), whatever the number of groups. */
		{&s->grp_count_member, "SELECT count(*) FROM (SELECT 1 FROM members WHERE user = ?1 LIMIT ?2)"},
		{&s->grp_count_owned, "SELECT count(*) FROM (SELECT 1 FROM members m JOIN groups g ON g.name = m.grp"
			" WHERE m.user = ?1 AND g.owner = ?1 LIMIT ?2)"},
		{&s->grp_all, "SELECT g.name, g.owner, m.user FROM groups g JOIN members m ON m.grp = g.name ORDER BY g.name"},
		{&s->wrote_insert, "INSERT OR IGNORE INTO wrote(writer, reader, since_ms) VALUES(?1, ?2, ?3)"},
		{&s->wrote_all, "SELECT writer, reader FROM wrote"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(im_sqlite__prepare(s, t[i].s, t[i].sql) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_sqlite__group_forget(struct im__sqlite *s)
{
	im_cache__group_forget_all(&s->groups);
}

void im_sqlite__group_close(struct im__sqlite *s)
{
	im_cache__group_forget_all(&s->groups);
	im_map__free(&s->wrote_seen, NULL);
}

/* Loads a group's row and members (im_cache__load_fn). *err on a store
 * failure. */
static struct im__group *group_load(void *be, const char *name, size_t len, bool *err)
{
	struct im__sqlite *s = be;
	struct im__group *g;
	int rc;

	sqlite3_bind_text(s->grp_get, 1, name, (int)len, SQLITE_STATIC);
	rc = sqlite3_step(s->grp_get);
	if(rc != SQLITE_ROW){
		sqlite3_reset(s->grp_get);
		if(rc != SQLITE_DONE) *err = im_sqlite__fail(s, "loading a group") != MOSQ_ERR_SUCCESS;
		return NULL;
	}
	g = im_cache__group_new(im_sqlite__text(s->grp_get, 0));
	sqlite3_reset(s->grp_get);
	if(g == NULL){
		*err = true;
		return NULL;
	}
	sqlite3_bind_text(s->grp_members, 1, name, (int)len, SQLITE_STATIC);
	while((rc = sqlite3_step(s->grp_members)) == SQLITE_ROW){
		const char *u = im_sqlite__text(s->grp_members, 0);
		if(im_cache__group_add(g, u) != MOSQ_ERR_SUCCESS) break;
	}
	sqlite3_reset(s->grp_members);
	if(rc != SQLITE_DONE){
		if(rc != SQLITE_ROW) im_sqlite__fail(s, "loading members");
		im_cache__group_free(g);
		*err = true;
		return NULL;
	}
	return g;
}

struct im__group *im_sqlite__group(struct im__store *st, const char *name, size_t len, bool *err)
{
	struct im__sqlite *s = im_sqlite(st);

	return im_cache__group(&s->groups, name, len, group_load, s, err);
}

static int member_write(struct im__sqlite *s, sqlite3_stmt *q, const char *group, const char *user, int64_t now)
{
	sqlite3_bind_text(q, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, user, -1, SQLITE_STATIC);
	if(q == s->mem_insert) sqlite3_bind_int64(q, 3, now);
	return im_sqlite__step(s, q, "changing members");
}

/* The database part of a change. */
static int change_rows(struct im__sqlite *s, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, int64_t now)
{
	size_t i;
	int rc = MOSQ_ERR_SUCCESS;

	if(op == IM_GROUP_CREATE){
		sqlite3_bind_text(s->grp_insert, 1, group, -1, SQLITE_STATIC);
		sqlite3_bind_text(s->grp_insert, 2, actor, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s->grp_insert, 3, now);
		rc = im_sqlite__step(s, s->grp_insert, "creating a group");
		if(rc == MOSQ_ERR_SUCCESS) rc = member_write(s, s->mem_insert, group, actor, now);
	}
	if(op == IM_GROUP_LEAVE) return member_write(s, s->mem_delete, group, actor, now);
	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		rc = member_write(s, op == IM_GROUP_REMOVE ? s->mem_delete : s->mem_insert, group, users[i], now);
	}
	return rc;
}

int im_sqlite__group_change(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, struct im__tl *tl, const struct im__msg *sys, uint64_t *seq)
{
	struct im__sqlite *s = im_sqlite(st);
	int64_t now = im_now_ms();

	s->groups_dirty = true;
	*seq = tl->head + 1;
	if(change_rows(s, op, group, actor, users, n, now) != MOSQ_ERR_SUCCESS
			|| im_sqlite__insert_msg(st, tl, *seq, sys, 0, 0, 0) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	im_cache__group_change(&s->groups, op, group, actor, users, n, group_load, s);
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__groups_of(struct im__store *st, const char *user, im_store__name_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	enum im_row r = IM_ROW_NEXT;
	int rc;

	sqlite3_bind_text(s->grp_of_user, 1, user, -1, SQLITE_STATIC);
	while(r == IM_ROW_NEXT && (rc = sqlite3_step(s->grp_of_user)) == SQLITE_ROW){
		r = fn(ctx, im_sqlite__text(s->grp_of_user, 0));
	}
	sqlite3_reset(s->grp_of_user);
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if(r == IM_ROW_NEXT && rc != SQLITE_DONE) return im_sqlite__fail(s, "listing groups");
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__group_counts(struct im__store *st, const char *const *users, size_t n, bool owned, uint32_t upto,
		uint32_t *counts)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = owned ? s->grp_count_owned : s->grp_count_member;
	size_t i;
	int rc;

	for(i = 0; i < n; i++){
		sqlite3_bind_text(q, 1, users[i], -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 2, upto ? (sqlite3_int64)upto : -1);
		rc = sqlite3_step(q);
		counts[i] = rc == SQLITE_ROW ? (uint32_t)sqlite3_column_int64(q, 0) : 0;
		sqlite3_reset(q);
		if(rc != SQLITE_ROW) return im_sqlite__fail(s, "counting a user's groups");
	}
	return MOSQ_ERR_SUCCESS;
}

/* Rows come ordered by group: members are gathered until the name changes. */
struct gather {
	char name[IM_NAME_MAX + 1], owner[IM_NAME_MAX + 1];
	char **members;
	size_t n, cap;
};

static enum im_row flush_group(struct gather *g, im_store__group_fn fn, void *ctx)
{
	enum im_row r = IM_ROW_NEXT;
	size_t i;

	if(g->name[0]) r = fn(ctx, g->name, g->owner, (const char *const *)g->members, g->n);
	for(i = 0; i < g->n; i++) free(g->members[i]);
	g->n = 0;
	g->name[0] = '\0';
	return r;
}

int im_sqlite__each_group(struct im__store *st, im_store__group_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	sqlite3_stmt *q = s->grp_all;
	struct gather g = {0};
	enum im_row r = IM_ROW_NEXT;
	int rc;

	while(r == IM_ROW_NEXT && (rc = sqlite3_step(q)) == SQLITE_ROW){
		const char *name = im_sqlite__text(q, 0);
		if(strcmp(name, g.name)){
			r = flush_group(&g, fn, ctx);
			snprintf(g.name, sizeof(g.name), "%s", name);
			snprintf(g.owner, sizeof(g.owner), "%s", im_sqlite__text(q, 1));
		}
		if(g.n == g.cap){
			size_t cap = g.cap ? g.cap * 2 : 16;
			char **nm = realloc(g.members, cap * sizeof(*nm));
			if(nm == NULL){
				r = IM_ROW_ERROR;
				break;
			}
			g.members = nm;
			g.cap = cap;
		}
		if((g.members[g.n] = im_strdup(im_sqlite__text(q, 2))) == NULL){
			r = IM_ROW_ERROR;
			break;
		}
		g.n++;
	}
	sqlite3_reset(q);
	if(r == IM_ROW_NEXT) r = flush_group(&g, fn, ctx);
	else flush_group(&g, NULL, NULL);
	free(g.members);
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if(r == IM_ROW_NEXT && rc != SQLITE_DONE) return im_sqlite__fail(s, "loading groups");
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__wrote(struct im__store *st, const char *writer, const char *reader, bool *first)
{
	struct im__sqlite *s = im_sqlite(st);
	char key[2 * IM_NAME_MAX + 2];
	int n = snprintf(key, sizeof(key), "%s\n%s", writer, reader);

	*first = false;
	if(n <= 0 || (size_t)n >= sizeof(key) || im_map__get(&s->wrote_seen, key, (size_t)n)) return MOSQ_ERR_SUCCESS;
	sqlite3_bind_text(s->wrote_insert, 1, writer, -1, SQLITE_STATIC);
	sqlite3_bind_text(s->wrote_insert, 2, reader, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s->wrote_insert, 3, im_now_ms());
	if(im_sqlite__step(s, s->wrote_insert, "noting a contact") != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	*first = sqlite3_changes(s->db) > 0;
	/* Remembered even if the transaction rolls back: then the pair is
	 * written again by the next message only after a restart. Harmless: a
	 * contact is a permission the writer already gave by writing. */
	im_map__put(&s->wrote_seen, key, (size_t)n, (void *)seen);
	return MOSQ_ERR_SUCCESS;
}

int im_sqlite__each_wrote(struct im__store *st, im_store__pair_fn fn, void *ctx)
{
	struct im__sqlite *s = im_sqlite(st);
	enum im_row r = IM_ROW_NEXT;
	int rc;

	while(r == IM_ROW_NEXT && (rc = sqlite3_step(s->wrote_all)) == SQLITE_ROW){
		r = fn(ctx, im_sqlite__text(s->wrote_all, 0), im_sqlite__text(s->wrote_all, 1));
	}
	sqlite3_reset(s->wrote_all);
	if(r == IM_ROW_ERROR) return MOSQ_ERR_NOMEM;
	if(r == IM_ROW_NEXT && rc != SQLITE_DONE) return im_sqlite__fail(s, "loading contacts");
	return MOSQ_ERR_SUCCESS;
}
