/*
 * imchat: a chat command line for mosquitto-im, on libmosquitto.
 *
 *   imchat -u alice send bob "hi"              direct message, prints the seq
 *   imchat -u alice send -g team "hi"          group message
 *   imchat -u bob listen                       live, in order, resumes after restart
 *   imchat -u bob history u/bob --last 20      the last 20 messages of a timeline
 *   imchat -u alice group create team bob carol
 *   imchat -u alice group add|remove team dave
 *   imchat -u bob group leave team
 *   imchat -u bob group list | info team
 *   imchat -u alice edit bob 3 "hi!"           replace the text of my message u/bob #3
 *   imchat -u alice recall -g team 7           withdraw my message g/team #7
 *   imchat -u alice typing bob [on|off]        tell bob I am typing (or stopped)
 *   imchat -u alice conversations --limit 20   my latest conversations, unread counts
 *
 * Sending follows docs/PROTOCOL.md section 7, step 4: MQTT v5, QoS 1, a
 * random UUID as im-cmid, a Response Topic for the im.v1.Receipt; after a
 * lost connection the message is re-sent with the same cmid until the
 * Receipt arrives, so it is stored exactly once. `listen` runs the
 * client library (clients/c, libmosquitto-im-client): sync before live, gaps filled,
 * duplicates dropped, acks, a state file; when the server's store was
 * replaced it prints a line saying so and starts over from seq 1. It also
 * prints the others' read marks and typing, and edits and recalls as the
 * messages they are (with the seq they change).
 *
 * Errors go to stderr with a non-zero exit: 1 for a failure, 2 for usage.
 */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <mosquitto-im/client.h>

#include "im.pb-c.h"
#include "im_print.h"

#define IM_NAME_MAX 64                 /* PROTOCOL.md 1 */
#define IM_TL_MAX (IM_NAME_MAX + 2)    /* u/<name>, g/<name> */

#define RECEIPT_TOPIC "$CONTROL/im/v1/receipt"

/* ---- options ---- */

static struct {
	const char *user, *password, *host, *cafile, *client_id, *state, *group, *cmid;
	int port;
	int reply_ms;      /* how long a request may wait for the plugin's reply */
	int retry_s;       /* send: keep trying to connect this long (0: fail at once) */
	long max_msgs;     /* listen -n */
	int idle_s;        /* listen -t */
	long last_n;       /* history --last */
	long limit;        /* conversations --limit */
	long long after;   /* history --after */
	int verbose;
} opt = {.host = "127.0.0.1", .port = 1883, .reply_ms = 3000, .last_n = -1, .after = -1, .limit = -1};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("imchat: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* ---- printing messages: "HH:MM:SS timeline #seq sender: body" ---- */

/* Local time of ms since the epoch (0: now): HH:MM:SS, with the date before it. */
static void print_time(int64_t ms, bool date)
{
	time_t s = ms ? (time_t)(ms / 1000) : time(NULL);
	struct tm tm;
	char ts[32];

	localtime_r(&s, &tm);
	strftime(ts, sizeof(ts), date ? "%Y-%m-%d %H:%M:%S" : "%H:%M:%S", &tm);
	fputs(ts, stdout);
}

static void print_msg(void *ud, const struct mim_message *h)
{
	size_t i, len = h->len;
	const uint8_t *body = h->body;
	const char *me_tl = ud;

	print_time(h->ts_ms, false);
	printf(" %s #%" PRIu64 " %s", h->timeline ? h->timeline : "?", h->seq, h->sender ? h->sender : "?");
	if(h->flags & MIM_FLAG_SYSTEM){
		printf(" (system)");
	}else if(me_tl && h->to && h->timeline && !strcmp(h->timeline, me_tl) && strcmp(h->to, me_tl)){
		/* my own copy of a message I sent: name the peer */
		printf(" -> %s", !strncmp(h->to, "u/", 2) ? h->to + 2 : h->to);
	}
	/* an edit or a recall names the message it changes (in this timeline) */
	im_print_change(h->flags, h->ref_seq);
	fputs(": ", stdout);
	if(h->body_omitted){
		fputs("(body omitted: notify mode)", stdout);
	}else{
		for(i = 0; i < len; i++){
			/* one message, one line: control characters are shown as '?' */
			putchar(body[i] < 0x20 && body[i] != '\t' ? '?' : body[i]);
		}
	}
	putchar('\n');
	fflush(stdout);
}

/* ---- a short-lived MQTT v5 session for requests and sends ---- */

struct sess {
	struct mosquitto *m;
	bool connected, ever_connected, lost;
	int connack;          /* -1 until CONNACK */
	/* the one outstanding exchange */
	char want_topic[128];
	char corr[48];
	int pub_mid;
	bool pub_acked;
	int pub_reason;
	int64_t pub_acked_ms;
	uint8_t *reply;
	int reply_len;
	bool got_reply;
};

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags, const mosquitto_property *props)
{
	struct sess *s = ud;

	(void)m;
	(void)flags;
	(void)props;
	s->connack = rc;
	if(rc == 0) s->connected = s->ever_connected = true;
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc, const mosquitto_property *props)
{
	struct sess *s = ud;

	(void)m;
	(void)rc;
	(void)props;
	s->connected = false;
	s->lost = true;
}

