/*
 * The plugin's counters and latency histograms. Each is written by one
 * thread and read by the broker thread, which publishes them
 * (broker/metrics.c).
 */
#ifndef IM_BASE_STATS_H
#define IM_BASE_STATS_H

#include <stdint.h>

#define IM_HIST_BUCKETS 24      /* log2 µs: 1 µs .. 8 s */

/* Counters written by one thread each, read by the broker thread with
 * relaxed atomics (a metric may be one message behind; never torn). */
struct im__metrics {
	/* [B] */
	uint64_t refused, sync_requests, sync_limited, acks_requested, journal_errors, rate_limited;
	uint64_t journal_us_hist[IM_HIST_BUCKETS];
	/* [W] */
	uint64_t sequenced, duplicates, sync_frames, acks, group_changes;
	uint64_t store_errors, trimmed, batches, worker_refused;
	uint64_t commit_hist[IM_HIST_BUCKETS];  /* per batch, this interval */
	uint64_t queue_hist[IM_HIST_BUCKETS];   /* job waiting for the worker */
	uint64_t ship_hist[IM_HIST_BUCKETS];    /* per message: journal append to store commit */
	/* [B] */
	uint64_t handoff_hist[IM_HIST_BUCKETS]; /* completion waiting for the broker thread */
	uint64_t timelines_cached, groups_cached;
	/* cluster: [C] sent, [N] rejected, [B] the rest; dropped by any */
	uint64_t cluster_sent, cluster_received, cluster_rejected, cluster_dropped;
	uint64_t cluster_duplicates, cluster_gaps, cluster_repairs;
};

#define IM_STAT_ADD(field, n) __atomic_fetch_add(&(field), (uint64_t)(n), __ATOMIC_RELAXED)
#define IM_STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define IM_STAT_SET(field, v) __atomic_store_n(&(field), (uint64_t)(v), __ATOMIC_RELAXED)

/* Adds one sample of us microseconds to a log2 histogram. */
void im_stats__hist(uint64_t *hist, int64_t us);

#endif
