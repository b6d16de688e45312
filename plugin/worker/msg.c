/*
 * Applying a journaled message [W]: authorise against the store's truth
 * (group membership, the new-timeline budget), compress, append with seq
 * and dedup, and produce what the broker thread sends: the frames and the
 * Receipt.
 *
 * Refusals here come after the acknowledgement (the record was journaled
 * because the broker thread's view allowed it): they are rare races (a
 * member removed meanwhile) and budget limits, and the sender learns of
 * them from the Receipt, with the reason.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <zlib.h>

#include "worker/internal.h"
#include "codec/record.h"
#include "codec/route.h"

static const char *nz(const char *s)
{
	return (s && s[0]) ? s : NULL;
}

/* Deflates m's body into w->zbuf when that is worth it: at least
 * compress_min bytes, and smaller afterwards. On any failure the body
 * stays as it is: compression is an optimisation, never a reason to
 * refuse a message. */
static void maybe_compress(struct im__worker *w, struct im__msg *m)
{
	uLongf out;

	if(w->cfg.compress_min == 0 || m->body_len < w->cfg.compress_min) return;
	out = compressBound((uLong)m->body_len);
	if(im_buf__reserve(&w->zbuf, out) != MOSQ_ERR_SUCCESS) return;
	if(compress2(w->zbuf.data, &out, m->body, (uLong)m->body_len, 6) != Z_OK || out >= m->body_len) return;
	m->raw_len = (uint32_t)m->body_len;
	m->body = w->zbuf.data;
	m->body_len = out;
	m->flags |= IM__V1__HEADER_FLAG__FLAG_COMPRESSED;
}

static void receipt(struct im__worker *w, const struct im__job *j, const struct im__rec *r,
		const struct im__appended *a, Im__V1__Status st, const char *why)
{
	Im__V1__Receipt rc = IM__V1__RECEIPT__INIT;

	if(j->to.client_id == NULL) return;
	rc.has_status = 1;
	rc.status = st;
	rc.reason = (char *)why;
	rc.cmid = (char *)nz(r->cmid);
	rc.has_store_id = 1;
	rc.store_id = w->st.store_id;
	if(a == NULL){
		rc.timeline = (char *)r->to;
	}else{
		rc.timeline = (char *)a->timeline;
		rc.has_seq = 1;
		rc.seq = a->seq;
		rc.has_ts_ms = 1;
		rc.ts_ms = a->ts_ms;
		rc.has_duplicate = 1;
		rc.duplicate = a->duplicate;
		if(a->own_seq){
			rc.has_own_seq = 1;
			rc.own_seq = a->own_seq;
		}
	}
	im_work__reply(w, j, &rc.base, false);
}

static void refuse(struct im__worker *w, const struct im__job *j, const struct im__rec *r, Im__V1__Status st, const char *why)
{
	IM_STAT_ADD(w->metrics->worker_refused, 1);
	im_log(MOSQ_LOG_NOTICE, "im: not stored: a message from \"%s\" to %s (journal record %" PRIu64 "): %s.",
			r->sender, r->to, j->lsn, why);
	receipt(w, j, r, NULL, st, why);
}

/* new_timelines_per_min: a user may open so many timelines a minute (a
 * message to an inbox nobody wrote to before creates it). */
static bool new_timeline_ok(struct im__worker *w, const char *sender)
{
	double rate = w->cfg.new_timelines_per_min / 60.0;
	struct im__bucket *b;

	if(w->cfg.new_timelines_per_min == 0) return true;
	b = im_map__get(&w->new_tl, sender, strlen(sender));
	if(b == NULL){
		b = im_calloc(1, sizeof(*b));
		if(b == NULL || im_map__put(&w->new_tl, sender, strlen(sender), b) != MOSQ_ERR_SUCCESS){
			free(b);
			return true;
		}
	}
	return im_bucket__take(b, rate, w->cfg.new_timelines_per_min, 1.0, im_mono_ms());
}

/* The record's body as sent: opened if the journal holds it sealed. */
static bool body_of(struct im__worker *w, const struct im__job *j, const struct im__rec *r,
		const void **body, size_t *len)
{
	const void *out;
	size_t n;

	*body = r->body;
	*len = r->body_len;
	if(r->key_id == 0) return true;
	if(w->crypt == NULL || im_crypt__open(w->crypt, r->key_id, "", j->lsn, r->body, r->body_len, &out, &n) != MOSQ_ERR_SUCCESS
			|| im_buf__reserve(&w->plain, n + 1) != MOSQ_ERR_SUCCESS){
		return false;
	}
	/* Copied: sealing the row for the store reuses the keyring's buffer. */
	memcpy(w->plain.data, out, n);
	*body = w->plain.data;
	*len = n;
	return true;
}