static void on_publish(struct mosquitto *m, void *ud, int mid, int reason, const mosquitto_property *props)
{
	struct sess *s = ud;

	(void)m;
	(void)props;
	if(mid != s->pub_mid) return;
	s->pub_acked = true;
	s->pub_reason = reason;
	s->pub_acked_ms = now_ms();
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
		const mosquitto_property *props)
{
	struct sess *s = ud;
	void *corr = NULL;
	uint16_t corr_len = 0;
	bool match;

	(void)m;
	if(s->got_reply || strcmp(msg->topic, s->want_topic)) return;
	/* A reply from an earlier attempt carries another correlation id. */
	mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len, false);
	match = corr == NULL || (corr_len == strlen(s->corr) && !memcmp(corr, s->corr, corr_len));
	free(corr);
	if(!match) return;
	s->reply = malloc((size_t)msg->payloadlen + 1);
	if(s->reply == NULL) die("out of memory");
	memcpy(s->reply, msg->payload, (size_t)msg->payloadlen);
	s->reply_len = msg->payloadlen;
	s->got_reply = true;
}

static const char *connack_reason(int rc)
{
	switch(rc){
		case 4: case 5: case MQTT_RC_BAD_USERNAME_OR_PASSWORD: case MQTT_RC_NOT_AUTHORIZED:
			return "not authorised";
		default:
			return mosquitto_reason_string(rc);
	}
}

