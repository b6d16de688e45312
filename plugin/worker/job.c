/*
 * Jobs: what the broker thread (and the cluster) ask of the worker, each
 * in one allocation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "base/config.h"
#include "base/util.h"
#include "worker/job.h"

#define SLEN(s) ((s) ? strlen(s) + 1 : 0)

struct im__job *im_job__new(enum im_job_kind kind, size_t data_len, const char *client_id,
		const char *op, const char *resp_topic, const void *corr, uint16_t corr_len)
{
	size_t extra = data_len + SLEN(client_id) + SLEN(resp_topic) + corr_len, used = 0;
	struct im__job *j = im_calloc(1, sizeof(*j) + extra);
	char *tail;

	if(j == NULL) return NULL;
	tail = (char *)(j + 1);
	j->kind = kind;
	j->len = data_len;
	j->data = (uint8_t *)tail;
	used = data_len;
	if(client_id){
		j->to.client_id = tail + used;
		memcpy(tail + used, client_id, strlen(client_id) + 1);
		used += strlen(client_id) + 1;
	}
	if(resp_topic){
		j->to.topic = tail + used;
		memcpy(tail + used, resp_topic, strlen(resp_topic) + 1);
		used += strlen(resp_topic) + 1;
	}
	if(corr_len){
		j->to.corr = tail + used;
		memcpy(tail + used, corr, corr_len);
		j->to.corr_len = corr_len;
	}
	snprintf(j->to.op, sizeof(j->to.op), "%s", op ? op : "receipt");
	return j;
}

void im_job__free(struct im__job *j)
{
	if(j == NULL) return;
	if(j->kind == IM_JOB_OPTIONS && j->u.options){
		im_config__free(j->u.options);
		free(j->u.options);
	}
	free(j);
}

void im_job__free_list(struct im__job *j)
{
	struct im__job *next;

	for(; j; j = next){
		next = j->next;
		im_job__free(j);
	}
}

struct im__done *im_done__new(enum im_done_kind kind, size_t extra)
{
	struct im__done *d = im_calloc(1, sizeof(*d) + extra);

	if(d) d->kind = kind;
	return d;
}

const char *im_done__str(struct im__done *d, size_t *used, const char *s)
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

struct im__done *im_job__reply(const struct im__job *j, const ProtobufCMessage *msg, bool sync_reply)
{
	char topic[sizeof(IM_CONTROL_PREFIX) + 64];
	const char *dest = j->to.topic;
	size_t n = protobuf_c_message_get_packed_size(msg), used = 0;
	struct im__done *d;

	if(j->to.client_id == NULL) return NULL;
	if(dest == NULL){
		snprintf(topic, sizeof(topic), IM_CONTROL_PREFIX "%s/response", j->to.op);
		dest = topic;
	}
	d = im_done__new(IM_DONE_REPLY, SLEN(j->to.client_id) + SLEN(dest) + j->to.corr_len + n
			+ (j->to.counted ? SLEN(j->user) : 0));
	if(d == NULL){
		im_log(MOSQ_LOG_WARNING, "im: out of memory: a %s reply to \"%s\" is lost.", j->to.op, j->to.client_id);
		return NULL;
	}
	d->client_id = im_done__str(d, &used, j->to.client_id);
	d->topic = im_done__str(d, &used, dest);
	if(j->to.counted){
		d->counted = true;
		d->epoch = j->to.epoch;
		d->user = im_done__str(d, &used, j->user);
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
	return d;
}
