/*
 * Read marks and the conversation list [W] ($CONTROL/im/v1/reads and
 * $CONTROL/im/v1/conversations). The broker thread checked the request's
 * shape; who may see what is decided here, against the store.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "worker/internal.h"

#define CONVS_DEFAULT 50
#define CONVS_MAX 200

/* ---- reads ---- */

struct marks {
	Im__V1__ReadMark *m;
	Im__V1__ReadMark **ptrs;
	char (*users)[IM_NAME_MAX + 1];
	size_t n, cap;
};

static enum im_row add_mark(void *ctx, const char *user, uint64_t seq)
{
	struct marks *k = ctx;

	if(k->n == k->cap){
		size_t cap = k->cap ? k->cap * 2 : 16;
		void *a = im_realloc(k->m, cap * sizeof(*k->m)), *b, *c;
		if(a == NULL) return IM_ROW_ERROR;
		k->m = a;
		if((b = im_realloc(k->ptrs, cap * sizeof(*k->ptrs))) == NULL) return IM_ROW_ERROR;
		k->ptrs = b;
		if((c = im_realloc(k->users, cap * sizeof(*k->users))) == NULL) return IM_ROW_ERROR;
		k->users = c;
		k->cap = cap;
	}
	im__v1__read_mark__init(&k->m[k->n]);
	snprintf(k->users[k->n], IM_NAME_MAX + 1, "%s", user);
	k->m[k->n].has_seq = 1;
	k->m[k->n].seq = seq;
	k->n++;
	return IM_ROW_NEXT;
}

static void reads_reply(struct im__worker *w, const struct im__job *j, Im__V1__Status st, const char *why,
		struct marks *k, uint64_t head)
{
	Im__V1__ReadsResponse r = IM__V1__READS_RESPONSE__INIT;
	size_t i;

	r.has_status = 1;
	r.status = st;
	r.reason = (char *)why;
	r.timeline = (char *)j->u.reads.timeline;
	r.has_store_id = 1;
	r.store_id = w->st.store_id;
	if(k && st == IM__V1__STATUS__OK){
		/* Pointers into the arrays only now: they may have moved while growing. */
		for(i = 0; i < k->n; i++){
			k->m[i].user = k->users[i];
			k->ptrs[i] = &k->m[i];
		}
		r.marks = k->ptrs;
		r.n_marks = k->n;
		r.has_head_seq = 1;
		r.head_seq = head;
	}
	im_work__reply(w, j, &r.base, false);
}

int im_work__reads(struct im__worker *w, struct im__job *j)
{
	const char *tl = j->u.reads.timeline, *name = tl + 2;
	struct marks k = {0};
	struct im__tl *t;
	uint64_t head = 0;
	bool err, ok;
	int rc;

	/* u/<peer>: to someone in a conversation with the peer, the peer's
	 * mark only as far as it tells of the asker's own messages (or to the
	 * peer itself, its own). g/<group>: the current members' marks, to
	 * members. The store says what each may see (store.h, reads_of). */
	if(tl[0] == 'u'){
		ok = !strcmp(name, j->user);
		if(!ok && w->st.ops->has_conv(&w->st, j->user, name, &ok) != MOSQ_ERR_SUCCESS) return IM_WORK_RETRY;
	}else{
		ok = im_work__is_member(w, name, strlen(name), j->user, &err);
		if(err) return IM_WORK_RETRY;
	}
	if(!ok){
		reads_reply(w, j, IM__V1__STATUS__FORBIDDEN, tl[0] == 'u' ? "no conversation with that user" : "not a member of the group", NULL, 0);
		return MOSQ_ERR_SUCCESS;
	}
	t = w->st.ops->timeline(&w->st, tl, strlen(tl), false, &err);
	if(err) return IM_WORK_RETRY;
	rc = t ? w->st.ops->reads_of(&w->st, t, j->user, add_mark, &k, &head) : MOSQ_ERR_SUCCESS;
	if(rc == MOSQ_ERR_UNKNOWN){
		rc = IM_WORK_RETRY;
	}else if(rc != MOSQ_ERR_SUCCESS){
		reads_reply(w, j, IM__V1__STATUS__INTERNAL, "out of memory; try again", NULL, 0);
		rc = MOSQ_ERR_SUCCESS;
	}else{
		reads_reply(w, j, IM__V1__STATUS__OK, NULL, &k, head);
	}
	free(k.m);
	free(k.ptrs);
	free(k.users);
	return rc;
}