static void random_id(char *out, size_t cap)
{
	uint8_t b[16];
	FILE *f = fopen("/dev/urandom", "rb");
	size_t i;

	if(f == NULL || fread(b, 1, sizeof(b), f) != sizeof(b)){
		for(i = 0; i < sizeof(b); i++) b[i] = (uint8_t)(rand() ^ (int)(now_ms() >> i));
	}
	if(f) fclose(f);
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* UUID version 4 */
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	snprintf(out, cap, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void sess_init(struct sess *s)
{
	char id[64], r[40];

	memset(s, 0, sizeof(*s));
	s->connack = -1;
	mosquitto_lib_init();
	random_id(r, sizeof(r));
	/* Its own client id: never takes over the session of a listening device. */
	snprintf(id, sizeof(id), "imchat-%.8s-%s", opt.user, r + 24);
	s->m = mosquitto_new(id, true, s);
	if(s->m == NULL) die("out of memory");
	mosquitto_int_option(s->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_int_option(s->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_username_pw_set(s->m, opt.user, opt.password);
	if(opt.cafile && mosquitto_tls_set(s->m, opt.cafile, NULL, NULL, NULL, NULL) != MOSQ_ERR_SUCCESS){
		die("cannot use CA file %s", opt.cafile);
	}
	mosquitto_connect_v5_callback_set(s->m, on_connect);
	mosquitto_disconnect_v5_callback_set(s->m, on_disconnect);
	mosquitto_publish_v5_callback_set(s->m, on_publish);
	mosquitto_message_v5_callback_set(s->m, on_message);
}

/* One connection attempt, up to CONNACK. Returns 0, or -1 with the reason in
 * why (the broker is not there); a refused login ends the program. */
static int sess_connect(struct sess *s, char *why, size_t cap)
{
	int rc;
	int64_t deadline;

	s->connack = -1;
	s->connected = s->lost = false;
	rc = s->ever_connected ? mosquitto_reconnect(s->m) : mosquitto_connect(s->m, opt.host, opt.port, 30);
	if(rc != MOSQ_ERR_SUCCESS){
		snprintf(why, cap, "cannot connect to %s:%d: %s", opt.host, opt.port,
				rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		return -1;
	}
	deadline = now_ms() + 10000;
	while(s->connack < 0 && now_ms() < deadline){
		if(mosquitto_loop(s->m, 50, 1) != MOSQ_ERR_SUCCESS && s->connack < 0){
			snprintf(why, cap, "cannot connect to %s:%d: connection closed before CONNACK%s", opt.host,
					opt.port, opt.cafile ? " (TLS?)" : "");
			return -1;
		}
	}
	if(s->connack < 0){
		snprintf(why, cap, "cannot connect to %s:%d: no CONNACK within 10 s", opt.host, opt.port);
		return -1;
	}
	if(s->connack != 0){
		die("login as %s refused by %s:%d: %s", opt.user, opt.host, opt.port, connack_reason(s->connack));
	}
	return 0;
}

static void sess_open(struct sess *s)
{
	char why[256];

	sess_init(s);
	if(sess_connect(s, why, sizeof(why)) != 0) die("%s", why);
}

static void sess_close(struct sess *s)
{
	if(s->connected){
		mosquitto_disconnect(s->m);
		mosquitto_loop(s->m, 50, 1);
	}
	mosquitto_destroy(s->m);
	mosquitto_lib_cleanup();
}

static void no_plugin(const char *where)
{
	die("no reply from the mosquitto-im plugin on %s within %d ms: is the plugin loaded?", where, opt.reply_ms);
}

/* Publishes a request to $CONTROL/im/v1/<op> and waits for its reply.
 * Returns the reply payload (caller frees), its length in *len. */
static uint8_t *sess_request(struct sess *s, const char *op, const void *payload, size_t plen, int *len)
{
	char topic[96];
	mosquitto_property *props = NULL;
	int64_t deadline;
	uint8_t *r;

	snprintf(topic, sizeof(topic), "$CONTROL/im/v1/%s", op);
	snprintf(s->want_topic, sizeof(s->want_topic), "$CONTROL/im/v1/%s/response", op);
	random_id(s->corr, sizeof(s->corr));
	s->got_reply = false;
	mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, s->want_topic);
	mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, s->corr, (uint16_t)strlen(s->corr));
	if(mosquitto_publish_v5(s->m, &s->pub_mid, topic, (int)plen, payload, 1, false, props) != MOSQ_ERR_SUCCESS){
		die("cannot send the request to %s", topic);
	}
	mosquitto_property_free_all(&props);
	deadline = now_ms() + opt.reply_ms;
	while(!s->got_reply && now_ms() < deadline){
		if(mosquitto_loop(s->m, 50, 1) != MOSQ_ERR_SUCCESS || s->lost){
			die("lost the connection to %s:%d while waiting for the reply on %s", opt.host, opt.port, topic);
		}
	}
	if(!s->got_reply) no_plugin(topic);
	r = s->reply;
	*len = s->reply_len;
	s->reply = NULL;
	return r;
}

static const char *status_name(int st)
{
	switch(st){
		case IM__V1__STATUS__OK: return "OK";
		case IM__V1__STATUS__BAD_REQUEST: return "bad request";
		case IM__V1__STATUS__UNAUTHENTICATED: return "unauthenticated";
		case IM__V1__STATUS__FORBIDDEN: return "forbidden";
		case IM__V1__STATUS__NOT_FOUND: return "not found";
		case IM__V1__STATUS__CONFLICT: return "conflict";
		case IM__V1__STATUS__TOO_LARGE: return "too large";
		case IM__V1__STATUS__TOO_MANY: return "too many";
		case IM__V1__STATUS__INTERNAL: return "internal error";
		default: return "error";
	}
}

/* ---- send ---- */

static bool valid_name(const char *n)
{
	size_t len = strlen(n);

	return len >= 1 && len <= IM_NAME_MAX && !strpbrk(n, "/+#$");
}

/* Where a command sends: "-g GROUP" (opt.group), a timeline "u/USER" or
 * "g/GROUP", or a bare user name. Dies on an invalid name. */
static void target(const char *arg, char tl[IM_TL_MAX + 1])
{
	const char *name = opt.group ? opt.group : arg;
	char kind = opt.group ? 'g' : 'u';

	if(!opt.group && (!strncmp(arg, "u/", 2) || !strncmp(arg, "g/", 2))){
		kind = arg[0];
		name = arg + 2;
	}
	if(!valid_name(name)) die("invalid %s name '%s'", kind == 'g' ? "group" : "user", name);
	snprintf(tl, IM_TL_MAX + 1, "%c/%s", kind, name);
}

/* A message to tl: a new one (change NULL), or "im-edit" / "im-recall" of
 * message ref (its seq in tl). */
static int cmd_send(const char *tl, const char *text, const char *change, uint64_t ref)
{
	struct sess s;
	char topic[IM_TL_MAX + 64], cmid[48], refs[24], why[256] = "";
	mosquitto_property *props = NULL;
	int64_t deadline, retry_until;
	bool sent = false;
	Im__V1__Receipt *r;

	snprintf(topic, sizeof(topic), "im/%s", tl);
	if(opt.cmid) snprintf(cmid, sizeof(cmid), "%s", opt.cmid);
	else random_id(cmid, sizeof(cmid));

	sess_init(&s);
	snprintf(s.want_topic, sizeof(s.want_topic), "%s", RECEIPT_TOPIC);
	snprintf(s.corr, sizeof(s.corr), "%s", cmid);
	mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-cmid", cmid);
	if(change){
		snprintf(refs, sizeof(refs), "%" PRIu64, ref);
		mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, change, refs);
	}
	mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, RECEIPT_TOPIC);
	mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, cmid, (uint16_t)strlen(cmid));

	retry_until = now_ms() + (int64_t)opt.retry_s * 1000;
	while(!s.got_reply){
		if(!s.connected){
			if(sess_connect(&s, why, sizeof(why)) != 0){
				/* Before the first connection only --retry keeps trying;
				 * after it, a lost connection is retried for 30 s. */
				if(now_ms() >= (s.ever_connected ? retry_until + 30000 : retry_until)) die("%s", why);
				sleep_ms(250);
				continue;
			}
			retry_until = now_ms() + (int64_t)opt.retry_s * 1000;
			sent = false;
		}
		if(!sent){
			/* The same cmid on every attempt: stored once however often sent. */
			s.pub_acked = false;
			if(mosquitto_publish_v5(s.m, &s.pub_mid, topic, (int)strlen(text), text, 1, false, props)
					!= MOSQ_ERR_SUCCESS){
				s.connected = false;
				continue;
			}
			sent = true;
			if(opt.verbose) fprintf(stderr, "imchat: sent to %s with cmid %s\n", topic, cmid);
		}
		deadline = now_ms() + 30000;
		while(!s.got_reply && s.connected && now_ms() < deadline){
			if(mosquitto_loop(s.m, 50, 1) != MOSQ_ERR_SUCCESS){
				s.connected = false;
				break;
			}
			if(s.pub_acked && s.pub_reason >= 0x80){
				die("%s refused the message to %s: %s (the broker log says why)", opt.host, topic,
						s.pub_reason == MQTT_RC_NOT_AUTHORIZED ? "not authorised" : mosquitto_reason_string(s.pub_reason));
			}
			if(s.pub_acked && !s.got_reply && now_ms() - s.pub_acked_ms > opt.reply_ms){
				no_plugin(topic);
			}
		}
		if(!s.got_reply && s.connected) die("no acknowledgement for the message to %s within 30 s", topic);
		if(!s.got_reply){
			if(opt.verbose) fprintf(stderr, "imchat: connection lost, re-sending with cmid %s\n", cmid);
			retry_until = now_ms() + 30000;
			sleep_ms(100);
		}
	}
	mosquitto_property_free_all(&props);
	r = im__v1__receipt__unpack(NULL, (size_t)s.reply_len, s.reply);
	if(r == NULL) die("unreadable receipt from %s", topic);
	if(r->status != IM__V1__STATUS__OK){
		die("%s refused: %d %s: %s", topic, r->status, status_name(r->status), r->reason ? r->reason : "");
	}
	printf("%s seq %" PRIu64, r->timeline ? r->timeline : tl, r->seq);
	if(r->has_own_seq) printf(" (own copy u/%s seq %" PRIu64 ")", opt.user, r->own_seq);
	if(r->duplicate) printf(" duplicate");
	if(change) printf(" (%s of #%" PRIu64 ")", change + 3, ref);
	putchar('\n');
	im__v1__receipt__free_unpacked(r, NULL);
	free(s.reply);
	sess_close(&s);
	return 0;
}