/* A short text preview for the conversation list: up to 64 bytes of a text
 * body, cut at a character. None with encryption at rest (the list would
 * keep in clear what the store seals), for a content type that is not
 * text, or for a body that is not UTF-8 text. */
static const char *preview(const struct im__worker *w, const struct im__rec *r, const void *body, size_t len,
		char out[IM_PREVIEW_MAX + 1])
{
	const unsigned char *b = body;
	size_t n = 0, cl;

	if(w->crypt || len == 0 || (r->ctype[0] && strncmp(r->ctype, "text/", 5))) return NULL;
	while(n < len){
		if(b[n] < 0x20 && b[n] != '\n' && b[n] != '\t') return NULL;
		cl = b[n] < 0x80 ? 1 : (b[n] & 0xE0) == 0xC0 ? 2 : (b[n] & 0xF0) == 0xE0 ? 3 : (b[n] & 0xF8) == 0xF0 ? 4 : 0;
		if(cl == 0 || n + cl > len) return NULL;
		if(n + cl > IM_PREVIEW_MAX) break;
		n += cl;
	}
	if(!im_name__utf8_valid(body, n)) return NULL;
	memcpy(out, body, n);
	out[n] = '\0';
	return out;
}

/* ---- a group's last message, once per batch ----
 * Every group message moved its group's row and, in a group of at most
 * IM_STORE_FAN_MAX members, each member's row (the list's order): 25 row
 * updates per message in a group of 25, where the batch's last message is
 * all the list shows. So the batch's notes of a group fold into one,
 * written before the commit or before a job that may read them (acks
 * count a group's edits; group changes count its members). A notice
 * (membership, rare) is written at once, after the batch's folded notes:
 * its member count decides how the rows are kept. */

static int gnote_write(struct im__worker *w, const struct im__gnote *g)
{
	return w->st.ops->note_last(&w->st, NULL, g->grp, g->seq, g->ts, g->sender, g->flags,
			g->has_preview ? g->preview : NULL, g->edits);
}

