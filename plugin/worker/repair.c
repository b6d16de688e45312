/*
 * Cluster repairs [W]: what a broker did not hear over NATS, read back
 * from the store in seq order (cluster.c asks), and the groups' cache
 * dropped when another broker changed one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "worker/internal.h"
#include "codec/frame.h"

struct repair {
	struct im__worker *w;
	const char *tl;
	uint64_t upto;          /* 0 = to the head */
	uint64_t reached;       /* the last seq handed over */
	bool failed;
};

static enum im_row repair_add(void *ctx, const struct im__msg *m)
{
	struct repair *r = ctx;
	bool raw = r->w->cfg.payload_mode == IM_PAYLOAD_RAW;
	const void *body = m->body;
	size_t len = m->body_len;
	uint8_t *inflated = NULL;
	struct im__done *d;

	if(r->upto && m->seq > r->upto) return IM_ROW_STOP;
	/* Raw subscribers get the body as it was sent. */
	if(raw && (m->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED)){
		if((inflated = im_frame__inflate(m->body, m->body_len, m->raw_len)) == NULL){
			r->failed = true;
			return IM_ROW_STOP;
		}
		body = inflated;
		len = m->raw_len;
	}
	d = im_work__frame(r->w, r->tl, m, body, len);
	free(inflated);
	if(d == NULL){
		r->failed = true;
		return IM_ROW_STOP;
	}
	d->repair = true;
	im_work__emit(r->w, d);
	r->reached = m->seq;
	return IM_ROW_NEXT;
}

static void repaired(struct im__worker *w, const char *tl, uint64_t reached, bool ok, bool anchor)
{
	size_t used = 0;
	struct im__done *d = im_work__done(IM_DONE_REPAIRED, strlen(tl) + 1);

	if(d == NULL) return; /* the broker thread retries at its next check */
	d->timeline = im_work__str(d, &used, tl);
	d->seq = reached;
	d->level = ok ? 0 : 1;
	d->anchor = anchor;
	im_work__emit(w, d);
}

void im_work__repair_failed(struct im__worker *w, const struct im__job *j)
{
	repaired(w, j->u.repair.timeline, 0, false, j->u.repair.anchor);
}

int im_work__repair(struct im__worker *w, struct im__job *j)
{
	const char *name = j->u.repair.timeline;
	struct repair r = {w, name, j->u.repair.upto, j->u.repair.after, false};
	struct im__tl *tl;
	bool err, more = false;
	int rc;

	tl = w->st.ops->timeline(&w->st, name, strlen(name), false, &err);
	if(err) return IM_WORK_RETRY;
	if(j->u.repair.anchor){
		repaired(w, name, tl ? tl->head : 0, true, true);
		return MOSQ_ERR_SUCCESS;
	}
	if(tl == NULL){
		repaired(w, name, r.upto ? r.upto : j->u.repair.after, true, false);
		return MOSQ_ERR_SUCCESS;
	}
	if(r.upto == 0 || r.upto > tl->head) r.upto = tl->head;
	if(r.upto <= j->u.repair.after){
		repaired(w, name, j->u.repair.after, true, false);
		return MOSQ_ERR_SUCCESS;
	}
	rc = w->st.ops->range(&w->st, tl, j->u.repair.after, w->cfg.sync_max_frames, im_now_ms(), repair_add, &r, &more);
	if(rc == MOSQ_ERR_UNKNOWN) return IM_WORK_RETRY;
	if(rc != MOSQ_ERR_SUCCESS || r.failed){
		repaired(w, name, r.reached, r.reached > j->u.repair.after, false);
		return MOSQ_ERR_SUCCESS;
	}
	/* Not returned up to upto and nothing more: expired or removed by
	 * retention, nothing to wait for. With more, the next repair goes on
	 * from reached. */
	repaired(w, name, (more && r.reached < r.upto) ? r.reached : r.upto, true, false);
	return MOSQ_ERR_SUCCESS;
}

static enum im_row reload_group(void *ctx, const char *group, const char *owner, const char *const *members, size_t n)
{
	struct im__worker *w = ctx;
	size_t extra = n * sizeof(char *) + strlen(group) + 1 + strlen(owner) + 1 + 4, used, i;
	struct im__done *d;
	const char **users;

	for(i = 0; i < n; i++) extra += strlen(members[i]) + 1;
	if((d = im_work__done(IM_DONE_MEMBERS, extra)) == NULL) return IM_ROW_ERROR;
	users = (const char **)(void *)d->data;
	used = n * sizeof(char *);
	d->group = im_work__str(d, &used, group);
	d->owner = im_work__str(d, &used, owner);
	d->group_op = IM_GROUP_SET;
	for(i = 0; i < n; i++) users[i] = im_work__str(d, &used, members[i]);
	d->users = users;
	d->n_users = n;
	im_work__emit(w, d);
	return IM_ROW_NEXT;
}

/* The broker thread's view of one group made the store's again: its
 * members as a "set" (none if the group is gone). */
static int reload_one(struct im__worker *w, const char *name)
{
	struct im__group *g;
	const char **users;
	size_t n = 0, k;
	bool err = false;
	enum im_row r;

	g = w->st.ops->group(&w->st, name, strlen(name), &err);
	if(err) return IM_WORK_RETRY;
	if(g == NULL) return reload_group(w, name, "", NULL, 0) == IM_ROW_NEXT ? MOSQ_ERR_SUCCESS : IM_WORK_RETRY;
	if((users = im_calloc(g->members.count + 1, sizeof(*users))) == NULL) return IM_WORK_RETRY;
	for(k = 0; k < g->members.cap; k++){
		if(g->members.slots[k].key && g->members.slots[k].val) users[n++] = g->members.slots[k].key;
	}
	r = reload_group(w, name, g->owner ? g->owner : "", users, n);
	free(users);
	return r == IM_ROW_NEXT ? MOSQ_ERR_SUCCESS : IM_WORK_RETRY;
}

int im_work__forget(struct im__worker *w, struct im__job *j)
{
	const char *g = j->u.forget.group;

	if(strcmp(w->st.ops->name, "postgresql")) return MOSQ_ERR_SUCCESS;
	im_store__forget_group(&w->st, g[0] ? g : NULL, strlen(g));
	/* Another broker changed g: what it said over NATS only names the
	 * group; the members come from the store, so a message replayed on
	 * NATS changes nothing. */
	if(g[0]) return reload_one(w, g);
	/* After a NATS outage: a change may have been missed. The broker
	 * thread's view is made whole again from the store. */
	return w->st.ops->each_group(&w->st, reload_group, w) == MOSQ_ERR_SUCCESS ? MOSQ_ERR_SUCCESS : IM_WORK_RETRY;
}
