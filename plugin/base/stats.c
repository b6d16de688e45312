/*
 * Log2 latency histograms: one relaxed atomic add per sample, so any
 * thread may record while the broker thread reads (broker/metrics.c).
 */
#include "base/stats.h"

void im_stats__hist(uint64_t *hist, int64_t us)
{
	int b = 0;

	while(b < IM_HIST_BUCKETS - 1 && (1LL << b) < us) b++;
	IM_STAT_ADD(hist[b], 1);
}
