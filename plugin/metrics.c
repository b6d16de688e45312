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

void im_metrics__publish(struct im__plugin *p)
{
	struct im__metrics *m = &p->metrics;

	put("messages/sequenced", m->sequenced);
	put("messages/duplicates", m->duplicates);
	put("messages/refused", m->refused);
	put("sync/requests", m->sync_requests);
	put("sync/frames", m->sync_frames);
	put("sync/limited", m->sync_limited);
	put("acks", m->acks);
	put("groups/changes", m->group_changes);
	put("store/errors", m->store_errors);
	put("store/commit_us_p50", percentile(m->commit_hist, 0.50));
	put("store/commit_us_p99", percentile(m->commit_hist, 0.99));
	put("store/bytes", db_bytes(p));
	put("store/trimmed", m->trimmed);
	put("timelines/cached", p->store.tls.count);
	put("groups/cached", p->store.groups.count);
	memset(m->commit_hist, 0, sizeof(m->commit_hist));
}
