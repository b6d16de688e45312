/*
 * sync and ack [W]. The broker thread checked the request's shape and its
 * view of who may read what; the worker checks again against the store's
 * truth (a member removed after the request was queued gets FORBIDDEN).
 *
 * A sync batch is bounded by count (sync_max_frames, and the request's
 * limit) and by bytes (sync_max_bytes; one frame always fits). Its frames
 * are built in one reused arena, then packed once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "worker/internal.h"

/* Own inbox, or a group the user is in. *err on a store failure. */
static bool may_read(struct im__worker *w, const char *tl, const char *user, bool *err)
{
	*err = false;
	if(tl[0] == 'u') return strcmp(tl + 2, user) == 0;
	return im_work__is_member(w, tl + 2, strlen(tl + 2), user, err);
}

/* ---- sync ---- */

struct batch {
	struct im__worker *w;
	const char *tl;
	size_t used, budget;
	size_t *ends;          /* end offset of each frame in w->frame */
	size_t count;
};

static enum im_row batch_add(void *ctx, const struct im__msg *m)
{
	struct batch *b = ctx;
	size_t n = im_work__sync_frame(b->w, b->tl, m, NULL, 0);

	if(n == 0) return IM_ROW_ERROR;
	if(b->count > 0 && b->used + n > b->budget) return IM_ROW_STOP; /* the next batch starts here */
	if(im_buf__reserve(&b->w->frame, b->used + n) != MOSQ_ERR_SUCCESS) return IM_ROW_ERROR;
	if(im_work__sync_frame(b->w, b->tl, m, b->w->frame.data + b->used, n) != n) return IM_ROW_ERROR;
	b->used += n;
	b->ends[b->count++] = b->used;
	return IM_ROW_NEXT;
}

static void sync_status(struct im__worker *w, const struct im__job *j, Im__V1__Status st, const char *why)
{
	Im__V1__SyncBatch sb = IM__V1__SYNC_BATCH__INIT;

	sb.has_status = 1;
	sb.status = st;
	sb.reason = (char *)why;
	sb.timeline = (char *)j->u.sync.timeline;
	sb.has_store_id = 1;
	sb.store_id = w->st.store_id;
	im_work__reply(w, j, &sb.base, true);
}

int im_work__sync(struct im__worker *w, struct im__job *j)
{
	Im__V1__SyncBatch sb = IM__V1__SYNC_BATCH__INIT;
	const char *name = j->u.sync.timeline;
	uint32_t limit = j->u.sync.limit;
	struct batch b = {0};
	struct im__tl *tl;
	uint64_t cursor = 0, after;
	bool err, more = false;
	size_t i;
	int rc;

	if(!may_read(w, name, j->user, &err)){
		if(err) return IM_WORK_RETRY;
		sync_status(w, j, IM__V1__STATUS__FORBIDDEN, "not a member of the group");
		return MOSQ_ERR_SUCCESS;
	}
	tl = w->st.ops->timeline(&w->st, name, strlen(name), false, &err);
	if(err || w->st.ops->cursor_get(&w->st, tl, j->user, j->to.client_id ? j->to.client_id : "", &cursor) != MOSQ_ERR_SUCCESS){
		return IM_WORK_RETRY;
	}
	after = j->u.sync.has_after ? j->u.sync.after : cursor;
	if(limit == 0 || limit > w->cfg.sync_max_frames) limit = w->cfg.sync_max_frames;
	b.w = w;
	b.tl = name;
	b.budget = w->cfg.sync_max_bytes;
	b.ends = im_calloc(limit, sizeof(size_t));
	sb.frames = im_calloc(limit, sizeof(ProtobufCBinaryData));
	if(b.ends == NULL || sb.frames == NULL){
		rc = MOSQ_ERR_NOMEM;
	}else if(tl){
		rc = w->st.ops->range(&w->st, tl, after, limit, im_now_ms(), batch_add, &b, &more);
	}else{
		rc = MOSQ_ERR_SUCCESS;
	}
	if(rc == MOSQ_ERR_UNKNOWN){
		free(b.ends);
		free(sb.frames);
		return IM_WORK_RETRY;
	}
	if(rc != MOSQ_ERR_SUCCESS){
		/* Out of memory: a distinct answer, never an empty OK batch that
		 * claims there is more (the client would ask forever). */
		sync_status(w, j, IM__V1__STATUS__INTERNAL, "out of memory; try again");
	}else{
		for(i = 0; i < b.count; i++){
			size_t start = i ? b.ends[i - 1] : 0;
			sb.frames[i].data = w->frame.data + start;
			sb.frames[i].len = b.ends[i] - start;
		}
		sb.n_frames = b.count;
		IM_STAT_ADD(w->metrics->sync_frames, b.count);
		sb.has_status = 1;
		sb.status = IM__V1__STATUS__OK;
		sb.timeline = (char *)name;
		sb.has_head_seq = 1;
		sb.head_seq = tl ? tl->head : 0;
		sb.has_first_seq = 1;
		sb.first_seq = tl ? tl->first : 1;
		sb.has_has_more = 1;
		sb.has_more = more;
		sb.has_after_seq = 1;
		sb.after_seq = after;
		sb.has_cursor = 1;
		sb.cursor = cursor;
		sb.has_unread = 1;
		sb.unread = sb.head_seq > cursor ? sb.head_seq - cursor : 0;
		sb.has_store_id = 1;
		sb.store_id = w->st.store_id;
		im_work__reply(w, j, &sb.base, true);
	}
	free(b.ends);
	free(sb.frames);
	return MOSQ_ERR_SUCCESS;
}

