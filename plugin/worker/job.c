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