/* ---- history ---- */

static Im__V1__SyncBatch *sync_once(struct sess *s, const char *tl, uint64_t after, uint32_t limit)
{
	Im__V1__SyncRequest q = IM__V1__SYNC_REQUEST__INIT;
	uint8_t buf[128], *reply;
	int len;
	Im__V1__SyncBatch *b;

	q.timeline = (char *)tl;
	q.has_after_seq = 1;
	q.after_seq = after;
	q.has_limit = 1;
	q.limit = limit;
	reply = sess_request(s, "sync", buf, im__v1__sync_request__pack(&q, buf), &len);
	b = im__v1__sync_batch__unpack(NULL, (size_t)len, reply);
	free(reply);
	if(b == NULL) die("unreadable sync reply for %s", tl);
	if(b->status != IM__V1__STATUS__OK){
		die("sync %s refused: %d %s: %s", tl, b->status, status_name(b->status), b->reason ? b->reason : "");
	}
	return b;
}

static int cmd_history(const char *tl_arg)
{
	struct sess s;
	char tl[IM_TL_MAX + 1], me[IM_TL_MAX + 1];
	uint64_t after = 0;
	Im__V1__SyncBatch *b;
	size_t i;
	long shown = 0;

	/* "u/bob", "g/team", or a bare name: a group if it is not me */
	if(!strncmp(tl_arg, "u/", 2) || !strncmp(tl_arg, "g/", 2)) snprintf(tl, sizeof(tl), "%s", tl_arg);
	else if(!strcmp(tl_arg, opt.user)) snprintf(tl, sizeof(tl), "u/%s", tl_arg);
	else snprintf(tl, sizeof(tl), "g/%s", tl_arg);
	snprintf(me, sizeof(me), "u/%s", opt.user);
	sess_open(&s);
	if(opt.after >= 0){
		after = (uint64_t)opt.after;
	}else if(opt.last_n >= 0){
		b = sync_once(&s, tl, 0, 1); /* learns head_seq */
		after = b->head_seq > (uint64_t)opt.last_n ? b->head_seq - (uint64_t)opt.last_n : 0;
		im__v1__sync_batch__free_unpacked(b, NULL);
	}
	for(;;){
		b = sync_once(&s, tl, after, 500);
		if(b->first_seq > after + 1 && opt.verbose){
			fprintf(stderr, "imchat: %s: seqs %" PRIu64 "..%" PRIu64 " are gone (retention)\n", tl, after + 1,
					b->first_seq - 1);
		}
		for(i = 0; i < b->n_frames; i++){
			/* the library's frame reader: bodies deflated by the plugin
			 * (compress_min_bytes) come inflated */
			struct mim_frame *f = mim_frame_parse(b->frames[i].data, b->frames[i].len);

			if(f == NULL){
				fprintf(stderr, "imchat: %s: a frame this imchat cannot read (or that does not inflate)\n", tl);
				continue;
			}
			print_msg(me, &f->msg);
			after = f->msg.seq;
			shown++;
			mim_frame_free(f);
		}
		if(!b->has_more || b->n_frames == 0){
			im__v1__sync_batch__free_unpacked(b, NULL);
			break;
		}
		im__v1__sync_batch__free_unpacked(b, NULL);
	}
	sess_close(&s);
	return 0;
}

/* ---- groups ---- */

static char *default_state_path(void)
{
	static char path[4096];
	const char *home = getenv("HOME");
	char dir[4000];

	if(opt.state) return (char *)opt.state;
	if(home == NULL || !*home) home = ".";
	snprintf(dir, sizeof(dir), "%s/.imchat", home);
	mkdir(dir, 0700);
	snprintf(path, sizeof(path), "%s/%s@%s:%d.state", dir, opt.user, opt.host, opt.port);
	return path;
}

