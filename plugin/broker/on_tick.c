/*
 * MOSQ_EVT_TICK: where completions from the store worker are published.
 *
 * Mosquitto ticks plugins once per pass of its event loop; the worker
 * wakes the loop when it has completions (wake.c), so a frame leaves
 * within a pass of being stored, not at the next idle timeout.
 *
 * Debian's 2.0.11 sends no tick to plugins loaded under
 * per_listener_settings true. Until the first tick arrives the plugin
 * runs "inline": a callback that queued a job waits for the worker and
 * publishes its completions itself (im_tick__settle), as the plugin did
 * before it had a worker. The first tick switches to the queued mode.
 */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/util.h"
#include "broker/deliver.h"
#include "broker/metrics.h"
#include "broker/on_tick.h"
#include "broker/plugin.h"
#include "broker/stall.h"
#include "cluster/cluster.h"
#include "journal/journal.h"
#include "worker/worker.h"

void im_tick__settle(struct im__plugin *p)
{
	if(p->ticks || p->worker == NULL) return;
	im_worker__wait_idle(p->worker);
	im_deliver__drain(p);
}

int im_tick__cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_tick *ed = event_data;
	struct im__plugin *p = userdata;
	int64_t now, now_us;

	(void)event;
	p->disconnecting = NULL;
	if(!p->ticks){
		p->ticks = true;
		mosquitto_log_printf(MOSQ_LOG_INFO, "im: the broker ticks: stored messages are delivered from the tick, without waiting in callbacks.");
	}
	im_worker__ticked(p->worker);
	im_deliver__drain(p);
	/* Schedules only: monotonic (wall time is what is stored and shown). */
	now_us = im_mono_us();
	im_stall__tick(p, now_us);
	now = now_us / 1000;
	im_cluster__tick(p->cluster, now);
	im_deliver__tick(p, now);
	im_journal__rotate_idle(&p->journal, now);
	if(p->cfg.metrics_interval && now >= p->next_metrics_ms){
		im_metrics__publish(p);
		p->next_metrics_ms = now + (int64_t)p->cfg.metrics_interval * 1000;
	}
	/* 2.1 sleeps until the next event it knows of, which may be far off;
	 * while the worker holds jobs, ask for a pass within 10 ms as well (the
	 * wake-up signal is the fast path; this is the safety net). 2.0 reads
	 * nothing back and wakes every 100 ms anyway. The field sits at the
	 * same place in both releases' struct (next_ns in 2.0, next_ms in 2.1). */
	if(p->v21 && (im_worker__backlog(p->worker) > 0 || im_cluster__busy(p->cluster))) ed->next_ns = 10;
	return MOSQ_ERR_SUCCESS;
}
