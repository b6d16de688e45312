/*
 * Start-up [init thread, before the worker thread runs]: open the store,
 * check it against the applied marker, and apply what the journal holds
 * beyond the store's applied position, in batches like any others. A
 * store that lost what it had stored gets a new id, so that clients start
 * over instead of taking new messages for duplicates.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mosquitto.h>

#include "codec/record.h"
#include "store/open.h"
#include "worker/internal.h"

struct replay {
	struct im__worker *w;
	struct im__job *jobs, **tail;
	size_t n;
	uint64_t count;
};

static int replay_flush(struct replay *r)
{
	int rc = MOSQ_ERR_SUCCESS;

	if(r->n) rc = im_work__run_batch(r->w, r->jobs, r->n);
	r->jobs = NULL;
	r->tail = &r->jobs;
	r->n = 0;
	return rc;
}

static int replay_one(void *ctx, uint64_t lsn, const uint8_t *payload, size_t len)
{
	struct replay *r = ctx;
	struct im__job *j = im_job__new(IM_JOB_MSG, len, NULL, NULL, NULL, NULL, 0);
	struct im__rec rec;

	if(j == NULL) return -1;
	memcpy(j->data, payload, len);
	j->lsn = lsn;
	if(!im_rec__decode(j->data, len, &rec)){
		im_log(MOSQ_LOG_ERR, "im: journal: record %" PRIu64 " is not a message record this plugin can read.", lsn);
		im_job__free(j);
		return -1;
	}
	snprintf(j->user, sizeof(j->user), "%s", rec.sender);
	*r->tail = j;
	r->tail = &j->next;
	r->n++;
	r->count++;
	if(r->n >= 1024 && replay_flush(r) != MOSQ_ERR_SUCCESS) return -1;
	return 0;
}

int im_work__recover(struct im__worker *w, const struct im__config *cfg)
{
	struct replay r = {0};
	bool gap = false, rollback, existed;
	int rc;

	uint64_t marker;
	char path[4096];
	/* What the store is called in log lines. */
	const char *name = cfg->store == IM_STORE_PG ? "the PostgreSQL store" : cfg->db_path;

	if(im_store__open(&w->st, cfg) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_UNKNOWN;
	w->st.crypt = w->crypt;
	if(mkdir(cfg->journal_dir, 0700) != 0 && errno != EEXIST){
		im_log(MOSQ_LOG_ERR, "im: journal: cannot create \"%s\": %s (it must be writable by the broker's user).",
				cfg->journal_dir, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	snprintf(path, sizeof(path), "%s/applied", cfg->journal_dir);
	w->marker_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	marker = im_work__marker_read(w->marker_fd);
	if(marker > w->st.applied_lsn && w->st.created){
		gap = true; /* a database existed here: warned about below */
	}else if(marker > w->st.applied_lsn){
		im_log(MOSQ_LOG_WARNING, "im: store: \"%s\" lost stored messages (it holds up to journal record %" PRIu64 ", it had stored %" PRIu64 "): a deleted or damaged write-ahead log, or a restored backup. What the journal still holds is applied again; a new store id tells clients to start over.",
				name, w->st.applied_lsn, marker);
		gap = true;
	}
	r.w = w;
	r.tail = &r.jobs;
	w->replaying = true;
	rollback = gap && !w->st.created;
	existed = gap;
	rc = im_journal__open(w->journal, cfg->journal_dir, cfg->synchronous == 2, w->st.applied_lsn,
			replay_one, &r, &gap);
	gap = gap || existed;
	w->journal->rotate_age_ms = (int64_t)cfg->journal_rotate_seconds * 1000;
	if(rc == MOSQ_ERR_SUCCESS) rc = replay_flush(&r);
	else im_job__free_list(r.jobs);
	w->replaying = false;
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	if(r.count){
		im_log(MOSQ_LOG_NOTICE, "im: journal: %" PRIu64 " acknowledged message(s) not yet stored at the last stop were applied (up to record %" PRIu64 ").",
				r.count, w->st.applied_lsn);
	}
	if(gap && !rollback && !w->st.created){
		im_log(MOSQ_LOG_WARNING, "im: store: \"%s\" is behind its journal (stored up to record %" PRIu64 ", the journal starts later): it was rolled back or restored and what came after is lost.",
				name, w->st.applied_lsn);
	}else if(gap && w->st.created){
		im_log(MOSQ_LOG_WARNING, "im: store: a new database was made at \"%s\" although the journal in \"%s\" shows an earlier one existed.",
				name, cfg->journal_dir);
	}
	if(gap){
		/* Seqs would be handed out again to other messages: a new store id
		 * tells clients to start over instead of dropping new messages as
		 * duplicates of ones they hold. (A new database has a new id.) */
		if((!w->st.created && im_store__renew_id(&w->st) != MOSQ_ERR_SUCCESS)
				|| w->st.ops->begin(&w->st) != MOSQ_ERR_SUCCESS
				|| w->st.ops->commit(&w->st, w->journal->next_lsn - 1) != MOSQ_ERR_SUCCESS){
			return MOSQ_ERR_UNKNOWN;
		}
		im_work__marker_write(w, w->journal->next_lsn - 1);
		im_log(MOSQ_LOG_WARNING, "im: store: new store id %016" PRIx64 ": clients drop what they remember of seqs and sync from 0.", w->st.store_id);
	}
	im_journal__cut(cfg->journal_dir, w->st.applied_lsn);
	return MOSQ_ERR_SUCCESS;
}