/* `last` of a timeline in the state file of `listen`, or -1 if unknown or
 * counted in another store than store_id (0: the server did not say). */
static long long state_last(const char *tl, uint64_t store_id)
{
	FILE *f = fopen(default_state_path(), "r");
	char name[IM_TL_MAX + 2], line[256], *end;
	unsigned long long last, id;
	long long r = -1;

	if(f == NULL) return -1;
	while(fgets(line, sizeof(line), f)){
		if(!strncmp(line, "store ", 6)){
			id = strtoull(line + 6, &end, 16);
			if(store_id && end > line + 6 && id != store_id){
				r = -1; /* the server's history was replaced since: listen starts over */
				break;
			}
		}else if(sscanf(line, "%66s %llu", name, &last) == 2 && !strcmp(name, tl)){
			r = (long long)last;
		}
	}
	fclose(f);
	return r;
}

static Im__V1__GroupResponse *group_request(struct sess *s, const char *op, const char *group, char **members, int n)
{
	Im__V1__GroupRequest q = IM__V1__GROUP_REQUEST__INIT;
	Im__V1__GroupResponse *r;
	uint8_t *buf, *reply;
	size_t plen;
	int len;

	q.op = (char *)op;
	q.group = (char *)group;
	q.members = members;
	q.n_members = (size_t)n;
	plen = im__v1__group_request__get_packed_size(&q);
	buf = malloc(plen + 1);
	if(buf == NULL) die("out of memory");
	im__v1__group_request__pack(&q, buf);
	reply = sess_request(s, "group", buf, plen, &len);
	free(buf);
	r = im__v1__group_response__unpack(NULL, (size_t)len, reply);
	free(reply);
	if(r == NULL) die("unreadable group reply");
	if(r->status != IM__V1__STATUS__OK){
		die("group %s%s%s: %d %s: %s", op, group ? " " : "", group ? group : "", r->status, status_name(r->status),
				r->reason ? r->reason : "");
	}
	return r;
}

static int cmd_group(int argc, char **argv)
{
	struct sess s;
	Im__V1__GroupResponse *r;
	const char *op;
	size_t i;

	if(argc < 1) die("group: create|add|remove|leave|info <group> [users...], or group list");
	op = argv[0];
	if(!strcmp(op, "list")){
		if(argc != 1) die("usage: group list");
	}else if(!strcmp(op, "create") || !strcmp(op, "add") || !strcmp(op, "remove")){
		if(argc < 2 || (strcmp(op, "create") && argc < 3)) die("usage: group %s <group> user...", op);
	}else if(!strcmp(op, "leave") || !strcmp(op, "info")){
		if(argc != 2) die("usage: group %s <group>", op);
	}else{
		die("unknown group operation '%s' (create, add, remove, leave, list, info)", op);
	}
	sess_open(&s);
	r = group_request(&s, op, argc > 1 ? argv[1] : NULL, argv + 2, argc > 2 ? argc - 2 : 0);
	if(!strcmp(op, "list")){
		for(i = 0; i < r->n_groups; i++){
			char tl[IM_TL_MAX + 8];
			long long last;
			uint64_t unread = r->groups[i]->unread;

			snprintf(tl, sizeof(tl), "g/%s", r->groups[i]->name);
			/* unread as this machine's `listen` sees it, if it ran */
			last = state_last(tl, r->has_store_id ? r->store_id : 0);
			if(last >= 0) unread = r->groups[i]->head_seq > (uint64_t)last ? r->groups[i]->head_seq - (uint64_t)last : 0;
			printf("%s head %" PRIu64 " unread %" PRIu64 "\n", r->groups[i]->name, r->groups[i]->head_seq, unread);
		}
	}else if(!strcmp(op, "info")){
		printf("%s owner %s head %" PRIu64 "\nmembers:", r->group ? r->group : argv[1], r->owner ? r->owner : "?",
				r->head_seq);
		for(i = 0; i < r->n_members; i++) printf(" %s", r->members[i]);
		putchar('\n');
	}else{
		printf("%s %s: ok", op, argv[1]);
		if(r->has_seq) printf(" (g/%s seq %" PRIu64 ")", argv[1], r->seq);
		putchar('\n');
	}
	im__v1__group_response__free_unpacked(r, NULL);
	sess_close(&s);
	return 0;
}

/* ---- edit, recall, typing, conversations ---- */

/* A message is changed by its seq in the timeline it was sent to. In my
 * own inbox, a seq names my copy of a message I sent to someone (what
 * listen shows): it is changed through the original, in the peer's inbox
 * (the copy's `to`, at the copy's peer_seq). */
static void through_copy(char tl[IM_TL_MAX + 1], uint64_t *ref)
{
	struct sess s;
	char me[IM_TL_MAX + 1];
	Im__V1__SyncBatch *b;
	struct mim_frame *f = NULL;
	const struct mim_message *h;

	snprintf(me, sizeof(me), "u/%s", opt.user);
	if(strcmp(tl, me)) return;
	sess_open(&s);
	b = sync_once(&s, me, *ref - 1, 1);
	if(b->n_frames == 0 || (f = mim_frame_parse(b->frames[0].data, b->frames[0].len)) == NULL){
		die("no message #%" PRIu64 " in %s", *ref, me);
	}
	h = &f->msg;
	if(h->seq == *ref && h->sender && !strcmp(h->sender, opt.user) && h->to && strcmp(h->to, me) && h->peer_seq){
		snprintf(tl, IM_TL_MAX + 1, "%s", h->to);
		*ref = h->peer_seq;
	}
	mim_frame_free(f);
	im__v1__sync_batch__free_unpacked(b, NULL);
	sess_close(&s);
}

