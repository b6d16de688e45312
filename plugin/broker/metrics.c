/*
 * Metrics under $SYS/broker/im/..., published (retained, like the broker's
 * own $SYS topics) every plugin_opt_metrics_interval seconds from the tick.
 * Counters are totals since start; latency percentiles cover the last
 * interval, from log2 histograms (bucket upper bounds, so a reported p99
 * of 512 means "between 256 and 512 µs"). Counters the worker writes are
 * read with relaxed atomics.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/stats.h"
#include "broker/metrics.h"
#include "broker/plugin.h"
#include "broker/stall.h"
#include "worker/worker.h"

/* Percentile of a histogram, and resets it. */
static uint64_t percentile(uint64_t *h, double q, bool reset)
{
	uint64_t total = 0, seen = 0, c[IM_HIST_BUCKETS], out = 0;
	int b;

	for(b = 0; b < IM_HIST_BUCKETS; b++){
		c[b] = IM_STAT_GET(h[b]);
		total += c[b];
		if(reset) IM_STAT_SET(h[b], 0);
	}
	for(b = 0; total && b < IM_HIST_BUCKETS; b++){
		seen += c[b];
		if((double)seen >= q * (double)total){
			out = 1ULL << b;
			break;
		}
	}
	return out;
}

static void put(const char *name, uint64_t v)
{
	char topic[128], val[24];
	int n;

	snprintf(topic, sizeof(topic), "$SYS/broker/im/%s", name);
	n = snprintf(val, sizeof(val), "%" PRIu64, v);
	mosquitto_broker_publish_copy(NULL, topic, n, val, 0, true, NULL);
}

static uint64_t file_bytes(const char *path)
{
	struct stat s;

	return stat(path, &s) == 0 ? (uint64_t)s.st_size : 0;
}

static uint64_t db_bytes(const struct im__plugin *p)
{
	char path[4096];

	/* PostgreSQL's files are the server's: no local size to report. */
	if(p->cfg.store == IM_STORE_PG) return 0;
	snprintf(path, sizeof(path), "%s-wal", p->cfg.db_path);
	return file_bytes(p->cfg.db_path) + file_bytes(path);
}

void im_metrics__publish(struct im__plugin *p)
{
	struct im__metrics *m = &p->metrics;
	uint64_t b50 = percentile(m->commit_hist, 0.50, false), b99 = percentile(m->commit_hist, 0.99, true);
	uint64_t j50 = percentile(m->journal_us_hist, 0.50, false), j99 = percentile(m->journal_us_hist, 0.99, true);
	uint64_t q99 = percentile(m->queue_hist, 0.99, true), h99 = percentile(m->handoff_hist, 0.99, true);
	uint64_t s50 = percentile(m->ship_hist, 0.50, false), s99 = percentile(m->ship_hist, 0.99, true);
	uint64_t bytes = db_bytes(p), backlog = im_worker__backlog(p->worker);
	/* Topic under $SYS/broker/im/, key in the JSON object, value. */
	const struct { const char *name, *key; uint64_t v; } t[] = {
		{"messages/sequenced", "sequenced", IM_STAT_GET(m->sequenced)},
		{"messages/duplicates", "duplicates", IM_STAT_GET(m->duplicates)},
		{"messages/refused", "refused", m->refused + IM_STAT_GET(m->worker_refused)},
		{"messages/rate_limited", "rate_limited", m->rate_limited},
		{"sync/requests", "sync_requests", m->sync_requests},
		{"sync/frames", "sync_frames", IM_STAT_GET(m->sync_frames)},
		{"sync/limited", "sync_limited", m->sync_limited},
		{"acks", "acks", IM_STAT_GET(m->acks)},
		{"groups/changes", "group_changes", IM_STAT_GET(m->group_changes)},
		{"store/errors", "store_errors", IM_STAT_GET(m->store_errors) + m->journal_errors},
		{"store/batches", "batches", IM_STAT_GET(m->batches)},
		{"store/commit_us_p50", "commit_us_p50", b50},
		{"store/commit_us_p99", "commit_us_p99", b99},
		{"store/backlog_bytes", "backlog_bytes", backlog},
		{"store/stalled", "store_stalled_s", im_stall__seconds(p, im_mono_us())},
		{"store/stalls", "store_stalls", p->stalls},
		{"store/queue_us_p99", "queue_us_p99", q99},
		{"store/ship_us_p50", "ship_us_p50", s50},
		{"store/ship_us_p99", "ship_us_p99", s99},
		{"deliver/handoff_us_p99", "handoff_us_p99", h99},
		{"store/bytes", "store_bytes", bytes},
		{"store/trimmed", "trimmed", IM_STAT_GET(m->trimmed)},
		{"journal/append_us_p50", "journal_us_p50", j50},
		{"journal/append_us_p99", "journal_us_p99", j99},
		{"timelines/cached", "timelines_cached", IM_STAT_GET(m->timelines_cached)},
		{"groups/cached", "groups_cached", IM_STAT_GET(m->groups_cached)},
		{"cluster/sent", "cluster_sent", IM_STAT_GET(m->cluster_sent)},
		{"cluster/received", "cluster_received", IM_STAT_GET(m->cluster_received)},
		{"cluster/rejected", "cluster_rejected", IM_STAT_GET(m->cluster_rejected)},
		{"cluster/dropped", "cluster_dropped", IM_STAT_GET(m->cluster_dropped)},
		{"cluster/duplicates", "cluster_duplicates", IM_STAT_GET(m->cluster_duplicates)},
		{"cluster/gaps", "cluster_gaps", IM_STAT_GET(m->cluster_gaps)},
		{"cluster/repairs", "cluster_repairs", IM_STAT_GET(m->cluster_repairs)},
	};
	char buf[2048];
	size_t i, n = 1;

	buf[0] = '{';
	for(i = 0; i < sizeof(t) / sizeof(t[0]); i++){
		put(t[i].name, t[i].v);
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"%s\":%" PRIu64, i ? "," : "", t[i].key, t[i].v);
		if(n >= sizeof(buf) - 2) return;
	}
	buf[n++] = '}';
	/* One JSON object for exporters that read JSON (Debian's
	 * prometheus-mqtt-exporter). */
	mosquitto_broker_publish_copy(NULL, "$SYS/broker/im/stats", (int)n, buf, 0, true, NULL);
}
