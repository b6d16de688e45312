/*
 * imbench: a bounded load generator for mosquitto and mosquitto-im.
 *
 * One process, one thread, many libmosquitto clients driven by poll(2)
 * with mosquitto_loop_read/write/misc. Every run is bounded in message
 * count and in time (--timeout), and talks to one host/port (default
 * 127.0.0.1).
 *
 * Modes
 *   dm             N sender/receiver pairs; receivers subscribe first; the
 *                  senders publish M messages in total (QoS 1 or 2) with at
 *                  most --window unacknowledged each. Reports msgs/s and
 *                  end-to-end latency (CLOCK_MONOTONIC stamp in the body).
 *   catchup-sync   (mosquitto-im) K messages are published to an offline
 *                  user's inbox; then a fresh client of that user catches
 *                  up with $CONTROL/im/v1/sync batches. Reports msgs/s of
 *                  the catch-up (connect included).
 *   catchup-queue  (plain broker) a persistent session (clean session
 *                  false, QoS 2 subscription) goes offline, K messages are
 *                  published at QoS 2, then it reconnects and drains.
 *                  Reports msgs/s of the drain (connect included).
 *                  With --phase publish|sync catchup-sync does one half
 *                  only (the same -T names the same user), so a broker can
 *                  be restarted, or a pinger started, in between.
 *                  With --port2 P the receivers connect to the broker on
 *                  port P (dm, fanout): publish on one broker of a
 *                  cluster, delivery from another. --warmup N first sends
 *                  N messages per sender, waits for them, and measures
 *                  only what follows (a cluster learns where a timeline is
 *                  listened to on its first messages).
 *   ping           An idle client of each broker (-p, and --port2 if
 *                  given) sends PINGREQ and times the PINGRESP, one broker
 *                  after the other, a round every --interval-us, until -t
 *                  seconds or until --until FILE exists. A broker whose
 *                  thread stalls answers late: the round trip is the stall
 *                  seen from outside. Reports percentiles per broker;
 *                  --samples FILE writes "t_us broker rtt_us" lines
 *                  (CLOCK_MONOTONIC) for phase-by-phase analysis.
 *
 * Output: human-readable lines on stderr, one machine-readable line on
 * stdout:  RESULT mode=... msgs=... secs=... rate=... p50_us=... ...
 *
 * --broker-pid P samples /proc/P/stat (utime+stime) around the measured
 * phase and reports the broker's CPU microseconds per message.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "im.pb-c.h"

#define BODY_LEN_DEFAULT 100
#define BODY_MAGIC 0x494d4231u /* "IMB1" */
#define MAX_CLIENTS 1100

/* ---- options ---- */

static struct {
	const char *mode;
	const char *host;
	int port;
	int pairs;
	long msgs;
	int qos;
	int window;
	int frame;          /* payload is an mosquitto-im frame */
	int body_len;
	double timeout_s;
	double rate;        /* total msgs/s, 0 = as fast as possible */
	int sync_limit;
	int broker_pid;
	const char *tag;    /* makes user names / client ids unique per run */
	int nodelay;        /* TCP_NODELAY on the clients' sockets */
	int cmid;           /* senders speak MQTT v5 and give each publish an im-cmid (the dedup path) */
	int verbose;
	const char *phase;  /* catchup-sync: NULL (both), "publish" or "sync" */
	int port2;          /* ping: a second broker; dm, fanout: the receivers' broker; 0 = none */
	long warmup;        /* dm, fanout: messages per sender before the measured ones */
	long interval_us;   /* ping: pause between rounds */
	const char *until;  /* ping: stop when this file exists */
	const char *samples;/* ping: write every sample here */
	const char *lat_log;/* dm, fanout: write "sent_us latency_us pair idx" per received message */
} opt = {
	.mode = NULL, .host = "127.0.0.1", .port = 1883, .pairs = 1, .msgs = 10000,
	.qos = 1, .window = 20, .frame = 0, .body_len = BODY_LEN_DEFAULT,
	.timeout_s = 120, .rate = 0, .sync_limit = 500, .broker_pid = 0, .tag = "0",
	.verbose = 0, .phase = NULL, .port2 = 0, .interval_us = 1000, .until = NULL, .samples = NULL,
};