static int cmd_change(const char *arg, const char *seq, const char *text)
{
	char tl[IM_TL_MAX + 1], *end;
	uint64_t ref;

	target(arg, tl);
	errno = 0;
	ref = strtoull(seq, &end, 10);
	if(*seq < '1' || *seq > '9' || *end || errno) die("invalid seq '%s': a message's seq, from 1", seq);
	through_copy(tl, &ref);
	return cmd_send(tl, text ? text : "", text ? "im-edit" : "im-recall", ref);
}

static int cmd_typing(const char *arg, const char *state)
{
	Im__V1__TypingRequest q = IM__V1__TYPING_REQUEST__INIT;
	Im__V1__Response *r;
	struct sess s;
	char tl[IM_TL_MAX + 1];
	uint8_t buf[IM_TL_MAX + 16], *reply;
	int len;

	target(arg, tl);
	if(state && strcmp(state, "on") && strcmp(state, "off")) die("typing: on or off, not '%s'", state);
	q.timeline = tl;
	q.has_typing = 1;
	q.typing = state == NULL || !strcmp(state, "on");
	sess_open(&s);
	reply = sess_request(&s, "typing", buf, im__v1__typing_request__pack(&q, buf), &len);
	r = im__v1__response__unpack(NULL, (size_t)len, reply);
	free(reply);
	if(r == NULL) die("unreadable typing reply");
	if(r->status != IM__V1__STATUS__OK){
		die("typing %s: %d %s: %s", tl, r->status, status_name(r->status), r->reason ? r->reason : "");
	}
	printf("%s: %s\n", tl, q.typing ? "typing" : "stopped typing");
	im__v1__response__free_unpacked(r, NULL);
	sess_close(&s);
	return 0;
}

/* "u/bob unread 2 read #3 last #5 2026-11-30 13:13:13 alice: text": read is
 * how far the peer read its inbox u/bob (the seqs `send` prints; absent
 * while it read nothing); last is the latest message, its seq in the
 * timeline I read (u/<me>, g/<group>). */
static void print_conv(const Im__V1__Conversation *c)
{
	printf("%s unread %" PRIu64, c->timeline ? c->timeline : "?", c->unread);
	if(c->peer_read_seq) printf(" read #%" PRIu64, c->peer_read_seq);
	printf(" last #%" PRIu64 " ", c->last_seq);
	print_time(c->last_ts_ms, true);
	printf(" %s", c->last_sender ? c->last_sender : "?");
	if(c->last_flags & IM__V1__HEADER_FLAG__FLAG_SYSTEM) printf(" (system)");
	im_print_change(c->last_flags, 0);
	printf(": %s\n", c->last_preview ? c->last_preview : "(no preview)");
}

/* The latest first, all of them or --limit; pages of up to 200 (the
 * plugin's maximum), each asked after the one before it. */
static int cmd_conversations(void)
{
	Im__V1__ConversationsRequest q;
	Im__V1__ConversationsResponse *r;
	struct sess s;
	char before_tl[IM_TL_MAX + 1] = "";
	int64_t before_ts = 0;
	uint8_t buf[IM_TL_MAX + 64], *reply;
	long shown = 0;
	bool more = true;
	size_t i;
	int len;

	sess_open(&s);
	while(more && (opt.limit < 0 || shown < opt.limit)){
		im__v1__conversations_request__init(&q);
		q.has_limit = 1;
		q.limit = opt.limit < 0 || opt.limit - shown > 200 ? 200 : (uint32_t)(opt.limit - shown);
		if(before_tl[0]){
			q.has_before_ts_ms = 1;
			q.before_ts_ms = before_ts;
			q.before_timeline = before_tl;
		}
		reply = sess_request(&s, "conversations", buf, im__v1__conversations_request__pack(&q, buf), &len);
		r = im__v1__conversations_response__unpack(NULL, (size_t)len, reply);
		free(reply);
		if(r == NULL) die("unreadable conversations reply");
		if(r->status != IM__V1__STATUS__OK){
			die("conversations: %d %s: %s", r->status, status_name(r->status), r->reason ? r->reason : "");
		}
		for(i = 0; i < r->n_conversations; i++) print_conv(r->conversations[i]);
		shown += (long)r->n_conversations;
		more = r->has_more && r->n_conversations > 0;
		if(more){
			before_ts = r->conversations[r->n_conversations - 1]->last_ts_ms;
			snprintf(before_tl, sizeof(before_tl), "%s", r->conversations[r->n_conversations - 1]->timeline);
		}
		im__v1__conversations_response__free_unpacked(r, NULL);
	}
	sess_close(&s);
	return 0;
}

/* ---- listen ---- */

static volatile sig_atomic_t g_stop;
static long g_shown;
static int64_t g_last_ms;

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static void print_listened(void *ud, const struct mim_message *m)
{
	print_msg(ud, m);
	g_shown++;
	g_last_ms = now_ms();
}