/* ---- conversations ---- */

struct page {
	Im__V1__Conversation *c;
	Im__V1__Conversation **ptrs;
	char *strings;          /* timeline, sender, preview of each, back to back */
	size_t n, cap, used, strings_cap;
	bool more;
};

#define CONV_STRINGS (IM_TL_MAX + 1 + IM_NAME_MAX + 1 + IM_PREVIEW_MAX + 1)

static enum im_row add_conv(void *ctx, const struct im__conv *v)
{
	struct page *p = ctx;
	Im__V1__Conversation *c;
	char *s;
	int n;

	if(p->n == p->cap){
		p->more = true; /* the one past the page: there is more */
		return IM_ROW_STOP;
	}
	c = &p->c[p->n];
	im__v1__conversation__init(c);
	s = p->strings + p->n * CONV_STRINGS;
	n = snprintf(s, IM_TL_MAX + 1, "%c/%s", v->kind, v->name);
	c->timeline = s;
	s += n + 1;
	snprintf(s, IM_NAME_MAX + 1, "%s", v->last_sender ? v->last_sender : "");
	c->last_sender = s;
	s += strlen(s) + 1;
	if(v->preview){
		snprintf(s, IM_PREVIEW_MAX + 1, "%s", v->preview);
		c->last_preview = s;
	}
	c->has_last_ts_ms = 1;
	c->last_ts_ms = v->last_ts;
	c->has_last_flags = 1;
	c->last_flags = v->last_flags;
	c->has_last_seq = 1;
	c->last_seq = v->last_seq;
	c->has_unread = 1;
	c->unread = v->unread;
	if(v->kind == 'u'){
		c->has_peer_read_seq = 1;
		c->peer_read_seq = v->peer_read;
	}
	p->ptrs[p->n] = c;
	p->n++;
	return IM_ROW_NEXT;
}

int im_work__conversations(struct im__worker *w, struct im__job *j)
{
	Im__V1__ConversationsResponse r = IM__V1__CONVERSATIONS_RESPONSE__INIT;
	uint32_t limit = j->u.convs.limit ? j->u.convs.limit : CONVS_DEFAULT;
	struct page p = {0};
	int rc;

	if(limit > CONVS_MAX) limit = CONVS_MAX;
	p.cap = limit;
	p.c = im_calloc(limit, sizeof(*p.c));
	p.ptrs = im_calloc(limit, sizeof(*p.ptrs));
	p.strings = im_calloc(limit, CONV_STRINGS);
	rc = (p.c && p.ptrs && p.strings) ? w->st.ops->conversations(&w->st, j->user, limit + 1, j->u.convs.before_ts,
			j->u.convs.has_before ? j->u.convs.before_tl : NULL, im_now_ms(), add_conv, &p) : MOSQ_ERR_NOMEM;
	r.has_store_id = 1;
	r.store_id = w->st.store_id;
	r.has_status = 1;
	if(rc == MOSQ_ERR_UNKNOWN){
		rc = IM_WORK_RETRY;
	}else{
		if(rc != MOSQ_ERR_SUCCESS){
			r.status = IM__V1__STATUS__INTERNAL;
			r.reason = "out of memory; try again";
		}else{
			r.status = IM__V1__STATUS__OK;
			r.conversations = p.ptrs;
			r.n_conversations = p.n;
			r.has_has_more = 1;
			r.has_more = p.more;
		}
		im_work__reply(w, j, &r.base, false);
		rc = MOSQ_ERR_SUCCESS;
	}
	free(p.c);
	free(p.ptrs);
	free(p.strings);
	return rc;
}
