/*
 * Small things every module uses: growable buffers, the allocation hooks,
 * token buckets, clocks, JSON string escaping and a thread-aware log.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/util.h"
#include "base/wake.h"

static bool (*log_sink)(int level, const char *text);

void im_log__sink(bool (*fn)(int level, const char *text))
{
	log_sink = fn;
}

void *(*im_malloc)(size_t n) = malloc;
void *(*im_calloc)(size_t n, size_t size) = calloc;
void *(*im_realloc)(void *p, size_t n) = realloc;

void im_free(void *p)
{
	free(p);
}

char *im_strndup(const char *s, size_t n)
{
	char *d = im_malloc(n + 1);

	if(d == NULL) return NULL;
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

char *im_strdup(const char *s)
{
	return s ? im_strndup(s, strlen(s)) : NULL;
}

int im_buf__reserve(struct im__buf *b, size_t n)
{
	uint8_t *d;
	size_t cap;

	if(n <= b->cap) return MOSQ_ERR_SUCCESS;
	cap = b->cap ? b->cap : 1024;
	while(cap < n) cap *= 2;
	d = im_realloc(b->data, cap);
	if(d == NULL) return MOSQ_ERR_NOMEM;
	b->data = d;
	b->cap = cap;
	return MOSQ_ERR_SUCCESS;
}

void im_buf__free(struct im__buf *b)
{
	free(b->data);
	b->data = NULL;
	b->cap = 0;
}

bool im_bucket__take(struct im__bucket *b, double rate, double burst, double cost, int64_t now_ms)
{
	if(b->last_ms == 0){
		b->tokens = burst;
		b->last_ms = now_ms;
	}
	if(now_ms > b->last_ms){
		b->tokens += (double)(now_ms - b->last_ms) * rate / 1000.0;
		if(b->tokens > burst) b->tokens = burst;
		b->last_ms = now_ms;
	}
	if(b->tokens < cost) return false;
	b->tokens -= cost;
	return true;
}

int64_t im_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void im_cond__init(pthread_cond_t *cv)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
}

int im_cond__wait_us(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t us)
{
	struct timespec until;

	if(us < 0) us = 0;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += (time_t)(us / 1000000);
	until.tv_nsec += (long)(us % 1000000) * 1000L;
	if(until.tv_nsec >= 1000000000L){
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	return pthread_cond_timedwait(cv, mu, &until);
}

int64_t im_mono_ms(void)
{
	return im_mono_us() / 1000;
}

int64_t im_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool im_json__str(char *out, size_t cap, size_t *len, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = *len;
	unsigned char c;

	for(; *s; s++){
		c = (unsigned char)*s;
		if(c == '"' || c == '\\'){
			if(n + 2 >= cap) return false;
			out[n++] = '\\';
			out[n++] = (char)c;
		}else if(c < 0x20 || c == 0x7f){
			if(n + 6 >= cap) return false;
			out[n++] = '\\';
			out[n++] = 'u';
			out[n++] = '0';
			out[n++] = '0';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		}else{
			if(n + 1 >= cap) return false;
			out[n++] = (char)c;
		}
	}
	out[n] = '\0';
	*len = n;
	return true;
}

void im_log(int level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if(!im_wake__on_broker_thread() && log_sink && log_sink(level, line)) return;
	mosquitto_log_printf(level, "%s", line);
}
