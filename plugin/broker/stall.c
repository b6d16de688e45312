/*
 * The store stall watch [B] (stall.h says why). The answers are what the
 * worker would say if its batch failed (PROTOCOL.md 3.3: requests are
 * answered INTERNAL and change nothing), with the reason. Messages are
 * not touched: they are journaled and acknowledged, and are stored when
 * the batch goes through, in order, once. Requests inside the stalled
 * batch itself are not answered here: their outcome is the commit's
 * (an ack or a group change may yet be applied), and they are answered
 * when it returns.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/util.h"
#include "broker/deliver.h"
#include "broker/plugin.h"
#include "broker/stall.h"
#include "worker/worker.h"

static uint64_t seconds_of(const struct im__stall *st, int64_t now_us)
{
	if(st->since_us == 0 || now_us < st->since_us) return 0;
	return (uint64_t)(now_us - st->since_us) / 1000000;
}

uint64_t im_stall__seconds(const struct im__plugin *p, int64_t now_us)
{
	uint64_t w = seconds_of(&p->stalled, now_us), r = seconds_of(&p->rstalled, now_us);

	return w > r ? w : r;
}

static void answer(struct im__plugin *p, struct im__stall *st, const char *who, struct im__job *jobs, int64_t now_us)
{
	Im__V1__Response r = IM__V1__RESPONSE__INIT;
	struct im__job *j, *next;
	struct im__done *d;
	char why[192];

	snprintf(why, sizeof(why), "store stalled for %" PRIu64 " s (%s%s); nothing changed, ask again later",
			seconds_of(st, now_us), who, st->doing ? st->doing : "busy");
	for(j = jobs; j; j = next){
		next = j->next;
		r.has_status = 1;
		if(j->kind == IM_JOB_STATUS){
			/* An answer that only waited its turn: given as it is. */
			r.status = j->u.status.status;
			r.reason = j->u.status.reason;
		}else{
			r.status = IM__V1__STATUS__INTERNAL;
			r.reason = why;
			st->answers++;
		}
		if((d = im_job__reply(j, &r.base, j->kind == IM_JOB_SYNC)) != NULL) im_deliver__done(p, d);
		im_job__free(j);
	}
}

/* One watch: busy is since when the watched thread(s) have been on their
 * batch (0: free). Returns whether it is stalled now. */
static bool watch(struct im__plugin *p, struct im__stall *st, const char *who, int64_t busy, const char *doing,
		int64_t now_us)
{
	int64_t limit = (int64_t)p->cfg.store_timeout * 1000000;

	if(st->since_us && busy != st->since_us){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: store: %smoving again after %.1f s stalled; %" PRIu64 " request(s) were answered \"store stalled\" meanwhile.",
				who, (double)(now_us - st->since_us) / 1e6, st->answers);
		memset(st, 0, sizeof(*st));
	}
	if(limit == 0 || busy == 0 || now_us - busy < limit) return false;
	if(st->since_us == 0){
		st->since_us = busy;
		st->doing = doing;
		p->stalls++;
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: store: %sstalled: one batch has taken %.1f s, now in %s%s; requests are answered \"store stalled\" until it moves (plugin_opt_store_timeout %u s). Messages are still acknowledged from the journal (up to plugin_opt_backlog_max) and stored when it moves.",
				who, (double)(now_us - busy) / 1e6, doing ? doing : "?",
				p->cfg.store == IM_STORE_PG && doing && !strcmp(doing, "COMMIT")
					? " (PostgreSQL: a synchronous standby that does not answer? the server unreachable?)" : "",
				p->cfg.store_timeout);
	}
	st->doing = doing;
	return true;
}

void im_stall__tick(struct im__plugin *p, int64_t now_us)
{
	const char *doing = NULL, *rdoing = NULL;
	int64_t busy = im_worker__busy(p->worker, &doing);
	int64_t rbusy = im_worker__readers_busy(p->worker, &rdoing);

	/* The writer: what waits for it (acks, group changes; every request
	 * when there are no readers). */
	if(watch(p, &p->stalled, "", busy, doing, now_us)){
		answer(p, &p->stalled, "", im_worker__withdraw(p->worker), now_us);
	}
	/* The readers, all of them on a batch that long (the server gone, a
	 * lock): the reads queued behind them. */
	if(watch(p, &p->rstalled, "readers ", rbusy, rdoing, now_us)){
		answer(p, &p->rstalled, "readers: ", im_worker__withdraw_reads(p->worker), now_us);
	}
}