/* ---- ack (msg-fin) ---- */

/* Read receipts come from the cursors the ack moves: a user's read mark
 * is the highest of its devices' cursors. When it moves, who wrote the
 * messages now read learns it (in a group: every member, on the group's
 * event topic). Nothing else is kept: the cursors are the truth.
 *
 * In an inbox each writer learns only of its own messages: the mark as far
 * as it passed them (what `reads` would show that writer, asked of the
 * store), never the mark itself, which would tell how many others wrote
 * and when the owner reads. */
struct readers {
	struct im__worker *w;
	struct im__tl *t;
	const char *user;
	uint64_t seq;
	int64_t now;
};

static enum im_row peer_sees(void *ctx, const char *user, uint64_t seq)
{
	(void)user;
	*(uint64_t *)ctx = seq;
	return IM_ROW_NEXT;
}

static enum im_row tell_reader(void *ctx, const char *peer)
{
	struct readers *r = ctx;
	Im__V1__Event ev = IM__V1__EVENT__INIT;
	char tl[IM_TL_MAX + 1];
	uint64_t seq = r->seq, head;

	/* peer NULL: a group's read mark, told on the group's own topic. */
	if(peer){
		seq = 0;
		/* A store failure fails the batch (tried again). */
		if(r->w->st.ops->reads_of(&r->w->st, r->t, peer, peer_sees, &seq, &head) != MOSQ_ERR_SUCCESS) return IM_ROW_ERROR;
		if(seq == 0) return IM_ROW_NEXT;
		snprintf(tl, sizeof(tl), "u/%s", peer);
	}
	ev.has_kind = 1;
	ev.kind = IM__V1__EVENT__KIND__READ;
	ev.user = (char *)r->user;
	ev.timeline = r->t->name;
	ev.has_seq = 1;
	ev.seq = seq;
	ev.has_ts_ms = 1;
	ev.ts_ms = r->now;
	im_work__emit(r->w, im_work__event(r->w, peer ? tl : r->t->name, &ev));
	return IM_ROW_NEXT;
}

static int read_moved(struct im__worker *w, struct im__tl *tl, const char *user, uint64_t cursor)
{
	/* The store calls tell_reader only when the mark moved, to cursor. */
	struct readers r = {w, tl, user, cursor, im_now_ms()};
	uint64_t before, after;

	if(w->st.ops->read_mark(&w->st, tl, user, cursor, &before, &after, tell_reader, &r) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	if(tl->name[0] == 'g' && after > before) tell_reader(&r, NULL);
	return MOSQ_ERR_SUCCESS;
}

static void ack_reply(struct im__worker *w, const struct im__job *j, Im__V1__Status st, const char *why,
		bool have_state, uint64_t cursor, uint64_t head)
{
	Im__V1__AckResponse r = IM__V1__ACK_RESPONSE__INIT;

	r.has_status = 1;
	r.status = st;
	r.reason = (char *)why;
	r.timeline = (char *)j->u.ack.timeline;
	/* Also on a refusal (seq beyond head): the client learns where it is. */
	if(have_state){
		r.has_cursor = 1;
		r.cursor = cursor;
		r.has_head_seq = 1;
		r.head_seq = head;
	}
	r.has_store_id = 1;
	r.store_id = w->st.store_id;
	im_work__reply(w, j, &r.base, false);
}

int im_work__ack(struct im__worker *w, struct im__job *j)
{
	const char *name = j->u.ack.timeline, *cid = j->to.client_id ? j->to.client_id : "";
	uint64_t seq = j->u.ack.seq, head, now = 0;
	struct im__tl *tl;
	bool err;

	if(!may_read(w, name, j->user, &err)){
		if(err) return IM_WORK_RETRY;
		ack_reply(w, j, IM__V1__STATUS__FORBIDDEN, "not a member of the group", false, 0, 0);
		return MOSQ_ERR_SUCCESS;
	}
	tl = w->st.ops->timeline(&w->st, name, strlen(name), false, &err);
	if(err) return IM_WORK_RETRY;
	head = tl ? tl->head : 0;
	if(seq > head){
		if(w->st.ops->cursor_get(&w->st, tl, j->user, cid, &now) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
		ack_reply(w, j, IM__V1__STATUS__BAD_REQUEST, "seq is beyond the timeline's head", true, now, head);
		return MOSQ_ERR_SUCCESS;
	}
	if(tl && w->st.ops->cursor_set(&w->st, tl, j->user, cid, seq, &now) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
	if(tl && read_moved(w, tl, j->user, now) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
	IM_STAT_ADD(w->metrics->acks, 1);
	ack_reply(w, j, IM__V1__STATUS__OK, NULL, true, now, head);
	return MOSQ_ERR_SUCCESS;
}