/* ---- time, cpu ---- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t deadline_ns;

static bool timed_out(void)
{
	return now_ns() > deadline_ns;
}

/* utime+stime from a /proc stat file in microseconds, or -1. */
static int64_t stat_cpu_us(const char *path)
{
	char buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	FILE *f;
	size_t n;
	int i;

	f = fopen(path, "r");
	if(f == NULL) return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	if(p == NULL) return -1;
	p += 2; /* field 3 (state) */
	for(i = 3; i < 14 && p; i++){
		p = strchr(p, ' ');
		if(p) p++;
	}
	if(p == NULL || sscanf(p, "%llu %llu", &ut, &st) != 2) return -1;
	return (int64_t)((ut + st) * 1000000ULL / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* The whole broker process, and its main thread alone: Mosquitto's only
 * thread, where the plugin's callbacks run (its own threads are the rest). */
struct cpu {
	int64_t proc, thread;
};

static struct cpu proc_cpu_us(int pid)
{
	char path[64];
	struct cpu c = {-1, -1};

	if(pid <= 0) return c;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	c.proc = stat_cpu_us(path);
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid, pid);
	c.thread = stat_cpu_us(path);
	return c;
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("imbench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* ---- clients and the poll loop ---- */

enum role { R_SENDER, R_RECEIVER, R_SYNC, R_QUEUE, R_OWNER };

struct client {
	struct mosquitto *m;
	enum role role;
	int idx;               /* pair index */
	char id[64];
	char user[48];
	char topic[128];       /* publish or subscribe topic */
	int port;              /* 0: opt.port */
	bool connected, subscribed, closed;
	int rc_connect;
	/* sender */
	long to_send, sent, acked;
	/* receiver */
	long received, last_idx, out_of_order, dups_or_gaps;
	/* sync */
	uint64_t after, last_seq;
	bool waiting, done;
};

static struct client *clients[MAX_CLIENTS];
static int nclients;

static int64_t *lat_ns;       /* one per received message */
static long lat_n, lat_cap;
/* --lat-log: the same messages in arrival order, with their send stamps,
 * written after the run (no file I/O in the measured loop). */
struct lat_rec { int64_t sent_ns, lat_ns; uint32_t pair; uint32_t idx; };
static struct lat_rec *lat_log;
static long total_received;
static long bad_payload;
static int64_t pace_start;
static long pace_sent;

static void lat_push(int64_t v)
{
	if(lat_n < lat_cap) lat_ns[lat_n++] = v;
}

static void lat_log_push(int64_t sent, int64_t v, uint32_t pair, uint64_t idx)
{
	if(lat_log && lat_n > 0 && lat_n <= lat_cap) lat_log[lat_n - 1] = (struct lat_rec){sent, v, pair, (uint32_t)idx};
}

/* Writes the per-message log: "sent_us latency_us pair idx", CLOCK_MONOTONIC
 * microseconds, in arrival order, for lining latency up with other events
 * (bench/spikes.sh). */
static void lat_log_write(void)
{
	FILE *f;
	long i;

	if(lat_log == NULL) return;
	if((f = fopen(opt.lat_log, "w")) == NULL){
		logf_("--lat-log %s: %s", opt.lat_log, strerror(errno));
		return;
	}
	for(i = 0; i < lat_n; i++){
		fprintf(f, "%" PRId64 " %" PRId64 " %" PRIu32 " %" PRIu32 "\n", lat_log[i].sent_ns / 1000, lat_log[i].lat_ns / 1000,
				lat_log[i].pair, lat_log[i].idx);
	}
	fclose(f);
}

static void drive(struct client *const *cs, int n, int timeout_ms)
{
	struct pollfd pfd[MAX_CLIENTS];
	struct client *map[MAX_CLIENTS];
	int i, k = 0, rc, j;

	for(i = 0; i < n; i++){
		int s;
		if(cs[i]->closed) continue;
		s = mosquitto_socket(cs[i]->m);
		if(s < 0) continue;
		pfd[k].fd = s;
		pfd[k].events = POLLIN | (mosquitto_want_write(cs[i]->m) ? POLLOUT : 0);
		pfd[k].revents = 0;
		map[k++] = cs[i];
	}
	rc = poll(pfd, (nfds_t)k, timeout_ms);
	if(rc < 0 && errno != EINTR) die("poll: %s", strerror(errno));
	for(i = 0; i < k; i++){
		struct mosquitto *m = map[i]->m;
		if(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)){
			/* loop_read reads about one packet when nothing is queued:
			 * repeat until the socket would block (bounded). */
			for(j = 0; j < 256; j++){
				errno = 0;
				rc = mosquitto_loop_read(m, 1);
				if(rc != MOSQ_ERR_SUCCESS){
					if(!map[i]->closed && opt.verbose) logf_("%s: read: %s", map[i]->id, mosquitto_strerror(rc));
					break;
				}
				if(errno == EAGAIN || errno == EWOULDBLOCK) break;
			}
		}
		if(pfd[i].revents & POLLOUT || mosquitto_want_write(m)){
			mosquitto_loop_write(m, 1);
		}
		mosquitto_loop_misc(m);
	}
}

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
	struct client *c = ud;

	(void)m;
	c->rc_connect = rc;
	if(rc != 0){
		logf_("%s: CONNACK refused: %s", c->id, mosquitto_connack_string(rc));
		return;
	}
	c->connected = true;
	if(c->role == R_RECEIVER || c->role == R_QUEUE){
		mosquitto_subscribe(c->m, NULL, c->topic, opt.qos);
	}else if(c->role == R_SYNC){
		mosquitto_subscribe(c->m, NULL, "$CONTROL/im/v1/sync/response", 1);
	}else if(c->role == R_OWNER){
		mosquitto_subscribe(c->m, NULL, "$CONTROL/im/v1/group/response", 1);
	}
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc)
{
	struct client *c = ud;

	(void)m;
	c->connected = false;
	if(rc != 0 && !c->closed) logf_("%s: disconnected unexpectedly (%s)", c->id, mosquitto_strerror(rc));
	c->closed = true;
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted)
{
	struct client *c = ud;

	(void)m;
	(void)mid;
	if(n < 1 || granted[0] > 2) logf_("%s: subscription to %s refused", c->id, c->topic);
	else c->subscribed = true;
}

static void on_publish(struct mosquitto *m, void *ud, int mid)
{
	struct client *c = ud;

	(void)m;
	(void)mid;
	c->acked++;
}

/* Body: magic u32, pair u32, idx u64, stamp i64, padding. Native endian:
 * sender and receiver are this process. */
struct body_hdr {
	uint32_t magic;
	uint32_t pair;
	uint64_t idx;
	int64_t stamp;
};

static const uint8_t *payload_body(const uint8_t *p, size_t len, size_t *blen)
{
	size_t h;

	if(!opt.frame){
		*blen = len;
		return p;
	}
	if(len < 5 || p[0] != 'I' || p[1] != 'M' || p[2] != 1) return NULL;
	h = ((size_t)p[3] << 8) | p[4];
	if(h > len - 5) return NULL;
	*blen = len - 5 - h;
	return p + 5 + h;
}

static void on_message_recv(struct client *c, const struct mosquitto_message *msg)
{
	struct body_hdr bh;
	const uint8_t *b;
	size_t blen = 0;
	int64_t t = now_ns();

	b = payload_body(msg->payload, (size_t)msg->payloadlen, &blen);
	if(b == NULL || blen < sizeof(bh)){
		bad_payload++;
		return;
	}
	memcpy(&bh, b, sizeof(bh));
	if(bh.magic != BODY_MAGIC){
		bad_payload++;
		return;
	}
	lat_push(t - bh.stamp);
	lat_log_push(bh.stamp, t - bh.stamp, bh.pair, bh.idx);
	if((long)bh.idx != c->last_idx + 1){
		if((long)bh.idx <= c->last_idx) c->out_of_order++;
		else c->dups_or_gaps++;
	}
	if((long)bh.idx > c->last_idx) c->last_idx = (long)bh.idx;
	c->received++;
	total_received++;
}

static void send_sync(struct client *c);

static void on_message_sync(struct client *c, const struct mosquitto_message *msg)
{
	Im__V1__SyncBatch *sb;
	size_t i;

	if(strcmp(msg->topic, "$CONTROL/im/v1/sync/response") != 0) return;
	sb = im__v1__sync_batch__unpack(NULL, (size_t)msg->payloadlen, msg->payload);
	c->waiting = false;
	if(sb == NULL){
		logf_("%s: undecodable SyncBatch", c->id);
		c->done = true;
		return;
	}
	if(sb->status != IM__V1__STATUS__OK){
		logf_("%s: sync refused: %d %s", c->id, (int)sb->status, sb->reason ? sb->reason : "");
		c->done = true;
		im__v1__sync_batch__free_unpacked(sb, NULL);
		return;
	}
	for(i = 0; i < sb->n_frames; i++){
		const uint8_t *f = sb->frames[i].data;
		size_t len = sb->frames[i].len, h;
		Im__V1__Header *hd;

		if(len < 5 || f[0] != 'I' || f[1] != 'M'){
			bad_payload++;
			continue;
		}
		c->received++;
		total_received++;
		/* Decode only the first and the last header: the batch must
		 * continue the previous one and be gap-free. */
		if(i != 0 && i != sb->n_frames - 1) continue;
		h = ((size_t)f[3] << 8) | f[4];
		if(h > len - 5) continue;
		hd = im__v1__header__unpack(NULL, h, f + 5);
		if(hd == NULL){
			bad_payload++;
			continue;
		}
		if(i == 0){
			if(hd->seq != c->last_seq + 1) c->dups_or_gaps++;
			c->after = hd->seq; /* first seq of this batch */
		}
		if(i == sb->n_frames - 1){
			if(hd->seq != c->after + i) c->dups_or_gaps++;
			c->last_seq = hd->seq;
		}
		im__v1__header__free_unpacked(hd, NULL);
	}
	if(sb->has_more && sb->n_frames > 0){
		c->after = c->last_seq;
		send_sync(c);
	}else{
		c->done = true;
	}
	im__v1__sync_batch__free_unpacked(sb, NULL);
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
	struct client *c = ud;

	(void)m;
	if(c->role == R_SYNC){
		on_message_sync(c, msg);
	}else if(c->role == R_OWNER){
		Im__V1__GroupResponse *r = im__v1__group_response__unpack(NULL, (size_t)msg->payloadlen, msg->payload);
		if(r == NULL || r->status != IM__V1__STATUS__OK){
			die("group create refused: %s", r && r->reason ? r->reason : "malformed reply");
		}
		im__v1__group_response__free_unpacked(r, NULL);
		c->done = true;
	}else{
		on_message_recv(c, msg);
	}
}

static struct client *client_new(enum role role, int idx, const char *id, const char *user, bool clean)
{
	struct client *c;

	if(nclients >= MAX_CLIENTS) die("too many clients");
	c = calloc(1, sizeof(*c));
	if(c == NULL) die("out of memory");
	c->role = role;
	c->idx = idx;
	c->last_idx = -1;
	snprintf(c->id, sizeof(c->id), "%s", id);
	snprintf(c->user, sizeof(c->user), "%s", user);
	c->m = mosquitto_new(c->id, clean, c);
	if(c->m == NULL) die("mosquitto_new failed");
	mosquitto_username_pw_set(c->m, c->user, NULL);
	mosquitto_int_option(c->m, MOSQ_OPT_SEND_MAXIMUM, opt.window > 0 ? opt.window : 20);
	if(opt.cmid && role == R_SENDER) mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	if(opt.nodelay) mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_connect_callback_set(c->m, on_connect);
	mosquitto_disconnect_callback_set(c->m, on_disconnect);
	mosquitto_subscribe_callback_set(c->m, on_subscribe);
	mosquitto_publish_callback_set(c->m, on_publish);
	mosquitto_message_callback_set(c->m, on_message);
	clients[nclients++] = c;
	return c;
}

static void client_connect(struct client *c)
{
	int rc;

	c->closed = false;
	c->connected = false;
	c->subscribed = false;
	rc = mosquitto_connect(c->m, opt.host, c->port ? c->port : opt.port, 60);
	if(rc != MOSQ_ERR_SUCCESS) die("%s: connect to %s:%d: %s", c->id, opt.host, c->port ? c->port : opt.port, mosquitto_strerror(rc));
}

static void client_disconnect(struct client *c)
{
	int64_t end = now_ns() + 2000000000LL;

	if(!c->closed){
		c->closed = true;
		mosquitto_disconnect(c->m);
		/* Flush the DISCONNECT. */
		while(mosquitto_want_write(c->m) && now_ns() < end) mosquitto_loop_write(c->m, 1);
	}
}

/* Drives all clients until pred() is true or the deadline passes. */
static bool run_until(struct client *const *cs, int n, bool (*pred)(void), void (*tick)(void))
{
	while(!pred()){
		if(timed_out()) return false;
		drive(cs, n, opt.rate > 0 ? 1 : 50);
		if(tick) tick();
	}
	return true;
}

static struct client *const *g_set;
static int g_n;

static bool all_connected(void)
{
	int i;

	for(i = 0; i < g_n; i++){
		if(g_set[i]->rc_connect) die("%s: connection refused", g_set[i]->id);
		if(!g_set[i]->connected) return false;
	}
	return true;
}

static bool all_subscribed(void)
{
	int i;

	for(i = 0; i < g_n; i++){
		if((g_set[i]->role == R_RECEIVER || g_set[i]->role == R_QUEUE) && !g_set[i]->subscribed) return false;
	}
	return true;
}

/* ---- publishing with a bounded window ---- */

static uint8_t *body_buf;

static int publish_one(struct client *c)
{
	struct body_hdr bh;
	int rc;

	bh.magic = BODY_MAGIC;
	bh.pair = (uint32_t)c->idx;
	bh.idx = (uint64_t)c->sent;
	bh.stamp = now_ns();
	memcpy(body_buf, &bh, sizeof(bh));
	if(opt.cmid){
		/* Unique per run (the tag), per sender and per message. */
		mosquitto_property *props = NULL;
		char cmid[64];

		snprintf(cmid, sizeof(cmid), "%s-%d-%ld", opt.tag, c->idx, c->sent);
		if(mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-cmid", cmid) != MOSQ_ERR_SUCCESS){
			return MOSQ_ERR_NOMEM;
		}
		rc = mosquitto_publish_v5(c->m, NULL, c->topic, opt.body_len, body_buf, opt.qos, false, props);
		mosquitto_property_free_all(&props);
	}else{
		rc = mosquitto_publish(c->m, NULL, c->topic, opt.body_len, body_buf, opt.qos, false);
	}
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	c->sent++;
	pace_sent++;
	return rc;
}

static void top_up_senders(void)
{
	int i;

	for(i = 0; i < nclients; i++){
		struct client *c = clients[i];
		if(c->role != R_SENDER || c->closed) continue;
		while(c->sent < c->to_send && c->sent - c->acked < opt.window){
			if(opt.rate > 0){
				double allowed = (double)(now_ns() - pace_start) * 1e-9 * opt.rate;
				if((double)pace_sent >= allowed) return;
			}
			if(publish_one(c) != MOSQ_ERR_SUCCESS) break;
		}
		/* Push the queued packets out now rather than after the next poll. */
		if(mosquitto_want_write(c->m)) mosquitto_loop_write(c->m, 1);
	}
}

static bool senders_done(void)
{
	int i;

	for(i = 0; i < nclients; i++){
		struct client *c = clients[i];
		if(c->role == R_SENDER && (c->acked < c->to_send)){
			if(c->closed) die("%s: connection lost while publishing (acked %ld of %ld)", c->id, c->acked, c->to_send);
			return false;
		}
	}
	return true;
}

static long expect_received;

static bool all_received(void)
{
	return total_received >= expect_received;
}

static bool dm_done(void)
{
	return all_received() && senders_done();
}

/* ---- results ---- */

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

static double pct_us(double q)
{
	long i;

	if(lat_n == 0) return 0;
	i = (long)(q * (double)(lat_n - 1) + 0.5);
	return (double)lat_ns[i] / 1000.0;
}

static void report(const char *mode, long n, int64_t t0, int64_t t1, struct cpu cpu0, struct cpu cpu1, bool ok,
		const char *extra)
{
	double secs = (double)(t1 - t0) / 1e9;
	double rate = secs > 0 ? (double)n / secs : 0;
	double cpu_per = (cpu0.proc >= 0 && cpu1.proc >= 0 && n > 0) ? (double)(cpu1.proc - cpu0.proc) / (double)n : -1;
	double thr_per = (cpu0.thread >= 0 && cpu1.thread >= 0 && n > 0) ? (double)(cpu1.thread - cpu0.thread) / (double)n : -1;
	long ooo = 0, gaps = 0;
	int i;

	for(i = 0; i < nclients; i++){
		ooo += clients[i]->out_of_order;
		gaps += clients[i]->dups_or_gaps;
	}
	lat_log_write();
	if(lat_n) qsort(lat_ns, (size_t)lat_n, sizeof(lat_ns[0]), cmp_i64);
	logf_("%s: %ld msgs in %.3f s = %.0f msgs/s; latency p50 %.0f us p99 %.0f us max %.0f us; broker cpu %.1f us/msg"
			" (main thread %.1f)%s%s",
			mode, n, secs, rate, pct_us(0.50), pct_us(0.99), pct_us(1.0), cpu_per, thr_per,
			ok ? "" : " (TIMED OUT)", extra ? extra : "");
	printf("RESULT mode=%s ok=%d msgs=%ld secs=%.4f rate=%.1f p50_us=%.0f p99_us=%.0f max_us=%.0f cpu_us_per_msg=%.2f"
			" thread_cpu_us_per_msg=%.2f out_of_order=%ld gaps=%ld bad=%ld qos=%d pairs=%d\n",
			mode, ok ? 1 : 0, n, secs, rate, pct_us(0.50), pct_us(0.99), pct_us(1.0), cpu_per, thr_per,
			ooo, gaps, bad_payload, opt.qos, opt.pairs);
	fflush(stdout);
}

/* ---- modes ---- */

/* --warmup: each sender publishes opt.warmup messages first (paced like
 * the rest); once they have all arrived (each_recv per message sent),
 * counters and latencies start over, so the measured phase begins with
 * the timeline's route known. */
static void warm_up(long each_recv)
{
	int i, senders = 0;

	if(opt.warmup <= 0) return;
	for(i = 0; i < nclients; i++){
		if(clients[i]->role != R_SENDER) continue;
		clients[i]->to_send = opt.warmup;
		senders++;
	}
	expect_received = opt.warmup * senders * each_recv;
	pace_start = now_ns();
	pace_sent = 0;
	top_up_senders();
	if(!run_until(clients, nclients, dm_done, top_up_senders)){
		long sent = 0, acked = 0;
		for(i = 0; i < nclients; i++){
			if(clients[i]->role != R_SENDER) continue;
			sent += clients[i]->sent;
			acked += clients[i]->acked;
		}
		/* Which half is missing: acknowledgements (the publisher's
		 * broker) or deliveries (the receivers' broker). */
		die("timed out in the warm-up: %ld of %ld received, %ld of %ld sent acknowledged", total_received,
				expect_received, acked, sent);
	}
	logf_("warm-up: %ld messages per sender received", opt.warmup);
	total_received = 0;
	lat_n = 0;
}

static int mode_dm(void)
{
	char id[64], user[48];
	int i;
	int64_t t0, t1;
	struct cpu c0, c1;
	bool ok;
	long per = opt.msgs / opt.pairs, rest = opt.msgs % opt.pairs;

	for(i = 0; i < opt.pairs; i++){
		struct client *r, *s;

		snprintf(user, sizeof(user), "r%s_%d", opt.tag, i);
		snprintf(id, sizeof(id), "imb-%s", user);
		r = client_new(R_RECEIVER, i, id, user, true);
		r->port = opt.port2;
		snprintf(r->topic, sizeof(r->topic), "im/u/%s", user);
		snprintf(user, sizeof(user), "s%s_%d", opt.tag, i);
		snprintf(id, sizeof(id), "imb-%s", user);
		s = client_new(R_SENDER, i, id, user, true);
		snprintf(s->topic, sizeof(s->topic), "%s", r->topic);
		s->to_send = per + (i < rest ? 1 : 0);
	}
	for(i = 0; i < nclients; i++) client_connect(clients[i]);
	g_set = clients;
	g_n = nclients;
	if(!run_until(clients, nclients, all_connected, NULL)) die("timed out connecting");
	if(!run_until(clients, nclients, all_subscribed, NULL)) die("timed out subscribing");
	warm_up(1);
	for(i = 0; i < nclients; i++){
		if(clients[i]->role == R_SENDER) clients[i]->to_send = clients[i]->sent + per + (clients[i]->idx < rest ? 1 : 0);
	}

	expect_received = opt.msgs;
	pace_sent = 0;
	c0 = proc_cpu_us(opt.broker_pid);
	t0 = pace_start = now_ns();
	top_up_senders();
	ok = run_until(clients, nclients, dm_done, top_up_senders);
	t1 = now_ns();
	c1 = proc_cpu_us(opt.broker_pid);
	report("dm", total_received, t0, t1, c0, c1, ok, NULL);
	for(i = 0; i < nclients; i++) client_disconnect(clients[i]);
	return ok && total_received == opt.msgs ? 0 : 1;
}

/* Publishes opt.msgs to topic with one sender (bounded window); returns
 * the elapsed seconds. */
static double publish_phase(const char *user, const char *topic)
{
	char id[64];
	struct client *s;
	struct client *set[1];
	int64_t t0;

	snprintf(id, sizeof(id), "imb-%s", user);
	s = client_new(R_SENDER, 0, id, user, true);
	snprintf(s->topic, sizeof(s->topic), "%s", topic);
	s->to_send = opt.msgs;
	set[0] = s;
	client_connect(s);
	g_set = set;
	g_n = 1;
	if(!run_until(set, 1, all_connected, NULL)) die("timed out connecting the publisher");
	t0 = pace_start = now_ns();
	top_up_senders();
	if(!run_until(set, 1, senders_done, top_up_senders)) die("timed out publishing (acked %ld of %ld)", s->acked, s->to_send);
	client_disconnect(s);
	return (double)(now_ns() - t0) / 1e9;
}

static void send_sync(struct client *c)
{
	Im__V1__SyncRequest rq = IM__V1__SYNC_REQUEST__INIT;
	char tl[80];
	uint8_t buf[256];
	size_t n;

	snprintf(tl, sizeof(tl), "u/%s", c->user);
	rq.timeline = tl;
	rq.has_after_seq = 1;
	rq.after_seq = c->after;
	rq.has_limit = 1;
	rq.limit = (uint32_t)opt.sync_limit;
	n = im__v1__sync_request__pack(&rq, buf);
	if(mosquitto_publish(c->m, NULL, "$CONTROL/im/v1/sync", (int)n, buf, 1, false) != MOSQ_ERR_SUCCESS){
		logf_("%s: cannot send sync request", c->id);
		c->done = true;
		return;
	}
	c->waiting = true;
}

static struct client *g_sync;

static bool sync_done(void)
{
	if(g_sync->closed) return true;
	return g_sync->done;
}

static int mode_catchup_sync(void)
{
	char user[48], topic[128], extra[96], id[64];
	struct client *c;
	struct client *set[1];
	double pub_s;
	int64_t t0, t1;
	struct cpu c0, c1;
	bool ok;

	opt.frame = 1;
	snprintf(user, sizeof(user), "cs%s", opt.tag);
	snprintf(topic, sizeof(topic), "im/u/%s", user);
	snprintf(id, sizeof(id), "pcs%s", opt.tag);
	if(opt.phase == NULL || !strcmp(opt.phase, "publish")){
		pub_s = publish_phase(id, topic);
		logf_("catchup-sync: published %ld to %s in %.3f s (%.0f msgs/s)", opt.msgs, topic, pub_s, (double)opt.msgs / pub_s);
		if(opt.phase){
			printf("RESULT mode=catchup-publish ok=1 msgs=%ld secs=%.4f rate=%.1f\n", opt.msgs, pub_s, (double)opt.msgs / pub_s);
			return 0;
		}
	}else{
		pub_s = 0;
	}

	snprintf(id, sizeof(id), "imb-%s", user);
	c0 = proc_cpu_us(opt.broker_pid);
	t0 = now_ns();
	c = client_new(R_SYNC, 0, id, user, true);
	set[0] = c;
	g_sync = c;
	client_connect(c);
	g_set = set;
	g_n = 1;
	if(!run_until(set, 1, all_connected, NULL)) die("timed out connecting the sync client");
	c->after = 0;
	send_sync(c);
	ok = run_until(set, 1, sync_done, NULL);
	t1 = now_ns();
	c1 = proc_cpu_us(opt.broker_pid);
	extra[0] = '\0';
	if(pub_s > 0) snprintf(extra, sizeof(extra), "; publish phase %.0f msgs/s", (double)opt.msgs / pub_s);
	ok = ok && c->received == opt.msgs;
	report("catchup-sync", c->received, t0, t1, c0, c1, ok, extra);
	if(pub_s > 0) printf("RESULT mode=catchup-publish ok=1 msgs=%ld secs=%.4f rate=%.1f\n", opt.msgs, pub_s, (double)opt.msgs / pub_s);
	client_disconnect(c);
	return ok ? 0 : 1;
}

/* ---- fanout ---- */

static struct client *g_owner;

static bool owner_done(void)
{
	return g_owner->done;
}

static bool owner_subscribed(void)
{
	return g_owner->connected && g_owner->subscribed;
}

/* The plugin run: the sender creates the group with every receiver in it. */
static void create_group(struct client *owner, const char *group, int members)
{
	Im__V1__GroupRequest rq = IM__V1__GROUP_REQUEST__INIT;
	char **names = calloc((size_t)members, sizeof(char *));
	uint8_t *buf;
	size_t n;
	int i;
	struct client *set[1] = {owner};

	if(names == NULL) die("out of memory");
	for(i = 0; i < members; i++) names[i] = clients[i]->user;
	rq.op = "create";
	rq.group = (char *)group;
	rq.members = names;
	rq.n_members = (size_t)members;
	n = im__v1__group_request__get_packed_size(&rq);
	buf = malloc(n);
	if(buf == NULL) die("out of memory");
	im__v1__group_request__pack(&rq, buf);
	g_owner = owner;
	g_set = set;
	g_n = 1;
	if(!run_until(set, 1, owner_subscribed, NULL)) die("timed out subscribing to group replies");
	if(mosquitto_publish(owner->m, NULL, "$CONTROL/im/v1/group", (int)n, buf, 1, false) != MOSQ_ERR_SUCCESS){
		die("cannot send the group request");
	}
	if(!run_until(set, 1, owner_done, NULL)) die("timed out creating the group");
	free(buf);
	free(names);
}

static int mode_fanout(void)
{
	char id[64], user[48], topic[128], group[48];
	struct client *s;
	int i, members = opt.pairs;
	int64_t t0, t1;
	struct cpu c0, c1;
	bool ok;

	snprintf(group, sizeof(group), "fan%s", opt.tag);
	if(opt.frame) snprintf(topic, sizeof(topic), "im/g/%s", group);
	else snprintf(topic, sizeof(topic), "bench/fan/%s", opt.tag);
	for(i = 0; i < members; i++){
		struct client *r;
		snprintf(user, sizeof(user), "f%s_%d", opt.tag, i);
		snprintf(id, sizeof(id), "imb-%s", user);
		r = client_new(R_RECEIVER, 0, id, user, true);
		r->port = opt.port2;
		snprintf(r->topic, sizeof(r->topic), "%s", topic);
	}
	snprintf(user, sizeof(user), "fo%s", opt.tag);
	snprintf(id, sizeof(id), "imb-%s", user);
	s = client_new(opt.frame ? R_OWNER : R_SENDER, 0, id, user, true);
	snprintf(s->topic, sizeof(s->topic), "%s", topic);
	s->to_send = opt.msgs;
	if(opt.frame){
		client_connect(s);
		create_group(s, group, members);
		s->role = R_SENDER;
		if(opt.port2){
			/* The other broker learns the group over NATS; its members
			 * may subscribe once it has. */
			int64_t until = now_ns() + 1000000000LL;
			struct client *set[1] = {s};
			while(now_ns() < until) drive(set, 1, 50);
		}
	}
	for(i = 0; i < members; i++) client_connect(clients[i]);
	if(!opt.frame) client_connect(s);
	g_set = clients;
	g_n = nclients;
	if(!run_until(clients, nclients, all_connected, NULL)) die("timed out connecting");
	if(!run_until(clients, nclients, all_subscribed, NULL)) die("timed out subscribing");
	warm_up(members);
	s->to_send = s->sent + opt.msgs;

	expect_received = opt.msgs * members;
	pace_sent = 0;
	c0 = proc_cpu_us(opt.broker_pid);
	t0 = pace_start = now_ns();
	top_up_senders();
	ok = run_until(clients, nclients, dm_done, top_up_senders);
	t1 = now_ns();
	c1 = proc_cpu_us(opt.broker_pid);
	report("fanout", total_received, t0, t1, c0, c1, ok, NULL);
	for(i = 0; i < nclients; i++) client_disconnect(clients[i]);
	return ok && total_received == expect_received ? 0 : 1;
}

static bool queue_done(void)
{
	return all_received();
}

static int mode_catchup_queue(void)
{
	char id[64], topic[128], extra[96], user[48];
	struct client *q;
	struct client *set[1];
	double pub_s;
	int64_t t0, t1;
	struct cpu c0, c1;
	bool ok;

	opt.qos = 2;
	snprintf(user, sizeof(user), "cq%s", opt.tag);
	snprintf(id, sizeof(id), "imb-%s", user);
	snprintf(topic, sizeof(topic), "bench/q/%s", opt.tag);
	q = client_new(R_QUEUE, 0, id, user, false);
	snprintf(q->topic, sizeof(q->topic), "%s", topic);
	set[0] = q;
	g_set = set;
	g_n = 1;
	client_connect(q);
	if(!run_until(set, 1, all_connected, NULL) || !run_until(set, 1, all_subscribed, NULL)){
		die("timed out setting up the persistent session");
	}
	client_disconnect(q);

	snprintf(user, sizeof(user), "pcq%s", opt.tag);
	pub_s = publish_phase(user, topic);
	logf_("catchup-queue: published %ld to %s in %.3f s (%.0f msgs/s)", opt.msgs, topic, pub_s, (double)opt.msgs / pub_s);

	/* Reconnect the same session and drain. */
	expect_received = opt.msgs;
	total_received = 0;
	lat_n = 0;
	c0 = proc_cpu_us(opt.broker_pid);
	t0 = now_ns();
	set[0] = q;
	g_set = set;
	g_n = 1;
	q->subscribed = true; /* the session keeps its subscription */
	client_connect(q);
	q->subscribed = true;
	ok = run_until(set, 1, queue_done, NULL);
	t1 = now_ns();
	c1 = proc_cpu_us(opt.broker_pid);
	lat_n = 0; /* queue age, not a latency: not reported */
	snprintf(extra, sizeof(extra), "; publish phase %.0f msgs/s", (double)opt.msgs / pub_s);
	report("catchup-queue", total_received, t0, t1, c0, c1, ok && total_received == opt.msgs, extra);
	printf("RESULT mode=catchup-publish ok=1 msgs=%ld secs=%.4f rate=%.1f\n", opt.msgs, pub_s, (double)opt.msgs / pub_s);
	/* Leave no session behind: reconnect clean and go. */
	client_disconnect(q);
	return ok && total_received == opt.msgs ? 0 : 1;
}

/* ---- ping: the broker thread's stalls, seen from outside ---- */

static int ping_connect(int port, int n)
{
	struct sockaddr_in a;
	uint8_t pkt[64], ack[4];
	char id[40];
	int fd, one = 1;
	size_t idlen, len;
	ssize_t got = 0, r;

	snprintf(id, sizeof(id), "imb-ping%s-%d", opt.tag, n);
	idlen = strlen(id);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	if(inet_pton(AF_INET, opt.host, &a.sin_addr) != 1) die("ping: -h must be an IPv4 address");
	if((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0) die("socket: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if(connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) die("ping: connect to port %d: %s", port, strerror(errno));
	/* CONNECT, MQTT 3.1.1, clean session, keepalive 60 s, no username. */
	len = 0;
	pkt[len++] = 0x10;
	pkt[len++] = (uint8_t)(10 + 2 + idlen);
	memcpy(pkt + len, "\x00\x04MQTT\x04\x02\x00\x3c", 10);
	len += 10;
	pkt[len++] = 0;
	pkt[len++] = (uint8_t)idlen;
	memcpy(pkt + len, id, idlen);
	len += idlen;
	if(write(fd, pkt, len) != (ssize_t)len) die("ping: write CONNECT: %s", strerror(errno));
	while(got < 4){
		r = read(fd, ack + got, (size_t)(4 - got));
		if(r <= 0) die("ping: no CONNACK from port %d", port);
		got += r;
	}
	if(ack[0] != 0x20 || ack[3] != 0) die("ping: CONNACK refused by port %d", port);
	return fd;
}

/* One PINGREQ, the microseconds until its PINGRESP; -1 on failure. */
static int64_t ping_once(int fd)
{
	static const uint8_t req[2] = {0xc0, 0x00};
	uint8_t resp[2];
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	int64_t t0 = now_ns();
	ssize_t got = 0, r;

	if(write(fd, req, 2) != 2) return -1;
	while(got < 2){
		if(poll(&pfd, 1, 10000) != 1) return -1;
		r = read(fd, resp + got, (size_t)(2 - got));
		if(r <= 0) return -1;
		got += r;
	}
	if(resp[0] != 0xd0) return -1;
	return (now_ns() - t0) / 1000;
}

static int mode_ping(void)
{
	int fds[2], ports[2] = {opt.port, opt.port2}, nb = opt.port2 ? 2 : 1, b;
	long cap = (long)(opt.timeout_s * 1e6 / (double)(opt.interval_us > 0 ? opt.interval_us : 1)) + 16, n = 0;
	int64_t *rtt[2], v;
	long over1[2] = {0, 0}, over2[2] = {0, 0};
	FILE *out = NULL;
	struct timespec pause = {.tv_sec = opt.interval_us / 1000000, .tv_nsec = (opt.interval_us % 1000000) * 1000};
	bool ok = true;

	if(cap > 20000000) cap = 20000000;
	for(b = 0; b < nb; b++){
		fds[b] = ping_connect(ports[b], b);
		if((rtt[b] = calloc((size_t)cap, sizeof(int64_t))) == NULL) die("out of memory");
	}
	if(opt.samples && (out = fopen(opt.samples, "w")) == NULL) die("ping: %s: %s", opt.samples, strerror(errno));
	while(n < cap && !timed_out()){
		if(opt.until && (n % 64) == 0 && access(opt.until, F_OK) == 0) break;
		for(b = 0; b < nb; b++){
			v = ping_once(fds[b]);
			if(v < 0){
				logf_("ping: broker on port %d did not answer", ports[b]);
				ok = false;
				goto done;
			}
			rtt[b][n] = v;
			if(v > 1000) over1[b]++;
			if(v > 2000) over2[b]++;
			if(out) fprintf(out, "%" PRId64 " %d %" PRId64 "\n", now_ns() / 1000, b, v);
		}
		n++;
		if(opt.interval_us > 0) nanosleep(&pause, NULL);
	}
done:
	if(out) fclose(out);
	for(b = 0; b < nb; b++){
		close(fds[b]);
		if(n == 0) continue;
		qsort(rtt[b], (size_t)n, sizeof(int64_t), cmp_i64);
		printf("RESULT mode=ping ok=%d broker=%d port=%d samples=%ld p50_us=%" PRId64 " p99_us=%" PRId64
				" p999_us=%" PRId64 " max_us=%" PRId64 " over_1ms=%ld over_2ms=%ld\n",
				ok ? 1 : 0, b, ports[b], n, rtt[b][n / 2], rtt[b][(n * 99) / 100], rtt[b][(n * 999) / 1000],
				rtt[b][n - 1], over1[b], over2[b]);
		free(rtt[b]);
	}
	return ok && n > 0 ? 0 : 1;
}

static void usage(void)
{
	fputs("usage: imbench MODE [options]\n"
			"  MODE: dm | catchup-sync | catchup-queue | fanout | ping\n"
			"  -h HOST        broker host (default 127.0.0.1)\n"
			"  -p PORT        broker port (default 1883)\n"
			"  -n COUNT       messages in total (default 10000)\n"
			"  -c PAIRS       dm: sender/receiver pairs (default 1, max 100)\n"
			"  -q QOS         dm: 1 or 2 (default 1)\n"
			"  -w WINDOW      unacknowledged publishes per sender (default 20)\n"
			"  -s BYTES       body size, >= 24 (default 100)\n"
			"  -r RATE        total publish rate in msgs/s (default: as fast as possible)\n"
			"  -l LIMIT       catchup-sync: frames asked per batch (default 500)\n"
			"  -t SECONDS     give up after this long (default 120)\n"
			"  -T TAG         makes user names and client ids unique (default 0)\n"
			"  -P PID         broker pid: report broker CPU per message\n"
			"  --frame        payloads are mosquitto-im frames (plugin loaded)\n"
			"  --cmid         dm: senders use MQTT v5 and an im-cmid per publish\n"
			"  --nodelay      TCP_NODELAY on the client sockets\n"
			"  --phase P      catchup-sync: publish | sync (one half only)\n"
			"  --port2 PORT   ping: a second broker, pinged in turn with the first;\n"
			"                 dm, fanout: the receivers' broker (cross-broker latency)\n"
			"  --warmup N     dm, fanout: N messages per sender first, not measured\n"
			"  --interval-us N  ping: pause between rounds (default 1000)\n"
			"  --until FILE   ping: stop when FILE exists\n"
			"  --samples FILE ping: write \"t_us broker rtt_us\" per sample\n"
			"  --lat-log FILE dm, fanout: write \"sent_us latency_us pair idx\" per message received\n"
			"                 (CLOCK_MONOTONIC, arrival order)\n"
			"  -v             verbose\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	int i, rc;

	if(argc < 2) usage();
	opt.mode = argv[1];
	for(i = 2; i < argc; i++){
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if(!strcmp(a, "--frame")){ opt.frame = 1; continue; }
		if(!strcmp(a, "-v")){ opt.verbose = 1; continue; }
		if(!strcmp(a, "--nodelay")){ opt.nodelay = 1; continue; }
		if(!strcmp(a, "--cmid")){ opt.cmid = 1; continue; }
		if(v == NULL) usage();
		i++;
		if(!strcmp(a, "-h")) opt.host = v;
		else if(!strcmp(a, "-p")) opt.port = atoi(v);
		else if(!strcmp(a, "-n")) opt.msgs = atol(v);
		else if(!strcmp(a, "-c")) opt.pairs = atoi(v);
		else if(!strcmp(a, "-q")) opt.qos = atoi(v);
		else if(!strcmp(a, "-w")) opt.window = atoi(v);
		else if(!strcmp(a, "-s")) opt.body_len = atoi(v);
		else if(!strcmp(a, "-r")) opt.rate = atof(v);
		else if(!strcmp(a, "-l")) opt.sync_limit = atoi(v);
		else if(!strcmp(a, "-t")) opt.timeout_s = atof(v);
		else if(!strcmp(a, "-T")) opt.tag = v;
		else if(!strcmp(a, "-P")) opt.broker_pid = atoi(v);
		else if(!strcmp(a, "--phase")) opt.phase = v;
		else if(!strcmp(a, "--port2")) opt.port2 = atoi(v);
		else if(!strcmp(a, "--interval-us")) opt.interval_us = atol(v);
		else if(!strcmp(a, "--until")) opt.until = v;
		else if(!strcmp(a, "--samples")) opt.samples = v;
		else if(!strcmp(a, "--lat-log")) opt.lat_log = v;
		else if(!strcmp(a, "--warmup")) opt.warmup = atol(v);
		else usage();
	}
	if(opt.msgs < 1 || opt.msgs > 10000000) die("-n must be 1..10000000");
	if(opt.pairs < 1 || opt.pairs > (strcmp(opt.mode, "fanout") ? 100 : 1000)) die("-c must be 1..100 (fanout: 1..1000)");
	if(opt.qos < 0 || opt.qos > 2) die("-q must be 0..2");
	if(opt.qos == 0) die("QoS 0 has no acknowledgement to bound the window; use 1 or 2");
	if(opt.window < 1 || opt.window > 65535) die("-w must be 1..65535");
	if(opt.body_len < (int)sizeof(struct body_hdr) || opt.body_len > 65536) die("-s must be 24..65536");
	if(opt.timeout_s <= 0 || opt.timeout_s > 3600) die("-t must be 0..3600 seconds");
	if(strlen(opt.tag) > 20) die("-T: at most 20 characters");
	if(opt.phase && strcmp(opt.phase, "publish") && strcmp(opt.phase, "sync")) die("--phase must be publish or sync");
	if(opt.interval_us < 0 || opt.interval_us > 1000000) die("--interval-us must be 0..1000000");

	body_buf = calloc(1, (size_t)opt.body_len);
	lat_cap = !strcmp(opt.mode, "fanout") ? opt.msgs * opt.pairs : opt.msgs;
	lat_ns = calloc((size_t)lat_cap, sizeof(*lat_ns));
	if(opt.lat_log) lat_log = calloc((size_t)lat_cap, sizeof(*lat_log));
	if(body_buf == NULL || lat_ns == NULL || (opt.lat_log && lat_log == NULL)) die("out of memory");
	memset(body_buf, 'x', (size_t)opt.body_len);

	mosquitto_lib_init();
	deadline_ns = now_ns() + (int64_t)(opt.timeout_s * 1e9);
	if(!strcmp(opt.mode, "dm")) rc = mode_dm();
	else if(!strcmp(opt.mode, "catchup-sync")) rc = mode_catchup_sync();
	else if(!strcmp(opt.mode, "catchup-queue")) rc = mode_catchup_queue();
	else if(!strcmp(opt.mode, "fanout")) rc = mode_fanout();
	else if(!strcmp(opt.mode, "ping")) rc = mode_ping();
	else usage();
	for(i = 0; i < nclients; i++) mosquitto_destroy(clients[i]->m);
	mosquitto_lib_cleanup();
	return rc;
}
