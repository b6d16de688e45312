/*
 * MOSQ_EVT_TICK and MOSQ_EVT_RELOAD: work that must not run per message.
 */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "im.h"

/* Retention: Mosquitto 2.0.11 ticks on every pass of its event loop, so
 * each step is small (trim_batch rows, short transactions) and steps are
 * spaced: 100 ms apart while a sweep is under way, 1 s between sweeps. */
static void retention_step(struct im__plugin *p)
{
	const struct im__config *cfg = &p->cfg;
	int64_t now = im_store__now_ms(), cutoff = 0;
	int rows;
	bool done = false;

	if((cfg->retention_seconds == 0 && cfg->retention_messages == 0) || now < p->next_trim_ms) return;
	if(cfg->retention_seconds) cutoff = now - cfg->retention_seconds * 1000;
	rows = im_store__trim_step(&p->store, cutoff, cfg->retention_messages, cfg->trim_batch, &p->trim_cursor, &done);
	if(rows > 0){
		p->metrics.trimmed += (uint64_t)rows;
		mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: retention removed %d messages.", rows);
	}
	if(rows < 0){
		p->trim_cursor = 0;
		done = true;
	}
	p->next_trim_ms = now + (done ? 1000 : 100);
}

int im_tick__cb(int event, void *event_data, void *userdata)
{
	struct im__plugin *p = userdata;

	(void)event;
	(void)event_data;
	p->disconnecting = NULL;
	p->read_ptr = NULL;
	retention_step(p);
	if(p->cfg.metrics_interval){
		int64_t now = im_store__now_ms();
		if(now >= p->next_metrics_ms){
			im_metrics__publish(p);
			p->next_metrics_ms = now + (int64_t)p->cfg.metrics_interval * 1000;
		}
	}
	return MOSQ_ERR_SUCCESS;
}
