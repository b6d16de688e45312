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

uint64_t im_stall__seconds(const struct im__plugin *p, int64_t now_us)
{
	if(p->stalled_since_us == 0 || now_us < p->stalled_since_us) return 0;
	return (uint64_t)(now_us - p->stalled_since_us) / 1000000;
}

static void answer(struct im__plugin *p, struct im__job *jobs, int64_t now_us)
{
	Im__V1__Response r = IM__V1__RESPONSE__INIT;
	struct im__job *j, *next;
	struct im__done *d;
	char why[160];

	snprintf(why, sizeof(why), "store stalled for %" PRIu64 " s (%s); nothing changed, ask again later",
			im_stall__seconds(p, now_us), p->stalled_doing ? p->stalled_doing : "busy");
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
			p->stall_answers++;
		}
		if((d = im_job__reply(j, &r.base, j->kind == IM_JOB_SYNC)) != NULL) im_deliver__done(p, d);
		im_job__free(j);
	}
}

void im_stall__tick(struct im__plugin *p, int64_t now_us)
{
	const char *doing = NULL;
	int64_t busy = im_worker__busy(p->worker, &doing);
	int64_t limit = (int64_t)p->cfg.store_timeout * 1000000;

	if(p->stalled_since_us && busy != p->stalled_since_us){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: store: moving again after %.1f s stalled; %" PRIu64 " request(s) were answered \"store stalled\" meanwhile.",
				(double)(now_us - p->stalled_since_us) / 1e6, p->stall_answers);
		p->stalled_since_us = 0;
		p->stalled_doing = NULL;
		p->stall_answers = 0;
	}
	if(limit == 0 || busy == 0 || now_us - busy < limit) return;
	if(p->stalled_since_us == 0){
		p->stalled_since_us = busy;
		p->stalled_doing = doing;
		p->stalls++;
		mosquitto_log_printf(MOSQ_LOG_WARNING, "im: store: stalled: one batch has taken %.1f s, now in %s%s; requests are answered \"store stalled\" until it moves (plugin_opt_store_timeout %u s). Messages are still acknowledged from the journal (up to plugin_opt_backlog_max) and stored when it moves.",
				(double)(now_us - busy) / 1e6, doing ? doing : "?",
				p->cfg.store == IM_STORE_PG && doing && !strcmp(doing, "COMMIT")
					? " (PostgreSQL: a synchronous standby that does not answer? the server unreachable?)" : "",
				p->cfg.store_timeout);
	}
	p->stalled_doing = doing;
	answer(p, im_worker__withdraw(p->worker), now_us);
}
