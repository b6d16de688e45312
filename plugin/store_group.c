/*
 * Groups and members. The database is the truth; a cache of each group
 * touched since start (owner, member set) answers the ACL check, which
 * runs once per message per subscriber. Only this plugin writes these
 * tables, so the cache is updated after each COMMIT and never goes stale.
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "im.h"

static const char *const member = "m"; /* any non-NULL value */

static int fail(struct im__store *st, const char *what)
{
	mosquitto_log_printf(MOSQ_LOG_ERR, "im: store: %s: %s", what, sqlite3_errmsg(st->db));
	return MOSQ_ERR_UNKNOWN;
}

int im_store__group_prepare(struct im__store *st)
{
	const struct { sqlite3_stmt **s; const char *sql; } t[] = {
		{&st->grp_get, "SELECT owner FROM groups WHERE name = ?1"},
		{&st->grp_members, "SELECT user FROM members WHERE grp = ?1"},
		{&st->grp_insert, "INSERT INTO groups(name, owner, created_ms) VALUES(?1, ?2, ?3)"},
		{&st->mem_insert, "INSERT OR IGNORE INTO members(grp, user, joined_ms) VALUES(?1, ?2, ?3)"},
		{&st->mem_delete, "DELETE FROM members WHERE grp = ?1 AND user = ?2"},
		{&st->grp_of_user, "SELECT grp FROM members WHERE user = ?1 ORDER BY grp"},
		{&st->contact_insert, "INSERT OR IGNORE INTO contacts(a, b, since_ms) VALUES(?1, ?2, ?3)"},
		{&st->contact_check, "SELECT 1 FROM contacts WHERE a = ?1 AND b = ?2"
			" UNION ALL SELECT 1 FROM members x JOIN members y ON x.grp = y.grp WHERE x.user = ?3 AND y.user = ?4 LIMIT 1"},
	};
	size_t i;

	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		if(sqlite3_prepare_v3(st->db, t[i].sql, -1, SQLITE_PREPARE_PERSISTENT, t[i].s, NULL) != SQLITE_OK){
			return fail(st, t[i].sql);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static void group_free(void *v)
{
	struct im__group *g = v;

	if(g == NULL) return;
	mosquitto_free(g->owner);
	im_map__free(&g->members, NULL);
	mosquitto_free(g);
}

void im_store__group_close(struct im__store *st)
{
	im_map__free(&st->groups, group_free);
	im_map__free(&st->contacts_seen, NULL);
}

/* The pair in a fixed order, "a\nb" with a < b ('\n' is in no name). */
static size_t pair_key(char *out, size_t cap, const char *x, size_t xl, const char *y, size_t yl)
{
	int c = memcmp(x, y, xl < yl ? xl : yl);
	bool swap = c > 0 || (c == 0 && xl > yl);

	if(xl + yl + 2 > cap) return 0;
	memcpy(out, swap ? y : x, swap ? yl : xl);
	out[swap ? yl : xl] = '\n';
	memcpy(out + (swap ? yl : xl) + 1, swap ? x : y, swap ? xl : yl);
	out[xl + yl + 1] = '\0';
	return xl + yl + 1;
}

void im_store__contact_note(struct im__store *st, const char *a, const char *b)
{
	char key[2 * IM_NAME_MAX + 2], *nl;
	size_t n = pair_key(key, sizeof(key), a, strlen(a), b, strlen(b));

	if(n == 0 || im_map__get(&st->contacts_seen, key, n)) return;
	nl = strchr(key, '\n');
	sqlite3_bind_text(st->contact_insert, 1, key, (int)(nl - key), SQLITE_STATIC);
	sqlite3_bind_text(st->contact_insert, 2, nl + 1, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st->contact_insert, 3, im_store__now_ms());
	if(im_store__step(st, st->contact_insert, "noting a contact") == MOSQ_ERR_SUCCESS){
		im_map__put(&st->contacts_seen, key, n, (void *)member);
	}
}

bool im_store__are_contacts(struct im__store *st, const char *reader, const char *user, size_t len)
{
	char key[2 * IM_NAME_MAX + 2], *nl;
	size_t n = pair_key(key, sizeof(key), reader, strlen(reader), user, len);
	int rc;

	if(n == 0) return false;
	nl = strchr(key, '\n');
	sqlite3_bind_text(st->contact_check, 1, key, (int)(nl - key), SQLITE_STATIC);
	sqlite3_bind_text(st->contact_check, 2, nl + 1, -1, SQLITE_STATIC);
	sqlite3_bind_text(st->contact_check, 3, reader, -1, SQLITE_STATIC);
	sqlite3_bind_text(st->contact_check, 4, user, (int)len, SQLITE_STATIC);
	rc = sqlite3_step(st->contact_check);
	sqlite3_reset(st->contact_check);
	return rc == SQLITE_ROW;
}

/* Loads a group's row and members. Returns NULL if absent or on error. */
static struct im__group *group_load(struct im__store *st, const char *name, size_t len)
{
	struct im__group *g;
	int rc;

	sqlite3_bind_text(st->grp_get, 1, name, (int)len, SQLITE_STATIC);
	rc = sqlite3_step(st->grp_get);
	if(rc != SQLITE_ROW){
		sqlite3_reset(st->grp_get);
		if(rc != SQLITE_DONE) fail(st, "loading a group");
		return NULL;
	}
	g = mosquitto_calloc(1, sizeof(*g));
	if(g) g->owner = mosquitto_strdup((const char *)sqlite3_column_text(st->grp_get, 0));
	sqlite3_reset(st->grp_get);
	if(g == NULL || g->owner == NULL){
		group_free(g);
		return NULL;
	}
	sqlite3_bind_text(st->grp_members, 1, name, (int)len, SQLITE_STATIC);
	while((rc = sqlite3_step(st->grp_members)) == SQLITE_ROW){
		const char *u = (const char *)sqlite3_column_text(st->grp_members, 0);
		if(im_map__put(&g->members, u, strlen(u), (void *)member) != MOSQ_ERR_SUCCESS) break;
	}
	sqlite3_reset(st->grp_members);
	if(rc != SQLITE_DONE){
		fail(st, "loading members");
		group_free(g);
		return NULL;
	}
	return g;
}

struct im__group *im_store__group(struct im__store *st, const char *name, size_t len)
{
	struct im__group *g = im_map__get(&st->groups, name, len);

	if(g) return g;
	g = group_load(st, name, len);
	if(g && im_map__put(&st->groups, name, len, g) != MOSQ_ERR_SUCCESS){
		group_free(g);
		return NULL;
	}
	return g;
}

bool im_store__is_member(struct im__store *st, const char *group, size_t glen, const char *user)
{
	struct im__group *g = im_store__group(st, group, glen);

	return g && im_map__get(&g->members, user, strlen(user)) != NULL;
}

static int member_write(struct im__store *st, sqlite3_stmt *s, const char *group, const char *user, int64_t now)
{
	sqlite3_bind_text(s, 1, group, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, user, -1, SQLITE_STATIC);
	if(s == st->mem_insert) sqlite3_bind_int64(s, 3, now);
	return im_store__step(st, s, "changing members");
}

/* The database part of a change; caller holds the transaction. */
static int change_rows(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n, int64_t now)
{
	size_t i;
	int rc = MOSQ_ERR_SUCCESS;

	if(op == IM_GROUP_CREATE){
		sqlite3_bind_text(st->grp_insert, 1, group, -1, SQLITE_STATIC);
		sqlite3_bind_text(st->grp_insert, 2, actor, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st->grp_insert, 3, now);
		rc = im_store__step(st, st->grp_insert, "creating a group");
		if(rc == MOSQ_ERR_SUCCESS) rc = member_write(st, st->mem_insert, group, actor, now);
	}
	if(op == IM_GROUP_LEAVE) return member_write(st, st->mem_delete, group, actor, now);
	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		rc = member_write(st, op == IM_GROUP_REMOVE ? st->mem_delete : st->mem_insert, group, users[i], now);
	}
	return rc;
}

/* The cache part, after COMMIT. A failed allocation here drops the
 * group from the cache: the next use reloads it from the database. */
static void change_cache(struct im__store *st, enum im_group_op op, const char *group, const char *actor,
		char *const *users, size_t n)
{
	size_t glen = strlen(group), i;
	struct im__group *g = op == IM_GROUP_CREATE ? NULL : im_map__get(&st->groups, group, glen);
	int rc = MOSQ_ERR_SUCCESS;

	if(op == IM_GROUP_CREATE){
		/* Loaded fresh from what was just committed. */
		group_free(im_map__del(&st->groups, group, glen));
		im_store__group(st, group, glen);
		return;
	}
	if(g == NULL) return;
	if(op == IM_GROUP_LEAVE){
		im_map__del(&g->members, actor, strlen(actor));
		return;
	}
	for(i = 0; i < n && rc == MOSQ_ERR_SUCCESS; i++){
		if(op == IM_GROUP_REMOVE) im_map__del(&g->members, users[i], strlen(users[i]));
		else rc = im_map__put(&g->members, users[i], strlen(users[i]), (void *)member);
	}
	if(rc != MOSQ_ERR_SUCCESS) group_free(im_map__del(&st->groups, group, glen));
}

int im_store__group_change(struct im__store *st, enum im_group_op op, const char *group,
		const char *actor, char *const *users, size_t n, struct im__tl *tl,
		const struct im__msg *sys, uint64_t *seq)
{
	int64_t now = im_store__now_ms();

	if(im_store__begin(st) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	*seq = tl->head + 1;
	if(change_rows(st, op, group, actor, users, n, now) != MOSQ_ERR_SUCCESS
			|| im_store__insert_msg(st, tl, *seq, sys, 0) != MOSQ_ERR_SUCCESS){
		im_store__rollback(st);
		return MOSQ_ERR_UNKNOWN;
	}
	if(im_store__commit(st) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	tl->head = *seq;
	change_cache(st, op, group, actor, users, n);
	return MOSQ_ERR_SUCCESS;
}

int im_store__groups_of(struct im__store *st, const char *user,
		int (*fn)(void *ctx, const char *group), void *ctx)
{
	int rc, frc = 0;

	sqlite3_bind_text(st->grp_of_user, 1, user, -1, SQLITE_STATIC);
	while(frc == 0 && (rc = sqlite3_step(st->grp_of_user)) == SQLITE_ROW){
		frc = fn(ctx, (const char *)sqlite3_column_text(st->grp_of_user, 0));
	}
	sqlite3_reset(st->grp_of_user);
	if(frc == 0 && rc != SQLITE_DONE) return fail(st, "listing groups");
	return frc;
}
