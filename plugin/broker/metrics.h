/*
 * $SYS/broker/im/...: the counters of base/stats.h, published from the tick.
 */
#ifndef IM_BROKER_METRICS_H
#define IM_BROKER_METRICS_H

struct im__plugin;

/* Publishes every metric once (retained). */
void im_metrics__publish(struct im__plugin *p);

#endif
