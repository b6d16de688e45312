/*
 * Completions [W]: what a job hands back to the broker thread. They wait
 * in the open batch and are published only after its commit, so nothing
 * is said of what a rollback may take back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "worker/internal.h"

struct im__done *im_work__done(enum im_done_kind kind, size_t extra)
{
	struct im__done *d = im_calloc(1, sizeof(*d) + extra);

	if(d) d->kind = kind;
	return d;
}

const char *im_work__str(struct im__done *d, size_t *used, const char *s)
{
	size_t n;
	char *out;

	if(s == NULL) return NULL;
	n = strlen(s) + 1;
	out = d->data + *used;
	memcpy(out, s, n);
	*used += n;
	return out;
}

void im_work__emit(struct im__worker *w, struct im__done *d)
{
	if(d == NULL) return;
	/* Replaying at start nobody here is connected yet; but other brokers
	 * of a cluster may have devices waiting for what was journaled here
	 * before a crash: kept to be shipped after the commit (run_batch). */
	if(w->replaying && !(w->hooks.committed && (d->kind == IM_DONE_FRAME || d->kind == IM_DONE_MEMBERS))){
		free(d);
		return;
	}
	d->next = NULL;
	*w->btail = d;
	w->btail = &d->next;
}

#define SLEN(s) ((s) ? strlen(s) + 1 : 0)

void im_work__reply(struct im__worker *w, const struct im__job *j, const ProtobufCMessage *msg, bool sync_reply)
{
	char topic[sizeof(IM_CONTROL_PREFIX) + 64];
	const char *dest = j->to.topic;
	size_t n = protobuf_c_message_get_packed_size(msg), used = 0;
	struct im__done *d;

	if(j->to.client_id == NULL) return;
	if(dest == NULL){
		snprintf(topic, sizeof(topic), IM_CONTROL_PREFIX "%s/response", j->to.op);
		dest = topic;
	}
	d = im_work__done(IM_DONE_REPLY, SLEN(j->to.client_id) + SLEN(dest) + j->to.corr_len + n
			+ (j->to.counted ? SLEN(j->user) : 0));
	if(d == NULL){
		im_log(MOSQ_LOG_WARNING, "im: out of memory: a %s reply to \"%s\" is lost.", j->to.op, j->to.client_id);
		return;
	}
	d->client_id = im_work__str(d, &used, j->to.client_id);
	d->topic = im_work__str(d, &used, dest);
	if(j->to.counted){
		d->counted = true;
		d->epoch = j->to.epoch;
		d->user = im_work__str(d, &used, j->user);
	}
	if(j->to.corr_len){
		memcpy(d->data + used, j->to.corr, j->to.corr_len);
		d->corr = d->data + used;
		d->corr_len = j->to.corr_len;
		used += j->to.corr_len;
	}
	protobuf_c_message_pack(msg, (uint8_t *)d->data + used);
	d->payload = d->data + used;
	d->len = n;
	d->sync_reply = sync_reply;
	im_work__emit(w, d);
}