int im_work__notes_flush(struct im__worker *w)
{
	size_t i, n = w->n_gnotes;

	w->n_gnotes = 0;
	for(i = 0; i < n; i++){
		if(gnote_write(w, &w->gnotes[i]) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_work__notes_drop(struct im__worker *w)
{
	w->n_gnotes = 0;
}

static int note_group(struct im__worker *w, const char *grp, uint64_t seq, int64_t ts, const char *sender,
		uint32_t flags, const char *pv)
{
	struct im__gnote *g = NULL;
	int edit = (flags & (IM__V1__HEADER_FLAG__FLAG_EDIT | IM__V1__HEADER_FLAG__FLAG_RECALL)) != 0;
	size_t i;

	for(i = 0; i < w->n_gnotes; i++){
		if(!strcmp(w->gnotes[i].grp, grp)){
			g = &w->gnotes[i];
			break;
		}
	}
	if(flags & IM_STORE_FLAG_SYSTEM){
		if(g && im_work__notes_flush(w) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		return w->st.ops->note_last(&w->st, NULL, grp, seq, ts, sender, flags, pv, 0);
	}
	if(g == NULL){
		if(w->n_gnotes == IM_WORK_GNOTES && im_work__notes_flush(w) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
		g = &w->gnotes[w->n_gnotes++];
		memset(g, 0, sizeof(*g));
		snprintf(g->grp, sizeof(g->grp), "%s", grp);
	}
	/* One writer per timeline: seqs only grow within a batch. */
	g->seq = seq;
	g->ts = ts;
	g->flags = flags;
	snprintf(g->sender, sizeof(g->sender), "%s", sender);
	g->has_preview = pv != NULL;
	if(pv) snprintf(g->preview, sizeof(g->preview), "%s", pv);
	g->edits += edit;
	return MOSQ_ERR_SUCCESS;
}

/* The conversation list follows every message (not notices in an inbox).
 * An edit or a recall is not a new message for the reader: it moves the
 * conversation's last message, never its unread count (a group's count
 * leaves them out in the store). */
static int note_last(struct im__worker *w, const struct im__rec *r, const struct im__msg *m,
		const struct im__appended *a, const char *pv)
{
	const struct im__store_ops *o = w->st.ops;
	const char *peer = r->to + 2;
	bool to_read = r->op == IM_REC_PLAIN && strcmp(peer, r->sender);

	if(r->to[0] == 'g') return note_group(w, peer, a->seq, m->ts_ms, r->sender, m->flags, pv);
	if(r->kind == IM_REC_SYSTEM) return MOSQ_ERR_SUCCESS;
	if(o->note_last(&w->st, peer, r->sender, a->seq, m->ts_ms, r->sender, m->flags, pv, to_read ? 1 : 0) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	if(a->own_seq == 0) return MOSQ_ERR_SUCCESS;
	return o->note_last(&w->st, r->sender, peer, a->own_seq, m->ts_ms, r->sender, m->flags, pv, 0);
}

static bool is_admin(const struct im__worker *w, const char *user)
{
	char *const *ad;

	for(ad = w->cfg.admins; ad && *ad; ad++){
		if(!strcmp(*ad, user)) return true;
	}
	return false;
}

/* An edit or a recall: checks it against the message it names and changes
 * that message (and its mirror in the sender's inbox). Returns
 * MOSQ_ERR_SUCCESS with *why NULL when m may be appended as the event,
 * with *why set when it is refused, or a store failure. */
static int change(struct im__worker *w, const struct im__rec *r, struct im__tl *to, struct im__tl *own,
		struct im__msg *m, Im__V1__Status *st, const char **why)
{
	const struct im__store_ops *o = w->st.ops;
	uint32_t dead = IM__V1__HEADER_FLAG__FLAG_SYSTEM | IM__V1__HEADER_FLAG__FLAG_EDIT | IM__V1__HEADER_FLAG__FLAG_RECALL;
	struct im__msg_ref ref;
	struct im__group *g;
	bool found, err, owner = false;
	uint32_t flags;

	*why = NULL;
	if(o->lookup(&w->st, to, r->ref_seq, &found, &ref) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	if(!found){
		*st = IM__V1__STATUS__NOT_FOUND;
		*why = "no such message in this timeline (never sent, or removed by retention)";
	}else if(ref.copy || (ref.flags & dead)){
		*st = IM__V1__STATUS__BAD_REQUEST;
		*why = ref.copy ? "name the message by its seq in the timeline it was sent to" : "notices, edits and recalls cannot be changed";
	}else if(ref.flags & IM__V1__HEADER_FLAG__FLAG_RECALLED){
		*st = IM__V1__STATUS__CONFLICT;
		*why = "the message was recalled";
	}else if(strcmp(ref.sender, r->sender)){
		if(r->op == IM_REC_RECALL && r->to[0] == 'g'){
			g = o->group(&w->st, r->to + 2, strlen(r->to + 2), &err);
			if(err) return MOSQ_ERR_UNKNOWN;
			owner = g && !strcmp(g->owner, r->sender);
		}
		if(!owner && !(r->op == IM_REC_RECALL && r->to[0] == 'g' && is_admin(w, r->sender))){
			*st = IM__V1__STATUS__FORBIDDEN;
			*why = r->op == IM_REC_EDIT ? "only its sender may edit a message"
				: "only its sender, or the group's owner or an admin, may recall a message";
		}
	}
	if(*why) return MOSQ_ERR_SUCCESS;
	/* The message itself: the new body (marked edited), or none (recalled).
	 * In a direct conversation its mirror in the sender's inbox too. */
	flags = r->op == IM_REC_EDIT ? (IM__V1__HEADER_FLAG__FLAG_EDITED | (m->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED))
		: IM__V1__HEADER_FLAG__FLAG_RECALLED;
	if(o->amend(&w->st, to, r->ref_seq, r->op == IM_REC_EDIT ? m->body : NULL, m->body_len, m->raw_len, flags) != MOSQ_ERR_SUCCESS
			|| (own && ref.peer_seq && o->amend(&w->st, own, ref.peer_seq, r->op == IM_REC_EDIT ? m->body : NULL,
					m->body_len, m->raw_len, flags) != MOSQ_ERR_SUCCESS)){
		return MOSQ_ERR_UNKNOWN;
	}
	m->flags |= r->op == IM_REC_EDIT ? IM__V1__HEADER_FLAG__FLAG_EDIT : IM__V1__HEADER_FLAG__FLAG_RECALL;
	m->ref_seq = r->ref_seq;
	m->own_ref_seq = own ? ref.peer_seq : 0;
	if(r->op == IM_REC_RECALL){
		m->body = NULL;
		m->body_len = 0;
		m->raw_len = 0;
		m->flags &= ~(uint32_t)IM__V1__HEADER_FLAG__FLAG_COMPRESSED;
	}
	return MOSQ_ERR_SUCCESS;
}

static void note_wrote(struct im__worker *w, const struct im__rec *r, bool *retry)
{
	struct im__done *d;
	size_t used = 0;
	bool first;

	if(w->st.ops->wrote(&w->st, r->sender, r->to + 2, &first) != MOSQ_ERR_SUCCESS){
		*retry = true;
		return;
	}
	if(!first || (d = im_work__done(IM_DONE_WROTE, strlen(r->sender) + strlen(r->to) + 2)) == NULL) return;
	d->sender = im_work__str(d, &used, r->sender);
	d->timeline = im_work__str(d, &used, r->to + 2);
	im_work__emit(w, d);
}

int im_work__message(struct im__worker *w, struct im__job *j)
{
	struct im__rec r;
	struct im__msg m;
	struct im__appended a;
	struct im__tl *to, *own = NULL;
	const void *body;
	size_t body_len;
	bool err = false, member, retry = false;
	Im__V1__Status st;
	const char *why;
	char pv_buf[IM_PREVIEW_MAX + 1];
	const char *pv;

	if(!im_rec__decode(j->data, j->len, &r) || !body_of(w, j, &r, &body, &body_len)){
		/* Cannot be applied however often it is tried: say so and go on
		 * rather than stall every message behind it. */
		im_log(MOSQ_LOG_ERR, "im: journal record %" PRIu64 " cannot be read (damaged, or sealed with a key no longer in plugin_opt_store_key_file): skipped.",
				j->lsn);
		IM_STAT_ADD(w->metrics->store_errors, 1);
		return MOSQ_ERR_SUCCESS;
	}
	if(r.kind == IM_REC_MESSAGE && r.to[0] == 'g'){
		member = im_work__is_member(w, r.to + 2, strlen(r.to + 2), r.sender, &err);
		if(err) return IM_WORK_RETRY;
		if(!member){
			refuse(w, j, &r, IM__V1__STATUS__FORBIDDEN, "not a member of the group");
			return MOSQ_ERR_SUCCESS;
		}
	}
	to = w->st.ops->timeline(&w->st, r.to, strlen(r.to), false, &err);
	if(err) return IM_WORK_RETRY;
	if(to == NULL && r.op != IM_REC_PLAIN){
		refuse(w, j, &r, IM__V1__STATUS__NOT_FOUND, "no such message in this timeline (never sent, or removed by retention)");
		return MOSQ_ERR_SUCCESS;
	}
	if(to == NULL){
		/* Not at replay: those were never judged (a crash) or already
		 * accepted once (a roll-forward), and the budget's clock is now. */
		if(r.kind == IM_REC_MESSAGE && !w->replaying && !new_timeline_ok(w, r.sender)){
			refuse(w, j, &r, IM__V1__STATUS__TOO_MANY, "too many new conversations a minute (plugin_opt_new_timelines_per_min)");
			return MOSQ_ERR_SUCCESS;
		}
		if((to = w->st.ops->timeline(&w->st, r.to, strlen(r.to), true, &err)) == NULL) return IM_WORK_RETRY;
	}
	if(r.own[0] && (own = w->st.ops->timeline(&w->st, r.own, strlen(r.own), true, &err)) == NULL) return IM_WORK_RETRY;

	memset(&m, 0, sizeof(m));
	m.ts_ms = r.ts_ms;
	m.sender = r.sender;
	m.cmid = nz(r.cmid);
	m.to = r.to;
	m.content_type = nz(r.ctype);
	m.expires_ms = r.expires_ms;
	m.flags = r.kind == IM_REC_SYSTEM ? IM__V1__HEADER_FLAG__FLAG_SYSTEM : 0;
	m.body = body;
	m.body_len = body_len;
	maybe_compress(w, &m);
	if(r.op != IM_REC_PLAIN){
		/* A repeat of an edit or recall (same cmid) changes nothing again:
		 * it is answered as the repeat it is, before any check. */
		if(m.cmid){
			if(w->st.ops->dedup(&w->st, r.sender, m.cmid, &a) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
			if(a.duplicate){
				IM_STAT_ADD(w->metrics->duplicates, 1);
				receipt(w, j, &r, &a, IM__V1__STATUS__OK, NULL);
				return MOSQ_ERR_SUCCESS;
			}
		}
		if(change(w, &r, to, own, &m, &st, &why) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
		if(why){
			refuse(w, j, &r, st, why);
			return MOSQ_ERR_SUCCESS;
		}
	}
	if(w->st.ops->append(&w->st, to, own, &m, &a) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;

	if(a.duplicate){
		IM_STAT_ADD(w->metrics->duplicates, 1);
	}else{
		IM_STAT_ADD(w->metrics->sequenced, 1);
		pv = r.op == IM_REC_RECALL ? NULL : preview(w, &r, body, body_len, pv_buf);
		if(note_last(w, &r, &m, &a, pv) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
		m.seq = a.seq;
		m.peer_seq = a.own_seq;
		im_work__emit(w, im_work__frame(w, to->name, &m, body, body_len));
		if(own && a.own_seq){
			m.seq = a.own_seq;
			m.peer_seq = a.seq;
			m.ref_seq = m.own_ref_seq;
			im_work__emit(w, im_work__frame(w, own->name, &m, body, body_len));
		}
		if(own && w->cfg.presence == IM_PRESENCE_CONTACTS && r.kind == IM_REC_MESSAGE) note_wrote(w, &r, &retry);
		if(retry) return IM_WORK_RETRY;
	}
	receipt(w, j, &r, &a, IM__V1__STATUS__OK, NULL);
	return MOSQ_ERR_SUCCESS;
}
