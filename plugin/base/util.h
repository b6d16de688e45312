/*
 * Buffers, allocation, token buckets, clocks, JSON strings and the log
 * [any thread].
 */
#ifndef IM_BASE_UTIL_H
#define IM_BASE_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* A growable byte buffer, reused across calls (no per-message malloc). */
struct im__buf {
	uint8_t *data;
	size_t cap;
};

/* Grows b to at least n bytes. MOSQ_ERR_SUCCESS or MOSQ_ERR_NOMEM. */
int im_buf__reserve(struct im__buf *b, size_t n);
void im_buf__free(struct im__buf *b);

/* Allocation hooks: libc by default; unit tests swap in a failing
 * allocator (failmalloc) to prove every path survives NULL. */
extern void *(*im_malloc)(size_t n);
extern void *(*im_calloc)(size_t n, size_t size);
extern void *(*im_realloc)(void *p, size_t n);
void im_free(void *p);
char *im_strdup(const char *s);
char *im_strndup(const char *s, size_t n);

/* A token bucket: rate per second, burst tokens at most. */
struct im__bucket {
	double tokens;
	int64_t last_ms;
};
/* Refills b for now and takes cost tokens if there are enough. A new
 * bucket (last_ms 0) starts full. now_ms is im_mono_ms(): on the wall
 * clock a step back of the system time refilled nothing until it had
 * passed again, rate-limiting users for as long. */
bool im_bucket__take(struct im__bucket *b, double rate, double burst, double cost, int64_t now_ms);

/* Milliseconds since the epoch: what is stored and shown (a message's
 * time, retention's cutoff). Monotonic microseconds and milliseconds:
 * what schedules and paces (intervals, rates, deadlines), which a step of
 * the system time must not stretch or stop. */
int64_t im_now_ms(void);
int64_t im_mono_us(void);
int64_t im_mono_ms(void);

/* Timed waits of the plugin's threads run on the monotonic clock: on the
 * default (wall) clock a step back of the system time (NTP, an operator)
 * stretched a 5 ms wait by as much, and the store's retry pause, woken by
 * nothing but a stop, with it. im_cond__init makes such a condition
 * variable; im_cond__wait_us waits on it at most us microseconds (any
 * wake-up, or the deadline, returns: callers re-check their condition). */
void im_cond__init(pthread_cond_t *cv);
int im_cond__wait_us(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t us);

/* Appends s as the body of a JSON string (quotes, backslashes and control
 * characters escaped) to out[*len..cap). False if it does not fit. */
bool im_json__str(char *out, size_t cap, size_t *len, const char *s);

/* Logs from any thread: directly on the broker thread, else handed to it
 * as a completion (the broker's log function is not thread-safe). */
void im_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Where lines logged off the broker thread go (the worker's completion
 * queue); false from fn means "log directly". */
void im_log__sink(bool (*fn)(int level, const char *text));

#endif