/* Edits and recalls are messages with seqs of their own: shown as such,
 * naming the seq they change. */
static void print_change(void *ud, const struct mim_message *m, const struct mim_message *orig)
{
	(void)orig;
	print_listened(ud, m);
}

/* The reference client forgot every seq and delivers again from seq 1 (-v
 * prints the store ids). */
/* Others' read marks and typing ("HH:MM:SS u/bob bob read up to #3",
 * "HH:MM:SS u/alice alice is typing"); mine (from another device) are not
 * news. A mark learned on connect has no time: now. */
static void print_read(void *ud, const struct mim_read *r)
{
	(void)ud;
	if(r->user == NULL || !strcmp(r->user, opt.user)) return;
	print_time(r->ts_ms, false);
	printf(" %s %s read up to #%" PRIu64 "\n", r->timeline, r->user, r->seq);
	fflush(stdout);
}

static void print_typing(void *ud, const struct mim_typing *t)
{
	(void)ud;
	if(!strcmp(t->user, opt.user)) return;
	print_time(t->ts_ms, false);
	printf(" %s %s %s\n", t->timeline, t->user, t->typing ? "is typing" : "stopped typing");
	fflush(stdout);
}

static void on_error(void *ud, int result, const char *what)
{
	(void)ud;
	(void)result;
	fprintf(stderr, "imchat: %s\n", what);
}

static void on_reset(void *ud, uint64_t old_id, uint64_t new_id)
{
	(void)ud;
	(void)old_id;
	(void)new_id;
	printf("-- the server's message store was replaced: starting over --\n");
	fflush(stdout);
}

static int cmd_listen(void)
{
	struct sess s;
	Im__V1__GroupResponse *r;
	struct mim_options o;
	struct mim_client *c;
	char idbuf[160], host[64] = "", me[IM_TL_MAX + 1];
	size_t i;
	int rc;

	/* One request first: a clear error if the broker, the login or the
	 * plugin is missing. The client then follows the groups itself (the
	 * list on every connect, and the membership news while it runs). */
	sess_open(&s);
	r = group_request(&s, "list", NULL, NULL, 0);
	sess_close(&s);

	mim_options_init(&o);
	o.host = opt.host;
	o.port = opt.port;
	o.user = opt.user;
	o.password = opt.password;
	o.cafile = opt.cafile;
	o.state_path = default_state_path();
	o.verbose = opt.verbose;
	o.save_interval_ms = 0;      /* the state file after every message: a killed listen resumes exactly */
	o.cb.on_message = print_listened;
	o.cb.on_edit = print_change;
	o.cb.on_recall = print_change;
	o.cb.on_read = print_read;
	o.cb.on_typing = print_typing;
	/* membership: the group's system message says it (its first line) */
	o.cb.on_reset = on_reset;
	o.cb.on_error = on_error;
	snprintf(me, sizeof(me), "u/%s", opt.user);
	o.userdata = me;
	if(opt.client_id){
		o.client_id = opt.client_id;
	}else{
		/* a device is its client id: stable per user and machine */
		gethostname(host, sizeof(host) - 1);
		snprintf(idbuf, sizeof(idbuf), "imchat-%s@%s", opt.user, host);
		o.client_id = idbuf;
	}
	c = mim_new(&o, &rc);
	if(c == NULL) die("cannot create the client: %s", mim_strerror(rc));
	if(opt.verbose){
		fprintf(stderr, "imchat: listening as %s (client id %s, state %s) to u/%s", opt.user, o.client_id,
				o.state_path, opt.user);
		for(i = 0; i < r->n_groups; i++) fprintf(stderr, " g/%s", r->groups[i]->name);
		fputc('\n', stderr);
	}
	im__v1__group_response__free_unpacked(r, NULL);
	if(mim_connect(c) != MIM_OK) die("cannot connect to %s:%d: %s", opt.host, opt.port, strerror(errno));
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	g_last_ms = now_ms();
	rc = MIM_OK;
	while(!g_stop){
		rc = mim_loop(c, 100);
		if(rc != MIM_OK) break;
		if(opt.max_msgs && g_shown >= opt.max_msgs) break;
		if(opt.idle_s && mim_caught_up(c) && now_ms() - g_last_ms > (int64_t)opt.idle_s * 1000) break;
	}
	mim_destroy(c);
	return rc == MIM_OK ? 0 : 1;
}

/* ---- main ---- */

