/*
 * Metrics under $SYS/broker/im/..., published (retained, like the broker's
 * own $SYS topics) every plugin_opt_metrics_interval seconds from the tick.
 * Counters are totals since start; the commit latency percentiles cover
 * the last interval, from a log2 histogram (bucket upper bounds, so a
 * reported p99 of 512 means "between 256 and 512 µs").
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "im.h"

void im_metrics__commit_us(struct im__metrics *m, int64_t us)
{
	int b = 0;

	while(b < IM_HIST_BUCKETS - 1 && (1LL << b) < us) b++;
	m->commit_hist[b]++;
}

static uint64_t percentile(const uint64_t *h, double q)
{
	uint64_t total = 0, seen = 0;
	int b;

	for(b = 0; b < IM_HIST_BUCKETS; b++) total += h[b];
	if(total == 0) return 0;
	for(b = 0; b < IM_HIST_BUCKETS; b++){
		seen += h[b];
		if((double)seen >= q * (double)total) return 1ULL << b;
	}
	return 1ULL << (IM_HIST_BUCKETS - 1);
}

static void put(const char *name, uint64_t v)
{
	char topic[128], val[24];
	int n;

	snprintf(topic, sizeof(topic), "$SYS/broker/im/%s", name);
	n = snprintf(val, sizeof(val), "%" PRIu64, v);
	mosquitto_broker_publish_copy(NULL, topic, n, val, 0, true, NULL);
}

static uint64_t db_bytes(const struct im__plugin *p)
{
	struct stat s;
	uint64_t total = 0;
	char path[4096];

	if(stat(p->cfg.db_path, &s) == 0) total += (uint64_t)s.st_size;
	snprintf(path, sizeof(path), "%s-wal", p->cfg.db_path);
	if(stat(path, &s) == 0) total += (uint64_t)s.st_size;
	return total;
}

/* All of it as one JSON object on $SYS/broker/im/stats, for exporters
 * that read JSON (Debian's prometheus-mqtt-exporter). */
static void put_json(const struct im__plugin *p, uint64_t p50, uint64_t p99, uint64_t bytes)
{
	const struct im__metrics *m = &p->metrics;
	char buf[768];
	int n;

	n = snprintf(buf, sizeof(buf),
			"{\"sequenced\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"refused\":%" PRIu64
			",\"sync_requests\":%" PRIu64 ",\"sync_frames\":%" PRIu64 ",\"sync_limited\":%" PRIu64
			",\"acks\":%" PRIu64 ",\"group_changes\":%" PRIu64 ",\"store_errors\":%" PRIu64
			",\"commit_us_p50\":%" PRIu64 ",\"commit_us_p99\":%" PRIu64 ",\"store_bytes\":%" PRIu64
			",\"trimmed\":%" PRIu64 ",\"timelines_cached\":%zu,\"groups_cached\":%zu}",
			m->sequenced, m->duplicates, m->refused, m->sync_requests, m->sync_frames, m->sync_limited,
			m->acks, m->group_changes, m->store_errors, p50, p99, bytes, m->trimmed,
			p->store.tls.count, p->store.groups.count);
	if(n > 0 && (size_t)n < sizeof(buf)){
		mosquitto_broker_publish_copy(NULL, "$SYS/broker/im/stats", n, buf, 0, true, NULL);
	}
}

void im_metrics__publish(struct im__plugin *p)
{
	struct im__metrics *m = &p->metrics;
	uint64_t p50 = percentile(m->commit_hist, 0.50), p99 = percentile(m->commit_hist, 0.99);
	uint64_t bytes = db_bytes(p);

	put("messages/sequenced", m->sequenced);
	put("messages/duplicates", m->duplicates);
	put("messages/refused", m->refused);
	put("sync/requests", m->sync_requests);
	put("sync/frames", m->sync_frames);
	put("sync/limited", m->sync_limited);
	put("acks", m->acks);
	put("groups/changes", m->group_changes);
	put("store/errors", m->store_errors);
	put("store/commit_us_p50", p50);
	put("store/commit_us_p99", p99);
	put("store/bytes", bytes);
	put("store/trimmed", m->trimmed);
	put("timelines/cached", p->store.tls.count);
	put("groups/cached", p->store.groups.count);
	put_json(p, p50, p99, bytes);
	memset(m->commit_hist, 0, sizeof(m->commit_hist));
}