static void usage(int code)
{
	fprintf(code ? stderr : stdout,
			"usage: imchat -u user [-P password] [-h host] [-p port] [--cafile file] COMMAND\n"
			"  send USER TEXT            direct message; prints the stored seq\n"
			"  send -g GROUP TEXT        group message\n"
			"       [--cmid ID]          your own message id (re-running with it stores nothing twice)\n"
			"       [--retry SECONDS]    keep trying to connect this long (default: fail at once)\n"
			"  listen [-n N] [-t IDLE]   follow your inbox and groups: \"HH:MM:SS timeline #seq sender: body\"\n"
			"         [-s STATE] [-i CLIENT_ID]   (state default ~/.imchat/USER@HOST:PORT.state)\n"
			"                            and the others' \"... USER read up to #SEQ\", \"... USER is typing\"\n"
			"  history TIMELINE [--last N | --after SEQ]   u/USER, g/GROUP or a group name\n"
			"  group create GROUP [USER...] | add GROUP USER... | remove GROUP USER...\n"
			"  group leave GROUP | info GROUP | list\n"
			"  edit USER SEQ TEXT        replace the text of your message SEQ (the seq send printed)\n"
			"  edit -g GROUP SEQ TEXT    (USER may be u/USER or g/GROUP; in u/YOU, SEQ is your copy's)\n"
			"  recall USER SEQ | recall -g GROUP SEQ   withdraw your message (a group's owner: anyone's)\n"
			"  typing USER [on|off] | typing -g GROUP [on|off]   say you are typing, or stopped\n"
			"  conversations [--limit N] your conversations, latest first: unread, read marks, last message\n"
			"options: --timeout MS  wait for a reply of the plugin (default 3000); -v verbose\n");
	exit(code);
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{"cafile", required_argument, NULL, 'C'}, {"last", required_argument, NULL, 'L'},
		{"after", required_argument, NULL, 'A'}, {"cmid", required_argument, NULL, 'M'},
		{"retry", required_argument, NULL, 'R'}, {"timeout", required_argument, NULL, 'T'},
		{"limit", required_argument, NULL, 'N'},
		{"help", no_argument, NULL, 'H'}, {NULL, 0, NULL, 0}};
	char *pos[128] = {0};
	int npos = 0, ch;

	/* Options may come before or after the command (GNU permutation);
	 * "--" ends them, for a text that starts with '-'. */
	while(optind < argc){
		ch = getopt_long(argc, argv, "-u:P:h:p:i:s:g:n:t:v", longs, NULL);
		if(ch == -1){
			while(optind < argc && npos < 128) pos[npos++] = argv[optind++];
			break;
		}
		switch(ch){
			case 1: if(npos < 128) pos[npos++] = optarg; break;
			case 'u': opt.user = optarg; break;
			case 'P': opt.password = optarg; break;
			case 'h': opt.host = optarg; break;
			case 'p': opt.port = atoi(optarg); break;
			case 'i': opt.client_id = optarg; break;
			case 's': opt.state = optarg; break;
			case 'g': opt.group = optarg; break;
			case 'n': opt.max_msgs = atol(optarg); break;
			case 't': opt.idle_s = atoi(optarg); break;
			case 'v': opt.verbose = 1; break;
			case 'C': opt.cafile = optarg; break;
			case 'L': opt.last_n = atol(optarg); break;
			case 'A': opt.after = atoll(optarg); break;
			case 'M': opt.cmid = optarg; break;
			case 'R': opt.retry_s = atoi(optarg); break;
			case 'T': opt.reply_ms = atoi(optarg); break;
			case 'N': opt.limit = atol(optarg); if(opt.limit < 1) die("--limit must be 1 or more"); break;
			case 'H': usage(0); break;
			default: usage(2);
		}
	}
	if(npos < 1) usage(2);
	if(opt.user == NULL){
		fprintf(stderr, "imchat: -u user is required\n");
		usage(2);
	}
	if(opt.port <= 0 || opt.port > 65535) die("invalid port");
	if(opt.reply_ms <= 0) opt.reply_ms = 3000;
	if(opt.cmid && (!*opt.cmid || strlen(opt.cmid) > 36)) die("--cmid must be 1..36 bytes");
	/* With -g GROUP, the group takes the place of the USER argument. */
	if(!strcmp(pos[0], "send")){
		char tl[IM_TL_MAX + 1];

		if(npos != (opt.group ? 2 : 3)) die("usage: send USER TEXT, or send -g GROUP TEXT (quote the text)");
		target(pos[1], tl);
		return cmd_send(tl, pos[npos - 1], NULL, 0);
	}
	if(!strcmp(pos[0], "edit")){
		if(npos != (opt.group ? 3 : 4)) die("usage: edit USER SEQ TEXT, or edit -g GROUP SEQ TEXT (quote the text)");
		return cmd_change(pos[1], pos[npos - 2], pos[npos - 1]);
	}
	if(!strcmp(pos[0], "recall")){
		if(npos != (opt.group ? 2 : 3)) die("usage: recall USER SEQ, or recall -g GROUP SEQ");
		return cmd_change(pos[1], pos[npos - 1], NULL);
	}
	if(!strcmp(pos[0], "typing")){
		int first = opt.group ? 1 : 2;

		if(npos < first || npos > first + 1) die("usage: typing USER [on|off], or typing -g GROUP [on|off]");
		return cmd_typing(pos[1], npos > first ? pos[first] : NULL);
	}
	if(!strcmp(pos[0], "conversations")){
		if(npos != 1) die("usage: conversations [--limit N]");
		return cmd_conversations();
	}
	if(!strcmp(pos[0], "listen")){
		if(npos != 1) usage(2);
		return cmd_listen();
	}
	if(!strcmp(pos[0], "history")){
		if(npos != 2) die("usage: history TIMELINE [--last N | --after SEQ]");
		return cmd_history(pos[1]);
	}
	if(!strcmp(pos[0], "group")) return cmd_group(npos - 1, pos + 1);
	fprintf(stderr, "imchat: unknown command '%s'\n", pos[0]);
	usage(2);
}
