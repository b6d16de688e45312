/*
 * libmosquitto-im-client: the client algorithm of docs/PROTOCOL.md,
 * section 7, on libmosquitto (MQTT v5). See include/mosquitto-im/client.h.
 *
 * One client follows a set of timelines (its inbox u/<user> and its
 * groups). For each it keeps `last`, the highest seq delivered, persisted
 * with the store id it counts in. Frames from live delivery and from sync
 * batches go through one path that delivers seq == last+1, drops seq <=
 * last and holds seq > last+1 until a sync fills the gap. Messages sent
 * are kept (and persisted) until their Receipt, and sent again with the
 * same cmid after every reconnect. Everything runs in mim_loop's thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "internal.h"

#define CONTROL "$CONTROL/im/v1/"
#define RECEIPT_TOPIC CONTROL "receipt"
#define SEND_WINDOW 10        /* messages out without a PUBACK */
#define SYNC_WINDOW 8         /* sync requests out at once (the plugin's sync_inflight is 16) */
#define RETRY_MS 1000         /* after a TOO_MANY without retry_after_ms, a failed `list` */
#define ACK_EVERY 50          /* messages delivered: ack now */
#define MARKS_CONVS 200       /* conversations asked for their peers' read marks on connect */
#define CONNACK_WAIT_MS 10000

struct held {
	uint64_t seq;
	uint8_t *frame;
	size_t len;
};

/* A message kept for edits and recalls to apply to. */
struct kept {
	struct mim_message m;
	char *strs;               /* timeline, sender, cmid, to, content type, in one block */
	uint8_t *body;
};

struct timeline {
	char name[MIM_TL_MAX + 1];
	uint64_t last;            /* highest seq delivered */
	uint64_t seen;            /* highest seq to ack */
	uint64_t acked;
	bool syncing;             /* catching up: live frames are held */
	bool want;                /* a sync request from `last` is to be sent */
	char req[40];             /* the correlation of the sync out; "" none */
	uint64_t req_after;
	int64_t req_at, retry_at;
	bool want_reads;
	struct held *held;        /* sorted by seq */
	size_t n_held, cap_held;
	struct kept *hist;        /* a ring of opt.history */
	size_t n_hist, hist_next;
};

struct cursor {
	char *timeline;
	uint64_t last;
};

struct psend {
	char cmid[MIM_CMID_MAX + 1];
	char timeline[MIM_TL_MAX + 1];
	int kind;
	uint64_t ref_seq;
	char *content_type;
	int64_t expiry_s;
	uint8_t *body;
	size_t len;
	int mid;                  /* of this connection's publish; 0: not sent on it */
	bool sent, acked;
	mim_receipt_fn cb;
	void *ud;
};

enum req_kind { R_USER, R_LIST, R_MARKS, R_READS, R_REFRESH };

struct req {
	char corr[40];
	char op[16];
	enum req_kind kind;
	mim_reply_fn cb;
	void *ud;
	int64_t deadline;
	char timeline[MIM_TL_MAX + 1];
};

struct mark {
	char *timeline;
	char *user;
	uint64_t seq;
};

struct mim_loader {
	struct mim_client *c;
};

struct mim_client {
	struct mim_options opt;
	char *host, *user, *password, *prefix, *cafile, *client_id;
	char me[MIM_TL_MAX + 1];
	bool id_made;             /* the client id is ours: persisted */
	struct mim_persist persist;
	bool has_persist;
	bool no_save;
	struct mosquitto *mosq;
	char run[12];
	unsigned long n_corr;

	struct timeline **tls;
	size_t n_tls;
	char **explicit_groups;
	struct cursor *cursors;   /* every timeline's last, also those not followed */
	size_t n_cursors;
	struct psend **pending;   /* send order */
	size_t n_pending;
	int inflight;
	struct req *reqs;
	size_t n_reqs;
	struct mark *marks;
	size_t n_marks;

	uint64_t store_id;
	uint64_t retired[8];
	size_t n_retired;
	bool store_ok;            /* this connection showed the store is still ours: acks may go */

	bool sock_up;             /* mosquitto_connect succeeded, CONNACK may come */
	bool connected;           /* CONNACK 0 */
	bool ever_connected, started, stop;
	int refused;              /* CONNACK reason of a refused first login */
	bool groups_known;
	int64_t groups_retry_at;
	int64_t connect_at, reconnect_at;
	int backoff;
	int reads_out;            /* is a `reads` of the marks on connect out */
	int64_t reads_retry_at;
	size_t rr;
	long unacked;
	int64_t ack_due;          /* 0: none */
	bool dirty;
	int64_t last_save;
	enum mim_state state;
	int in_cb;
};

/* ---- small helpers ---- */

static void logv(struct mim_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logv(struct mim_client *c, const char *fmt, ...)
{
	va_list ap;

	if(!c->opt.verbose) return;
	fputs("mosquitto-im-client: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void error(struct mim_client *c, int result, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void error(struct mim_client *c, int result, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	logv(c, "%s", buf);
	if(c->opt.cb.on_error) c->opt.cb.on_error(c->opt.userdata, result, buf);
}

static char *dupstr(const char *s)
{
	return s ? strdup(s) : NULL;
}

static bool grow(void **arr, size_t n, size_t *cap, size_t elem)
{
	void *p;
	size_t nc;

	if(n < *cap) return true;
	nc = *cap ? *cap * 2 : 8;
	p = realloc(*arr, nc * elem);
	if(p == NULL) return false;
	*arr = p;
	*cap = nc;
	return true;
}

/* "bob" -> "u/bob"; u/..., g/... as they are. false: not valid. */
static bool to_timeline(const char *in, char out[MIM_TL_MAX + 1])
{
	if(in == NULL) return false;
	if(!strncmp(in, "u/", 2) || !strncmp(in, "g/", 2)){
		if(!mim__valid_timeline(in)) return false;
		snprintf(out, MIM_TL_MAX + 1, "%s", in);
		return true;
	}
	if(!mim__valid_name(in)) return false;
	snprintf(out, MIM_TL_MAX + 1, "u/%s", in);
	return true;
}

static void next_corr(struct mim_client *c, char out[40], char kind)
{
	snprintf(out, 40, "%s/%c/%lu", c->run, kind, ++c->n_corr);
}

/* ---- version, errors ---- */

int mim_version(int *major, int *minor, int *patch)
{
	if(major) *major = MOSQUITTO_IM_CLIENT_VERSION_MAJOR;
	if(minor) *minor = MOSQUITTO_IM_CLIENT_VERSION_MINOR;
	if(patch) *patch = MOSQUITTO_IM_CLIENT_VERSION_PATCH;
	return MOSQUITTO_IM_CLIENT_VERSION;
}

const char *mim_strerror(int r)
{
	switch(r){
		case MIM_OK: return "ok";
		case MIM_BAD_REQUEST: return "bad request";
		case MIM_UNAUTHENTICATED: return "unauthenticated";
		case MIM_FORBIDDEN: return "forbidden";
		case MIM_NOT_FOUND: return "not found";
		case MIM_CONFLICT: return "conflict";
		case MIM_TOO_LARGE: return "too large";
		case MIM_TOO_MANY: return "too many";
		case MIM_INTERNAL: return "internal error";
		case MIM_ERR_INVAL: return "invalid argument";
		case MIM_ERR_NOMEM: return "out of memory";
		case MIM_ERR_NOT_CONNECTED: return "not connected";
		case MIM_ERR_CONN_LOST: return "connection lost before the reply";
		case MIM_ERR_TIMEOUT: return "no reply in time (is the mosquitto-im plugin loaded?)";
		case MIM_ERR_BROKER: return "refused by the broker";
		case MIM_ERR_STORE: return "the client's state could not be loaded or saved";
		case MIM_ERR_CLOSED: return "client closed";
		case MIM_ERR_LOGIN: return "login refused";
		case MIM_ERR_CONNECT: return "cannot connect";
		case MIM_ERR_FRAME: return "not a frame";
		default: return "error";
	}
}

/* ---- cursors and persistence ---- */

static struct cursor *cursor_find(struct mim_client *c, const char *tl)
{
	size_t i;

	for(i = 0; i < c->n_cursors; i++){
		if(!strcmp(c->cursors[i].timeline, tl)) return &c->cursors[i];
	}
	return NULL;
}

static int cursor_set(struct mim_client *c, const char *tl, uint64_t last)
{
	struct cursor *cu = cursor_find(c, tl), *grown;

	if(cu){
		cu->last = last;
		return 0;
	}
	grown = realloc(c->cursors, (c->n_cursors + 1) * sizeof(*grown));
	if(grown == NULL) return MIM_ERR_NOMEM;
	c->cursors = grown;
	c->cursors[c->n_cursors].timeline = strdup(tl);
	if(c->cursors[c->n_cursors].timeline == NULL) return MIM_ERR_NOMEM;
	c->cursors[c->n_cursors++].last = last;
	return 0;
}

static void cursor_drop(struct mim_client *c, const char *tl)
{
	struct cursor *cu = cursor_find(c, tl);

	if(cu == NULL) return;
	free(cu->timeline);
	*cu = c->cursors[--c->n_cursors];
}

static int save(struct mim_client *c)
{
	struct mim_saved s = {0};
	struct mim_pending *pd = NULL;
	size_t i;
	int rc;

	if(!c->has_persist) return 0;
	if(c->n_pending){
		pd = calloc(c->n_pending, sizeof(*pd));
		if(pd == NULL) return MIM_ERR_NOMEM;
	}
	for(i = 0; i < c->n_pending; i++){
		struct psend *p = c->pending[i];

		pd[i].cmid = p->cmid;
		pd[i].timeline = p->timeline;
		pd[i].kind = p->kind;
		pd[i].ref_seq = p->ref_seq;
		pd[i].content_type = p->content_type;
		pd[i].expiry_s = p->expiry_s;
		pd[i].body = p->body;
		pd[i].len = p->len;
	}
	s.client_id = c->id_made ? c->client_id : NULL;
	s.store_id = c->store_id;
	s.cursors = (const struct mim_cursor *)c->cursors; /* the same layout: {const char *, uint64_t} */
	s.n_cursors = c->n_cursors;
	s.pending = pd;
	s.n_pending = c->n_pending;
	rc = c->persist.save(c->persist.ctx, &s);
	free(pd);
	c->last_save = mim__now_ms();
	if(rc == 0) c->dirty = false;
	else error(c, MIM_ERR_STORE, "cannot save the client's state (%s)", mim_strerror(rc));
	return rc;
}

int mim_loader_client_id(struct mim_loader *l, const char *id)
{
	struct mim_client *c = l->c;

	if(id == NULL || !*id) return 0;
	if(c->client_id == NULL){
		c->client_id = strdup(id);
		if(c->client_id == NULL) return MIM_ERR_NOMEM;
		c->id_made = true;
	}
	return 0;
}

int mim_loader_store_id(struct mim_loader *l, uint64_t id)
{
	l->c->store_id = id;
	return 0;
}

int mim_loader_cursor(struct mim_loader *l, const char *tl, uint64_t last)
{
	if(!mim__valid_timeline(tl)) return MIM_ERR_INVAL;
	return cursor_set(l->c, tl, last);
}

static struct psend *psend_new(const char *cmid, const char *tl, int kind, uint64_t ref, const char *ct,
		int64_t expiry, const void *body, size_t len)
{
	struct psend *p = calloc(1, sizeof(*p));

	if(p == NULL) return NULL;
	snprintf(p->cmid, sizeof(p->cmid), "%s", cmid);
	snprintf(p->timeline, sizeof(p->timeline), "%s", tl);
	p->kind = kind;
	p->ref_seq = ref;
	p->expiry_s = expiry;
	p->content_type = dupstr(ct);
	p->body = malloc(len ? len : 1);
	if(p->body == NULL || (ct && p->content_type == NULL)){
		free(p->body);
		free(p->content_type);
		free(p);
		return NULL;
	}
	if(len) memcpy(p->body, body, len);
	p->len = len;
	return p;
}

static void psend_free(struct psend *p)
{
	if(p == NULL) return;
	free(p->content_type);
	free(p->body);
	free(p);
}

static int pending_add(struct mim_client *c, struct psend *p)
{
	struct psend **grown = realloc(c->pending, (c->n_pending + 1) * sizeof(*grown));

	if(grown == NULL) return MIM_ERR_NOMEM;
	c->pending = grown;
	c->pending[c->n_pending++] = p;
	return 0;
}

int mim_loader_pending(struct mim_loader *l, const struct mim_pending *pd)
{
	struct psend *p;

	if(pd->cmid == NULL || !*pd->cmid || strlen(pd->cmid) > MIM_CMID_MAX || !mim__valid_timeline(pd->timeline)){
		return MIM_ERR_INVAL;
	}
	p = psend_new(pd->cmid, pd->timeline, pd->kind, pd->ref_seq, pd->content_type, pd->expiry_s, pd->body, pd->len);
	if(p == NULL) return MIM_ERR_NOMEM;
	if(pending_add(l->c, p) != 0){
		psend_free(p);
		return MIM_ERR_NOMEM;
	}
	return 0;
}

/* ---- timelines ---- */

static struct timeline *find_tl(const struct mim_client *c, const char *name)
{
	size_t i;

	for(i = 0; name && i < c->n_tls; i++){
		if(!strcmp(c->tls[i]->name, name)) return c->tls[i];
	}
	return NULL;
}

static void free_held(struct timeline *t)
{
	size_t j;

	for(j = 0; j < t->n_held; j++) free(t->held[j].frame);
	t->n_held = 0;
}

static void free_hist(struct timeline *t)
{
	size_t j;

	for(j = 0; j < t->n_hist; j++){
		free(t->hist[j].strs);
		free(t->hist[j].body);
	}
	t->n_hist = t->hist_next = 0;
}

static void free_tl(struct timeline *t)
{
	free_held(t);
	free(t->held);
	free_hist(t);
	free(t->hist);
	free(t);
}

static void start_sync(struct timeline *t)
{
	t->syncing = true;
	t->want = true;
}

static void subscribe_tl(struct mim_client *c, const char *name)
{
	char topic[MIM_TL_MAX + 80], events[MIM_TL_MAX + 84];
	char *topics[2] = {topic, events};

	snprintf(topic, sizeof(topic), "%s/%s", c->prefix, name);
	snprintf(events, sizeof(events), "%s/e/%s", c->prefix, name);
	mosquitto_subscribe_multiple(c->mosq, NULL, 2, topics, 1, 0, NULL);
}

static struct timeline *add_tl(struct mim_client *c, const char *name)
{
	struct timeline *t, **grown;
	struct cursor *cu;

	if((t = find_tl(c, name)) != NULL) return t;
	t = calloc(1, sizeof(*t));
	if(t == NULL) return NULL;
	if(c->opt.history > 0) t->hist = calloc((size_t)c->opt.history, sizeof(*t->hist));
	grown = realloc(c->tls, (c->n_tls + 1) * sizeof(*grown));
	if(grown == NULL || (c->opt.history > 0 && t->hist == NULL)){
		if(grown) c->tls = grown;
		free(t->hist);
		free(t);
		return NULL;
	}
	c->tls = grown;
	snprintf(t->name, sizeof(t->name), "%s", name);
	cu = cursor_find(c, name);
	t->last = t->seen = cu ? cu->last : 0;
	if(cu == NULL) cursor_set(c, name, 0);
	c->tls[c->n_tls++] = t;
	return t;
}

static void follow(struct mim_client *c, const char *group, uint64_t seq)
{
	char name[MIM_TL_MAX + 1];
	struct timeline *t;

	snprintf(name, sizeof(name), "g/%s", group);
	if(find_tl(c, name) || !mim__valid_name(group)) return;
	t = add_tl(c, name);
	if(t == NULL) return;
	c->dirty = true;
	logv(c, "following %s", name);
	if(c->connected){
		subscribe_tl(c, name);
		start_sync(t);
		t->want_reads = c->opt.cb.on_read && c->opt.read_marks_on_connect;
	}
	if(c->opt.cb.on_membership) c->opt.cb.on_membership(c->opt.userdata, group, true, seq);
}

static void unfollow(struct mim_client *c, const char *group, uint64_t seq)
{
	char name[MIM_TL_MAX + 1], topic[MIM_TL_MAX + 80], events[MIM_TL_MAX + 84];
	char *topics[2] = {topic, events};
	size_t i;

	snprintf(name, sizeof(name), "g/%s", group);
	for(i = 0; i < c->n_tls; i++){
		if(strcmp(c->tls[i]->name, name)) continue;
		free_tl(c->tls[i]);
		memmove(c->tls + i, c->tls + i + 1, (c->n_tls - i - 1) * sizeof(*c->tls));
		c->n_tls--;
		cursor_drop(c, name);
		c->dirty = true;
		logv(c, "no longer following %s", name);
		if(c->connected){
			snprintf(topic, sizeof(topic), "%s/%s", c->prefix, name);
			snprintf(events, sizeof(events), "%s/e/%s", c->prefix, name);
			mosquitto_unsubscribe_multiple(c->mosq, NULL, 2, topics, NULL);
		}
		if(c->opt.cb.on_membership) c->opt.cb.on_membership(c->opt.userdata, group, false, seq);
		return;
	}
}

/* ---- requests ---- */

static int publish_request(struct mim_client *c, const char *op, const void *buf, size_t len, const char *corr)
{
	char topic[64];
	mosquitto_property *props = NULL;
	int rc;

	snprintf(topic, sizeof(topic), CONTROL "%s", op);
	if(corr) mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, (uint16_t)strlen(corr));
	rc = mosquitto_publish_v5(c->mosq, NULL, topic, (int)len, buf, 1, false, props);
	mosquitto_property_free_all(&props);
	return rc == MOSQ_ERR_SUCCESS ? 0 : MIM_ERR_NOT_CONNECTED;
}

/* Sends a request whose reply goes to cb (R_USER) or to the client itself. */
static int request(struct mim_client *c, const char *op, enum req_kind kind, const void *buf, size_t len,
		mim_reply_fn cb, void *ud, const char *tl)
{
	struct req *grown, *r;

	if(!c->connected) return MIM_ERR_NOT_CONNECTED;
	grown = realloc(c->reqs, (c->n_reqs + 1) * sizeof(*grown));
	if(grown == NULL) return MIM_ERR_NOMEM;
	c->reqs = grown;
	r = &c->reqs[c->n_reqs];
	memset(r, 0, sizeof(*r));
	next_corr(c, r->corr, 'r');
	snprintf(r->op, sizeof(r->op), "%s", op);
	r->kind = kind;
	r->cb = cb;
	r->ud = ud;
	r->deadline = mim__now_ms() + c->opt.request_timeout_ms;
	if(tl) snprintf(r->timeline, sizeof(r->timeline), "%s", tl);
	if(publish_request(c, op, buf, len, r->corr) != 0) return MIM_ERR_NOT_CONNECTED;
	c->n_reqs++;
	return 0;
}

/* Takes the request with this correlation out of the list (into *out). */
static bool take_req(struct mim_client *c, const char *corr, struct req *out)
{
	size_t i;

	for(i = 0; corr && i < c->n_reqs; i++){
		if(strcmp(c->reqs[i].corr, corr)) continue;
		*out = c->reqs[i];
		memmove(c->reqs + i, c->reqs + i + 1, (c->n_reqs - i - 1) * sizeof(*c->reqs));
		c->n_reqs--;
		return true;
	}
	return false;
}

static void fail_req(struct mim_client *c, struct req *r, int result);

static void fail_all_reqs(struct mim_client *c, int result)
{
	struct req r;

	while(c->n_reqs){
		r = c->reqs[0];
		memmove(c->reqs, c->reqs + 1, (c->n_reqs - 1) * sizeof(*c->reqs));
		c->n_reqs--;
		fail_req(c, &r, result);
	}
}

/* ---- the store id (7.6): seqs are comparable only within one ---- */

static void reset_store(struct mim_client *c, uint64_t id)
{
	uint64_t old = c->store_id;
	size_t i;

	logv(c, "store id %016" PRIx64 ", was %016" PRIx64 ": the server's history was replaced; starting over", id, old);
	if(c->n_retired < sizeof(c->retired) / sizeof(c->retired[0])) c->retired[c->n_retired++] = old;
	else c->retired[0] = old;
	c->store_id = id;
	for(i = 0; i < c->n_cursors; i++) c->cursors[i].last = 0;
	for(i = 0; i < c->n_tls; i++){
		struct timeline *t = c->tls[i];

		t->last = t->seen = t->acked = 0;
		free_held(t);
		free_hist(t);
		t->req[0] = '\0';    /* its answer counts in the old store */
		t->retry_at = 0;
		t->want = t->syncing = false;
		if(c->connected) start_sync(t);
	}
	for(i = 0; i < c->n_marks; i++){
		free(c->marks[i].timeline);
		free(c->marks[i].user);
	}
	c->n_marks = 0;
	c->unacked = 0;
	save(c);
	if(c->opt.cb.on_reset) c->opt.cb.on_reset(c->opt.userdata, old, id);
}

/* Every frame and reply carries the store id; false: drop the message
 * (of a store this client left). */
static bool check_store(struct mim_client *c, bool has, uint64_t id)
{
	size_t i;

	if(!has || id == 0 || id == c->store_id){
		c->store_ok = true;
		return true;
	}
	for(i = 0; i < c->n_retired; i++){
		if(c->retired[i] == id) return false;
	}
	if(c->store_id == 0){
		c->store_id = id;    /* the first we see */
		save(c);
	}else{
		reset_store(c, id);
	}
	c->store_ok = true;
	return true;
}

/* ---- sending ---- */

static void publish_send(struct mim_client *c, struct psend *p)
{
	char topic[MIM_TL_MAX + 80], num[32];
	mosquitto_property *props = NULL;
	int rc;

	snprintf(topic, sizeof(topic), "%s/%s", c->prefix, p->timeline);
	mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-cmid", p->cmid);
	if(p->kind == 1 || p->kind == 2){
		snprintf(num, sizeof(num), "%" PRIu64, p->ref_seq);
		mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, p->kind == 1 ? "im-edit" : "im-recall", num);
	}
	if(p->expiry_s > 0){
		snprintf(num, sizeof(num), "%" PRId64, p->expiry_s);
		mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "im-expiry", num);
	}
	if(p->content_type) mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, p->content_type);
	mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, RECEIPT_TOPIC);
	mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, p->cmid, (uint16_t)strlen(p->cmid));
	rc = mosquitto_publish_v5(c->mosq, &p->mid, topic, (int)p->len, p->body, 1, false, props);
	mosquitto_property_free_all(&props);
	if(rc == MOSQ_ERR_SUCCESS){
		p->sent = true;
		p->acked = false;
		c->inflight++;
	}
}

/* 7.4: the messages without a Receipt, in send order, SEND_WINDOW at a time. */
static void pump_sends(struct mim_client *c)
{
	size_t i;

	if(!c->connected) return;
	for(i = 0; i < c->n_pending && c->inflight < SEND_WINDOW; i++){
		if(!c->pending[i]->sent) publish_send(c, c->pending[i]);
	}
}

static struct psend *take_pending(struct mim_client *c, const char *cmid)
{
	size_t i;
	struct psend *p;

	for(i = 0; cmid && i < c->n_pending; i++){
		if(strcmp(c->pending[i]->cmid, cmid)) continue;
		p = c->pending[i];
		memmove(c->pending + i, c->pending + i + 1, (c->n_pending - i - 1) * sizeof(*c->pending));
		c->n_pending--;
		if(p->sent && !p->acked && c->inflight > 0) c->inflight--;
		return p;
	}
	return NULL;
}

static void resolve(struct mim_client *c, const struct mim_receipt *r)
{
	struct psend *p = take_pending(c, r->cmid);

	if(p == NULL) return;    /* a repeat's answer, or one of a send answered already */
	if(r->status != MIM_OK) logv(c, "message %s refused: %d %s", r->cmid, r->status, r->reason ? r->reason : "");
	save(c);                 /* not sent again by the next run */
	if(p->cb) p->cb(p->ud, r);
	else if(c->opt.cb.on_receipt) c->opt.cb.on_receipt(c->opt.userdata, r);
	psend_free(p);
	pump_sends(c);
}

static void on_receipt_msg(struct mim_client *c, const uint8_t *buf, size_t len, const char *corr)
{
	Im__V1__Receipt *r = im__v1__receipt__unpack(NULL, len, buf);
	struct mim_receipt rc = {0};

	if(r == NULL) return;
	if(check_store(c, r->has_store_id, r->store_id)){
		rc.status = r->status;
		rc.reason = r->reason;
		rc.cmid = r->cmid ? r->cmid : corr;
		rc.timeline = r->timeline;
		rc.seq = r->seq;
		rc.own_seq = r->own_seq;
		rc.ts_ms = r->ts_ms;
		rc.duplicate = r->duplicate;
		rc.store_id = r->store_id;
		resolve(c, &rc);
	}
	im__v1__receipt__free_unpacked(r, NULL);
}

static void on_puback(struct mosquitto *m, void *ud, int mid, int reason, const mosquitto_property *props)
{
	struct mim_client *c = ud;
	size_t i;

	(void)m;
	(void)props;
	for(i = 0; i < c->n_pending; i++){
		struct psend *p = c->pending[i];

		if(!p->sent || p->acked || p->mid != mid) continue;
		p->acked = true;
		if(c->inflight > 0) c->inflight--;
		if(reason >= 0x80){
			/* Refused by the broker (0x87 not allowed, too large, not a
			 * member; 0x97 a rate limit): never stored, never a Receipt. */
			struct mim_receipt r = {0};
			char cmid[MIM_CMID_MAX + 1], tl[MIM_TL_MAX + 1], why[160];

			snprintf(cmid, sizeof(cmid), "%s", p->cmid);
			snprintf(tl, sizeof(tl), "%s", p->timeline);
			snprintf(why, sizeof(why), "the broker refused the message to %s (reason 0x%02x)", tl, reason);
			r.status = MIM_ERR_BROKER;
			r.reason = why;
			r.cmid = cmid;
			r.timeline = tl;
			r.mqtt_reason = reason;
			resolve(c, &r);
		}
		break;
	}
	pump_sends(c);
}

static int submit(struct mim_client *c, const char *to, int kind, uint64_t ref, const void *body, size_t len,
		const struct mim_send_options *o, mim_receipt_fn cb, void *ud, char *cmid_out)
{
	char tl[MIM_TL_MAX + 1], cmid[MIM_CMID_MAX + 1];
	struct psend *p;
	int rc;

	if(c == NULL || !to_timeline(to, tl) || (len && body == NULL)) return MIM_ERR_INVAL;
	if(o && o->cmid){
		if(!*o->cmid || strlen(o->cmid) > MIM_CMID_MAX) return MIM_ERR_INVAL;
		snprintf(cmid, sizeof(cmid), "%s", o->cmid);
	}else{
		mim__uuid(cmid);
	}
	p = psend_new(cmid, tl, kind, ref, o ? o->content_type : NULL, o && o->expiry_s > 0 ? o->expiry_s : -1, body, len);
	if(p == NULL) return MIM_ERR_NOMEM;
	p->cb = cb;
	p->ud = ud;
	if(pending_add(c, p) != 0){
		psend_free(p);
		return MIM_ERR_NOMEM;
	}
	rc = save(c);
	if(rc != 0){
		c->n_pending--;
		psend_free(p);
		return rc;
	}
	if(cmid_out) memcpy(cmid_out, cmid, strlen(cmid) + 1);
	pump_sends(c);
	return 0;
}

int mim_send(struct mim_client *c, const char *timeline, const void *body, size_t len,
		const struct mim_send_options *o, mim_receipt_fn cb, void *ud, char *cmid_out)
{
	return submit(c, timeline, 0, 0, body, len, o, cb, ud, cmid_out);
}

int mim_edit(struct mim_client *c, const char *timeline, uint64_t seq, const void *body, size_t len,
		mim_receipt_fn cb, void *ud)
{
	if(seq == 0) return MIM_ERR_INVAL;
	return submit(c, timeline, 1, seq, body, len, NULL, cb, ud, NULL);
}

int mim_recall(struct mim_client *c, const char *timeline, uint64_t seq, mim_receipt_fn cb, void *ud)
{
	if(seq == 0) return MIM_ERR_INVAL;
	return submit(c, timeline, 2, seq, "", 0, NULL, cb, ud, NULL);
}

size_t mim_pending_count(const struct mim_client *c)
{
	return c->n_pending;
}

/* ---- acks (7.3) ---- */

static void send_acks(struct mim_client *c)
{
	Im__V1__Ack a = IM__V1__ACK__INIT;
	uint8_t buf[MIM_TL_MAX + 32];
	size_t i;

	/* Not before this connection showed the store is still ours: a seq of
	 * a replaced store would move the new store's cursor. */
	if(!c->connected || !c->store_ok) return;
	for(i = 0; i < c->n_tls; i++){
		struct timeline *t = c->tls[i];

		if(t->seen <= t->acked) continue;
		a.timeline = t->name;
		a.has_seq = 1;
		a.seq = t->seen;
		publish_request(c, "ack", buf, im__v1__ack__pack(&a, buf), NULL);
		t->acked = t->seen;
	}
	c->unacked = 0;
	c->ack_due = 0;
}

static void ack_soon(struct mim_client *c, int64_t in_ms)
{
	int64_t at = mim__now_ms() + in_ms;

	if(c->ack_due == 0 || at < c->ack_due) c->ack_due = at;
}

int mim_ack(struct mim_client *c, const char *timeline, uint64_t seq)
{
	char tl[MIM_TL_MAX + 1];
	struct timeline *t;

	if(c == NULL || !to_timeline(timeline, tl)) return MIM_ERR_INVAL;
	t = find_tl(c, tl);
	if(t == NULL) return MIM_ERR_INVAL;
	if(seq == 0 || seq > t->last) seq = t->last;
	if(seq > t->seen) t->seen = seq;
	ack_soon(c, 0);
	return 0;
}

/* ---- messages ---- */

static void fill_msg(struct mim_client *c, struct mim_message *m, const Im__V1__Header *h, const uint8_t *body,
		size_t len)
{
	memset(m, 0, sizeof(*m));
	m->timeline = h->timeline;
	m->seq = h->seq;
	m->sender = h->sender;
	m->ts_ms = h->ts_ms;
	m->cmid = h->cmid;
	m->to = h->to;
	m->content_type = h->content_type;
	m->flags = h->flags & ~(uint32_t)IM__V1__HEADER_FLAG__FLAG_COMPRESSED;
	m->ref_seq = h->has_ref_seq ? h->ref_seq : 0;
	m->peer_seq = h->has_peer_seq ? h->peer_seq : 0;
	m->expires_ms = h->expires_ms;
	m->store_id = h->store_id;
	m->outgoing = h->sender && !strcmp(h->sender, c->user);
	m->body_omitted = h->body_omitted;
	m->body_len = h->body_len;
	m->body = body;
	m->len = len;
}

static struct kept *hist_find(struct timeline *t, uint64_t seq)
{
	size_t i;

	for(i = 0; i < t->n_hist; i++){
		if(t->hist[i].m.seq == seq) return &t->hist[i];
	}
	return NULL;
}

static void hist_add(struct mim_client *c, struct timeline *t, const struct mim_message *m)
{
	const char *src[5] = {m->timeline, m->sender, m->cmid, m->to, m->content_type};
	const char **dst[5];
	struct kept *k;
	size_t total = 0, i;
	char *p;

	if(c->opt.history <= 0) return;
	if(t->n_hist < (size_t)c->opt.history){
		k = &t->hist[t->n_hist++];
	}else{
		k = &t->hist[t->hist_next];
		t->hist_next = (t->hist_next + 1) % (size_t)c->opt.history;
		free(k->strs);
		free(k->body);
	}
	k->m = *m;
	dst[0] = &k->m.timeline;
	dst[1] = &k->m.sender;
	dst[2] = &k->m.cmid;
	dst[3] = &k->m.to;
	dst[4] = &k->m.content_type;
	for(i = 0; i < 5; i++) total += src[i] ? strlen(src[i]) + 1 : 0;
	k->strs = p = malloc(total ? total : 1);
	k->body = malloc(m->len ? m->len : 1);
	if(k->strs == NULL || k->body == NULL){
		free(k->strs);
		free(k->body);
		k->strs = NULL;
		k->body = NULL;
		k->m.seq = 0;        /* not found again */
		return;
	}
	for(i = 0; i < 5; i++){
		if(src[i] == NULL){
			*dst[i] = NULL;
			continue;
		}
		strcpy(p, src[i]);
		*dst[i] = p;
		p += strlen(src[i]) + 1;
	}
	if(m->len) memcpy(k->body, m->body, m->len);
	k->m.body = k->body;
}

static void deliver(struct mim_client *c, struct timeline *t, const Im__V1__Header *h, const uint8_t *body, size_t len)
{
	struct mim_message m;
	uint8_t *raw = NULL;
	void *ud = c->opt.userdata;

	if(h->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED){
		raw = mim__inflate(body, len, h->raw_len);
		if(raw == NULL){
			error(c, MIM_ERR_FRAME, "%s #%" PRIu64 ": a compressed body that does not inflate (raw_len %u)",
					t->name, h->seq, h->raw_len);
			len = 0;
		}else{
			body = raw;
			len = h->raw_len;
		}
	}
	t->last = h->seq;
	cursor_set(c, t->name, t->last);
	c->dirty = true;
	if(c->opt.auto_ack){
		t->seen = h->seq;
		c->unacked++;
		ack_soon(c, c->unacked >= ACK_EVERY ? 0 : c->opt.ack_interval_ms);
	}
	fill_msg(c, &m, h, body, len);
	if(m.outgoing && m.cmid){
		struct psend *p = NULL;
		size_t i;

		for(i = 0; i < c->n_pending && p == NULL; i++){
			if(!strcmp(c->pending[i]->cmid, m.cmid)) p = c->pending[i];
		}
		if(p){
			/* my own copy: stored, whatever became of its Receipt */
			struct mim_receipt r = {0};
			bool group = !strncmp(t->name, "g/", 2);

			r.status = MIM_OK;
			r.cmid = m.cmid;
			r.timeline = group ? t->name : m.to;
			r.seq = group ? m.seq : m.peer_seq;
			r.own_seq = group ? 0 : m.seq;
			r.ts_ms = m.ts_ms;
			r.store_id = m.store_id;
			resolve(c, &r);
		}
	}
	if(m.flags & (MIM_FLAG_EDIT | MIM_FLAG_RECALL)){
		struct kept *k = hist_find(t, m.ref_seq);
		struct mim_message *orig = k ? &k->m : NULL;

		if(m.flags & MIM_FLAG_EDIT){
			if(k && !(k->m.flags & MIM_FLAG_RECALLED)){
				uint8_t *nb = malloc(len ? len : 1);

				if(nb){
					if(len) memcpy(nb, body, len);
					free(k->body);
					k->body = nb;
					k->m.body = nb;
					k->m.len = len;
					k->m.flags |= MIM_FLAG_EDITED;
				}
			}
			if(c->opt.cb.on_edit) c->opt.cb.on_edit(ud, &m, orig);
		}else{
			if(k){
				k->m.len = 0;
				k->m.flags |= MIM_FLAG_RECALLED;
			}
			if(c->opt.cb.on_recall) c->opt.cb.on_recall(ud, &m, orig);
		}
	}else{
		hist_add(c, t, &m);
		if(c->opt.cb.on_message) c->opt.cb.on_message(ud, &m);
	}
	free(raw);
	if(c->opt.save_interval_ms == 0) save(c);
}

static void hold(struct timeline *t, uint64_t seq, const uint8_t *frame, size_t len)
{
	size_t i;

	for(i = 0; i < t->n_held; i++){
		if(t->held[i].seq == seq) return;
		if(t->held[i].seq > seq) break;
	}
	if(!grow((void **)&t->held, t->n_held, &t->cap_held, sizeof(*t->held))) return;
	memmove(t->held + i + 1, t->held + i, (t->n_held - i) * sizeof(*t->held));
	t->held[i].seq = seq;
	t->held[i].frame = malloc(len);
	if(t->held[i].frame == NULL){
		memmove(t->held + i, t->held + i + 1, (t->n_held - i) * sizeof(*t->held));
		return;
	}
	memcpy(t->held[i].frame, frame, len);
	t->held[i].len = len;
	t->n_held++;
}

/* Delivers the held frames that follow `last` (or, up to upto, any held
 * frame: a batch at the head said the seqs between are gone); drops those
 * at or below `last`. */
static void drain(struct mim_client *c, struct timeline *t, uint64_t upto)
{
	size_t i = 0;

	while(i < t->n_held){
		struct held hf = t->held[i];
		Im__V1__Header *h;
		const uint8_t *body;
		size_t blen;

		if(hf.seq > t->last + 1 && hf.seq > upto) break;
		i++;
		if(hf.seq > t->last && mim__frame_decode(hf.frame, hf.len, &h, &body, &blen) == 0){
			/* deliver() may call back into the client: the held list is
			 * consistent before it does */
			memmove(t->held, t->held + i, (t->n_held - i) * sizeof(*t->held));
			t->n_held -= i;
			i = 0;
			deliver(c, t, h, body, blen);
			im__v1__header__free_unpacked(h, NULL);
		}
		free(hf.frame);
	}
	if(i){
		memmove(t->held, t->held + i, (t->n_held - i) * sizeof(*t->held));
		t->n_held -= i;
	}
}

static void on_frame(struct mim_client *c, const uint8_t *frame, size_t len)
{
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;
	struct timeline *t;

	if(mim__frame_decode(frame, len, &h, &body, &blen) != 0){
		error(c, MIM_ERR_FRAME, "a payload on an IM topic that is not a frame (%zu bytes)", len);
		return;
	}
	t = find_tl(c, h->timeline);
	if(!check_store(c, h->has_store_id, h->store_id) || t == NULL || h->seq <= t->last){
		/* of a store we left, not followed, or a duplicate */
	}else if(h->body_omitted){
		/* notify mode: the bodies come by sync */
		start_sync(t);
	}else if(t->syncing){
		hold(t, h->seq, frame, len);
	}else if(h->seq == t->last + 1){
		deliver(c, t, h, body, blen);
		drain(c, t, 0);
	}else{
		hold(t, h->seq, frame, len);   /* a gap: fill it by sync */
		start_sync(t);
	}
	im__v1__header__free_unpacked(h, NULL);
}

/* ---- sync (7.1) ---- */

static void send_sync(struct mim_client *c, struct timeline *t)
{
	Im__V1__SyncRequest r = IM__V1__SYNC_REQUEST__INIT;
	uint8_t buf[MIM_TL_MAX + 32];

	r.timeline = t->name;
	r.has_after_seq = 1;
	r.after_seq = t->last;
	r.has_limit = 1;
	r.limit = c->opt.sync_limit;
	t->want = false;
	t->retry_at = 0;
	next_corr(c, t->req, 's');
	t->req_after = t->last;
	t->req_at = mim__now_ms();
	if(publish_request(c, "sync", buf, im__v1__sync_request__pack(&r, buf), t->req) != 0){
		t->req[0] = '\0';
		t->want = true;
	}
}

/* The sync requests due: one per timeline, SYNC_WINDOW in all, none before
 * a TOO_MANY's retry_after_ms; round robin, so a long catch-up does not
 * starve the others. */
static void pump_syncs(struct mim_client *c)
{
	size_t k, out = 0, i;
	int64_t now = mim__now_ms();

	if(!c->connected || c->n_tls == 0) return;
	for(i = 0; i < c->n_tls; i++) out += c->tls[i]->req[0] != '\0';
	for(k = 0; k < c->n_tls && out < SYNC_WINDOW; k++){
		struct timeline *t = c->tls[(c->rr + k) % c->n_tls];

		if(!t->want || t->req[0] || now < t->retry_at) continue;
		send_sync(c, t);
		out++;
		c->rr = (c->rr + k + 1) % c->n_tls;
	}
}

static void refresh_groups(struct mim_client *c);

static void apply_batch(struct mim_client *c, struct timeline *t, const Im__V1__SyncBatch *b)
{
	Im__V1__Header *h;
	const uint8_t *body;
	size_t i, blen;
	char name[MIM_TL_MAX + 1];

	snprintf(name, sizeof(name), "%s", t->name);
	if(b->first_seq > t->last + 1){
		uint64_t first = t->last + 1;

		t->last = b->first_seq - 1;
		cursor_set(c, t->name, t->last);
		c->dirty = true;
		logv(c, "%s: seqs %" PRIu64 "..%" PRIu64 " are gone (retention)", t->name, first, t->last);
		if(c->opt.cb.on_gap) c->opt.cb.on_gap(c->opt.userdata, name, first, t->last);
	}
	/* A batch is complete between its frames: a seq it skips was expired
	 * or trimmed, not lost. */
	for(i = 0; i < b->n_frames; i++){
		if(mim__frame_decode(b->frames[i].data, b->frames[i].len, &h, &body, &blen) != 0){
			error(c, MIM_ERR_FRAME, "%s: a frame of a sync batch this library cannot read", name);
			continue;
		}
		if(h->seq > t->last && find_tl(c, name) == t) deliver(c, t, h, body, blen);
		im__v1__header__free_unpacked(h, NULL);
	}
	if(find_tl(c, name) != t) return;    /* unfollowed from a callback */
	if(b->has_more && b->n_frames){
		t->want = true;
		return;
	}
	/* At the head: held frames up to it are in order now; seqs up to the
	 * head that no batch held are gone (expired), so `last` moves there. */
	drain(c, t, b->head_seq);
	if(b->head_seq > t->last){
		t->last = b->head_seq;
		cursor_set(c, t->name, t->last);
		c->dirty = true;
	}
	drain(c, t, 0);
	if(t->n_held > 0) start_sync(t);     /* live frames missing after the head */
	else t->syncing = false;
	if(c->opt.auto_ack) ack_soon(c, 0);
}

static void on_batch(struct mim_client *c, const uint8_t *buf, size_t len, const char *corr);

/* ---- events: read marks, typing, membership (11.1) ---- */

static void report_read(struct mim_client *c, const char *tl, const char *user, uint64_t seq, int64_t ts_ms)
{
	struct mark *m = NULL, *grown;
	struct mim_read r;
	size_t i;

	if(tl == NULL || user == NULL || seq == 0) return;
	for(i = 0; i < c->n_marks && m == NULL; i++){
		if(!strcmp(c->marks[i].timeline, tl) && !strcmp(c->marks[i].user, user)) m = &c->marks[i];
	}
	if(m && seq <= m->seq) return;
	if(m == NULL){
		grown = realloc(c->marks, (c->n_marks + 1) * sizeof(*grown));
		if(grown == NULL) return;
		c->marks = grown;
		m = &c->marks[c->n_marks];
		m->timeline = strdup(tl);
		m->user = strdup(user);
		if(m->timeline == NULL || m->user == NULL){
			free(m->timeline);
			free(m->user);
			return;
		}
		c->n_marks++;
	}
	m->seq = seq;
	r.timeline = tl;
	r.user = user;
	r.seq = seq;
	r.ts_ms = ts_ms;
	if(c->opt.cb.on_read) c->opt.cb.on_read(c->opt.userdata, &r);
}

static void on_event_frame(struct mim_client *c, const uint8_t *frame, size_t len)
{
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;
	Im__V1__Event *e;

	if(mim__frame_decode(frame, len, &h, &body, &blen) != 0) return;
	e = h->event;
	if(check_store(c, h->has_store_id, h->store_id) && e && h->seq == 0 && find_tl(c, h->timeline)){
		if(e->kind == IM__V1__EVENT__KIND__READ){
			report_read(c, e->timeline, e->user, e->seq, e->ts_ms);
		}else if(e->kind == IM__V1__EVENT__KIND__TYPING && c->opt.cb.on_typing){
			struct mim_typing ty = {e->timeline, e->user, !e->has_typing || e->typing, e->ts_ms};

			c->opt.cb.on_typing(c->opt.userdata, &ty);
		}else if(e->kind == IM__V1__EVENT__KIND__MEMBERSHIP && e->timeline && !strncmp(e->timeline, "g/", 2)
				&& h->timeline && !strcmp(h->timeline, c->me)){
			if(c->opt.follow_groups){
				if(e->member) follow(c, e->timeline + 2, e->seq);
				else unfollow(c, e->timeline + 2, e->seq);
			}else if(c->opt.cb.on_membership){
				c->opt.cb.on_membership(c->opt.userdata, e->timeline + 2, e->member, e->seq);
			}
		}
	}
	im__v1__header__free_unpacked(h, NULL);
}

/* One group's `reads` out at a time (for the marks missed while away). */
static void pump_reads(struct mim_client *c)
{
	Im__V1__ReadsRequest r = IM__V1__READS_REQUEST__INIT;
	uint8_t buf[MIM_TL_MAX + 16];
	size_t i;

	if(!c->connected || c->reads_out || mim__now_ms() < c->reads_retry_at) return;
	for(i = 0; i < c->n_tls; i++){
		if(!c->tls[i]->want_reads) continue;
		c->tls[i]->want_reads = false;
		r.timeline = c->tls[i]->name;
		if(request(c, "reads", R_READS, buf, im__v1__reads_request__pack(&r, buf), NULL, NULL, c->tls[i]->name) == 0){
			c->reads_out = 1;
		}
		return;
	}
}

/* ---- replies ---- */

static void reply_of_status(struct mim_reply *rp, const char *op, int status, const char *reason, bool has_sid, uint64_t sid)
{
	memset(rp, 0, sizeof(*rp));
	rp->op = op;
	rp->status = status;
	rp->reason = reason;
	rp->store_id = has_sid ? sid : 0;
}

static void fail_req(struct mim_client *c, struct req *r, int result)
{
	struct mim_reply rp;

	if(r->kind == R_READS) c->reads_out = 0;
	if(r->kind == R_LIST) c->groups_retry_at = mim__now_ms() + RETRY_MS;
	if(r->kind != R_USER || r->cb == NULL) return;
	reply_of_status(&rp, r->op, result, mim_strerror(result), false, 0);
	r->cb(r->ud, &rp);
}

static void on_group_list(struct mim_client *c, const Im__V1__GroupResponse *g)
{
	size_t i, j;

	if(!c->opt.follow_groups) return;
	for(i = 0; i < g->n_groups; i++){
		if(g->groups[i]->name) follow(c, g->groups[i]->name, 0);
	}
	for(i = 0; i < c->n_tls;){
		const char *n = c->tls[i]->name;
		bool keep = strncmp(n, "g/", 2) != 0;
		char group[MIM_NAME_MAX + 1];

		for(j = 0; j < g->n_groups && !keep; j++) keep = g->groups[j]->name && !strcmp(g->groups[j]->name, n + 2);
		if(keep){
			i++;
			continue;
		}
		snprintf(group, sizeof(group), "%s", n + 2);
		unfollow(c, group, 0);
	}
	c->groups_known = true;
}

static void deliver_reply(struct mim_client *c, struct req *r, const uint8_t *buf, size_t len)
{
	struct mim_reply rp;
	bool ok;

	if(!strcmp(r->op, "group")){
		Im__V1__GroupResponse *g = im__v1__group_response__unpack(NULL, len, buf);
		struct mim_group_info *gi = NULL;
		size_t i;

		if(g == NULL) goto bad;
		ok = check_store(c, g->has_store_id, g->store_id);
		if(ok && r->kind == R_LIST){
			if(g->status == IM__V1__STATUS__OK) on_group_list(c, g);
			else c->groups_retry_at = mim__now_ms() + RETRY_MS;
		}
		if(ok && r->kind == R_USER && r->cb){
			reply_of_status(&rp, r->op, g->status, g->reason, g->has_store_id, g->store_id);
			rp.group = g->group;
			rp.owner = g->owner;
			rp.members = (const char *const *)g->members;
			rp.n_members = g->n_members;
			rp.head_seq = g->head_seq;
			rp.seq = g->seq;
			if(g->n_groups && (gi = calloc(g->n_groups, sizeof(*gi))) != NULL){
				for(i = 0; i < g->n_groups; i++){
					gi[i].name = g->groups[i]->name;
					gi[i].head_seq = g->groups[i]->head_seq;
					gi[i].cursor = g->groups[i]->cursor;
					gi[i].unread = g->groups[i]->unread;
				}
				rp.groups = gi;
				rp.n_groups = g->n_groups;
			}
			r->cb(r->ud, &rp);
			free(gi);
			/* follow the change without waiting for the membership news */
			if(g->status == IM__V1__STATUS__OK && g->op && strcmp(g->op, "info") && strcmp(g->op, "list")){
				refresh_groups(c);
			}
		}
		im__v1__group_response__free_unpacked(g, NULL);
	}else if(!strcmp(r->op, "conversations")){
		Im__V1__ConversationsResponse *v = im__v1__conversations_response__unpack(NULL, len, buf);
		struct mim_conversation *cv = NULL;
		size_t i;

		if(v == NULL) goto bad;
		if(check_store(c, v->has_store_id, v->store_id)){
			if(v->status == IM__V1__STATUS__OK){
				for(i = 0; i < v->n_conversations; i++){
					const Im__V1__Conversation *x = v->conversations[i];

					/* u/<peer>: how far the peer read its inbox, u/<peer> */
					if(x->timeline && !strncmp(x->timeline, "u/", 2)) report_read(c, x->timeline, x->timeline + 2, x->peer_read_seq, 0);
				}
			}
			if(r->kind == R_USER && r->cb){
				reply_of_status(&rp, r->op, v->status, v->reason, v->has_store_id, v->store_id);
				if(v->n_conversations && (cv = calloc(v->n_conversations, sizeof(*cv))) != NULL){
					for(i = 0; i < v->n_conversations; i++){
						const Im__V1__Conversation *x = v->conversations[i];

						cv[i].timeline = x->timeline;
						cv[i].last_seq = x->last_seq;
						cv[i].last_ts_ms = x->last_ts_ms;
						cv[i].last_sender = x->last_sender;
						cv[i].last_flags = x->last_flags;
						cv[i].last_preview = x->last_preview;
						cv[i].unread = x->unread;
						cv[i].peer_read_seq = x->peer_read_seq;
					}
					rp.conversations = cv;
					rp.n_conversations = v->n_conversations;
				}
				rp.has_more = v->has_more;
				r->cb(r->ud, &rp);
				free(cv);
			}
		}
		im__v1__conversations_response__free_unpacked(v, NULL);
	}else if(!strcmp(r->op, "reads")){
		Im__V1__ReadsResponse *v = im__v1__reads_response__unpack(NULL, len, buf);
		struct mim_read *mk = NULL;
		size_t i;

		if(v == NULL) goto bad;
		if(r->kind == R_READS){
			c->reads_out = 0;
			if(v->status == IM__V1__STATUS__TOO_MANY || v->status == IM__V1__STATUS__INTERNAL){
				struct timeline *t = find_tl(c, r->timeline);

				if(t) t->want_reads = true;
				c->reads_retry_at = mim__now_ms() + RETRY_MS;
			}
		}
		if(check_store(c, v->has_store_id, v->store_id)){
			const char *tl = v->timeline ? v->timeline : r->timeline;

			if(v->status == IM__V1__STATUS__OK){
				for(i = 0; i < v->n_marks; i++) report_read(c, tl, v->marks[i]->user, v->marks[i]->seq, 0);
			}
			if(r->kind == R_USER && r->cb){
				reply_of_status(&rp, r->op, v->status, v->reason, v->has_store_id, v->store_id);
				rp.timeline = tl;
				rp.head_seq = v->head_seq;
				if(v->n_marks && (mk = calloc(v->n_marks, sizeof(*mk))) != NULL){
					for(i = 0; i < v->n_marks; i++){
						mk[i].timeline = tl;
						mk[i].user = v->marks[i]->user;
						mk[i].seq = v->marks[i]->seq;
					}
					rp.marks = mk;
					rp.n_marks = v->n_marks;
				}
				r->cb(r->ud, &rp);
				free(mk);
			}
		}
		im__v1__reads_response__free_unpacked(v, NULL);
	}else{
		Im__V1__Response *v = im__v1__response__unpack(NULL, len, buf);

		if(v == NULL) goto bad;
		if(r->kind == R_USER && r->cb){
			reply_of_status(&rp, r->op, v->status, v->reason, false, 0);
			r->cb(r->ud, &rp);
		}
		im__v1__response__free_unpacked(v, NULL);
	}
	return;
bad:
	fail_req(c, r, MIM_ERR_FRAME);
}

/* A sync reply for mim_history: the frames, changed into messages. */
static void history_reply(struct mim_client *c, struct req *r, const Im__V1__SyncBatch *b)
{
	struct mim_reply rp;
	struct mim_message *ms = NULL;
	Im__V1__Header **hs = NULL;
	uint8_t **raws = NULL;
	size_t i, n = 0;

	reply_of_status(&rp, "sync", b->status, b->reason, b->has_store_id, b->store_id);
	rp.timeline = b->timeline ? b->timeline : r->timeline;
	rp.has_more = b->has_more;
	rp.head_seq = b->head_seq;
	rp.first_seq = b->first_seq;
	if(b->n_frames){
		ms = calloc(b->n_frames, sizeof(*ms));
		hs = calloc(b->n_frames, sizeof(*hs));
		raws = calloc(b->n_frames, sizeof(*raws));
	}
	for(i = 0; ms && hs && raws && i < b->n_frames; i++){
		const uint8_t *body;
		size_t blen;

		if(mim__frame_decode(b->frames[i].data, b->frames[i].len, &hs[n], &body, &blen) != 0) continue;
		if(hs[n]->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED){
			raws[n] = mim__inflate(body, blen, hs[n]->raw_len);
			body = raws[n];
			blen = raws[n] ? hs[n]->raw_len : 0;
		}
		fill_msg(c, &ms[n], hs[n], body, blen);
		n++;
	}
	rp.messages = ms;
	rp.n_messages = n;
	if(r->cb) r->cb(r->ud, &rp);
	for(i = 0; i < n; i++){
		im__v1__header__free_unpacked(hs[i], NULL);
		free(raws[i]);
	}
	free(ms);
	free(hs);
	free(raws);
}

static void on_batch(struct mim_client *c, const uint8_t *buf, size_t len, const char *corr)
{
	Im__V1__SyncBatch *b = im__v1__sync_batch__unpack(NULL, len, buf);
	struct timeline *t = NULL;
	struct req r;
	size_t i;

	if(b == NULL) return;
	if(!check_store(c, b->has_store_id, b->store_id)) goto done;
	if(take_req(c, corr, &r)){
		history_reply(c, &r, b);
		goto done;
	}
	for(i = 0; corr && i < c->n_tls && t == NULL; i++){
		if(c->tls[i]->req[0] && !strcmp(c->tls[i]->req, corr)) t = c->tls[i];
	}
	if(t == NULL) goto done;     /* late: asked before a reconnect or a reset */
	t->req[0] = '\0';
	if(b->status == IM__V1__STATUS__TOO_MANY || b->status == IM__V1__STATUS__INTERNAL){
		t->want = true;
		t->retry_at = mim__now_ms() + (b->retry_after_ms ? b->retry_after_ms : RETRY_MS);
	}else if(b->status != IM__V1__STATUS__OK){
		t->syncing = t->want = false;
		if(b->status == IM__V1__STATUS__FORBIDDEN && !strncmp(t->name, "g/", 2) && c->opt.follow_groups){
			refresh_groups(c);   /* not a member any more */
		}else{
			error(c, b->status, "sync %s refused: %d %s", t->name, b->status, b->reason ? b->reason : "");
		}
	}else if(t->req_after != t->last){
		start_sync(t);           /* the state moved meanwhile: ask again */
	}else{
		apply_batch(c, t, b);
	}
done:
	im__v1__sync_batch__free_unpacked(b, NULL);
}

static void on_reply(struct mim_client *c, const char *op, const uint8_t *buf, size_t len, const char *corr)
{
	struct req r;

	if(take_req(c, corr, &r)){
		deliver_reply(c, &r, buf, len);
		pump_reads(c);
		return;
	}
	if(!strcmp(op, "ack")){
		Im__V1__AckResponse *a = im__v1__ack_response__unpack(NULL, len, buf);

		if(a){
			check_store(c, a->has_store_id, a->store_id);
			im__v1__ack_response__free_unpacked(a, NULL);
		}
	}
}

/* ---- requests of the application ---- */

static void refresh_groups(struct mim_client *c)
{
	Im__V1__GroupRequest q = IM__V1__GROUP_REQUEST__INIT;
	uint8_t buf[32];

	if(!c->connected || !c->opt.follow_groups) return;
	q.op = "list";
	c->groups_retry_at = 0;
	if(request(c, "group", R_LIST, buf, im__v1__group_request__pack(&q, buf), NULL, NULL, NULL) != 0){
		c->groups_retry_at = mim__now_ms() + RETRY_MS;
	}
}

static int packed_request(struct mim_client *c, const char *op, const ProtobufCMessage *msg, mim_reply_fn cb,
		void *ud, const char *tl)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(n ? n : 1);
	int rc;

	if(buf == NULL) return MIM_ERR_NOMEM;
	protobuf_c_message_pack(msg, buf);
	rc = request(c, op, R_USER, buf, n, cb, ud, tl);
	free(buf);
	return rc;
}

int mim_typing(struct mim_client *c, const char *timeline, bool typing, mim_reply_fn cb, void *ud)
{
	Im__V1__TypingRequest q = IM__V1__TYPING_REQUEST__INIT;
	char tl[MIM_TL_MAX + 1];

	if(c == NULL || !to_timeline(timeline, tl)) return MIM_ERR_INVAL;
	q.timeline = tl;
	q.has_typing = 1;
	q.typing = typing;
	return packed_request(c, "typing", &q.base, cb, ud, tl);
}

int mim_conversations(struct mim_client *c, uint32_t limit, int64_t before_ts_ms, const char *before_timeline,
		mim_reply_fn cb, void *ud)
{
	Im__V1__ConversationsRequest q = IM__V1__CONVERSATIONS_REQUEST__INIT;

	if(c == NULL) return MIM_ERR_INVAL;
	if(limit){
		q.has_limit = 1;
		q.limit = limit;
	}
	if(before_timeline){
		q.has_before_ts_ms = 1;
		q.before_ts_ms = before_ts_ms;
		q.before_timeline = (char *)before_timeline;
	}
	return packed_request(c, "conversations", &q.base, cb, ud, NULL);
}

int mim_reads(struct mim_client *c, const char *timeline, mim_reply_fn cb, void *ud)
{
	Im__V1__ReadsRequest q = IM__V1__READS_REQUEST__INIT;
	char tl[MIM_TL_MAX + 1];

	if(c == NULL || !to_timeline(timeline, tl)) return MIM_ERR_INVAL;
	q.timeline = tl;
	return packed_request(c, "reads", &q.base, cb, ud, tl);
}

int mim_group(struct mim_client *c, const char *op, const char *group, const char *const *members,
		size_t n_members, mim_reply_fn cb, void *ud)
{
	Im__V1__GroupRequest q = IM__V1__GROUP_REQUEST__INIT;
	size_t i;

	if(c == NULL || op == NULL) return MIM_ERR_INVAL;
	if(strcmp(op, "list") && !mim__valid_name(group)) return MIM_ERR_INVAL;
	for(i = 0; i < n_members; i++){
		if(!mim__valid_name(members[i])) return MIM_ERR_INVAL;
	}
	q.op = (char *)op;
	q.group = strcmp(op, "list") ? (char *)group : NULL;
	q.members = (char **)members;
	q.n_members = n_members;
	return packed_request(c, "group", &q.base, cb, ud, NULL);
}

int mim_history(struct mim_client *c, const char *timeline, uint64_t after_seq, uint32_t limit, mim_reply_fn cb,
		void *ud)
{
	Im__V1__SyncRequest q = IM__V1__SYNC_REQUEST__INIT;
	char tl[MIM_TL_MAX + 1];

	if(c == NULL || !to_timeline(timeline, tl)) return MIM_ERR_INVAL;
	if(tl[0] == 'u' && strcmp(tl, c->me)) return MIM_ERR_INVAL;   /* only my inbox, or a group */
	q.timeline = tl;
	q.has_after_seq = 1;
	q.after_seq = after_seq;
	q.has_limit = 1;
	q.limit = limit ? limit : c->opt.sync_limit;
	return packed_request(c, "sync", &q.base, cb, ud, tl);
}

/* ---- libmosquitto callbacks ---- */

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags, const mosquitto_property *props)
{
	struct mim_client *c = ud;
	size_t i;

	(void)m;
	(void)flags;
	(void)props;
	if(rc != 0){
		if(!c->ever_connected) c->refused = rc;
		error(c, MIM_ERR_LOGIN, "the broker refused the login of %s: %s", c->user, mosquitto_reason_string(rc));
		return;
	}
	logv(c, "connected as %s (client id %s)", c->user, c->client_id);
	c->connected = c->ever_connected = true;
	c->backoff = c->opt.reconnect_min_ms;
	c->store_ok = false;
	c->groups_known = !c->opt.follow_groups;
	c->inflight = 0;
	c->reads_out = 0;
	/* 7.1: subscribe, then sync every timeline from `last` (the broker
	 * reads our packets in order: the subscription is in place first). */
	for(i = 0; i < c->n_tls; i++){
		struct timeline *t = c->tls[i];

		subscribe_tl(c, t->name);
		t->req[0] = '\0';
		t->retry_at = 0;
		t->acked = 0;            /* ack again what was seen: a lost ack, a reset cursor */
		t->want_reads = c->opt.cb.on_read && c->opt.read_marks_on_connect && t->name[0] == 'g';
		start_sync(t);
	}
	pump_syncs(c);
	refresh_groups(c);
	if(c->opt.cb.on_read && c->opt.read_marks_on_connect){
		/* events reach only who is connected: the marks that moved meanwhile */
		Im__V1__ConversationsRequest q = IM__V1__CONVERSATIONS_REQUEST__INIT;
		uint8_t buf[32];

		q.has_limit = 1;
		q.limit = MARKS_CONVS;
		request(c, "conversations", R_MARKS, buf, im__v1__conversations_request__pack(&q, buf), NULL, NULL, NULL);
		pump_reads(c);
	}
	/* 7.4: everything without a Receipt again, the same cmid, in send order */
	for(i = 0; i < c->n_pending; i++) c->pending[i]->sent = c->pending[i]->acked = false;
	pump_sends(c);
}

static void lost(struct mim_client *c)
{
	size_t i;

	c->sock_up = false;
	if(!c->connected) return;
	logv(c, "connection lost");
	c->connected = false;
	c->store_ok = false;
	c->inflight = 0;
	for(i = 0; i < c->n_tls; i++){
		c->tls[i]->req[0] = '\0';
		c->tls[i]->retry_at = 0;
	}
	fail_all_reqs(c, MIM_ERR_CONN_LOST);
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc, const mosquitto_property *props)
{
	(void)m;
	(void)rc;
	(void)props;
	lost(ud);
}

static char *corr_of(const mosquitto_property *props, char *buf, size_t cap)
{
	void *v = NULL;
	uint16_t n = 0;

	buf[0] = '\0';
	if(mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &v, &n, false) && v){
		if(n >= cap) n = (uint16_t)(cap - 1);
		memcpy(buf, v, n);
		buf[n] = '\0';
		free(v);
		return buf;
	}
	return NULL;
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg, const mosquitto_property *props)
{
	struct mim_client *c = ud;
	const char *t = msg->topic;
	size_t plen = strlen(c->prefix), clen = strlen(CONTROL);
	char cbuf[MIM_CMID_MAX + 8], *corr;
	const uint8_t *p = msg->payload;
	size_t len = (size_t)msg->payloadlen;

	(void)m;
	if(!strncmp(t, CONTROL, clen)){
		corr = corr_of(props, cbuf, sizeof(cbuf));
		if(!strcmp(t, RECEIPT_TOPIC)){
			on_receipt_msg(c, p, len, corr);
		}else if(!strcmp(t, CONTROL "sync/response")){
			on_batch(c, p, len, corr);
		}else{
			size_t tl = strlen(t);
			char op[32];

			if(tl > clen + 9 && !strcmp(t + tl - 9, "/response") && tl - clen - 9 < sizeof(op)){
				memcpy(op, t + clen, tl - clen - 9);
				op[tl - clen - 9] = '\0';
				on_reply(c, op, p, len, corr);
			}
		}
	}else if(!strncmp(t, c->prefix, plen) && t[plen] == '/'){
		if(!strncmp(t + plen + 1, "e/", 2)) on_event_frame(c, p, len);
		else if(!strncmp(t + plen + 1, "u/", 2) || !strncmp(t + plen + 1, "g/", 2)) on_frame(c, p, len);
	}
	pump_syncs(c);
}

/* ---- lifecycle ---- */

void mim_options_init(struct mim_options *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->follow_groups = true;
	o->auto_ack = true;
	o->read_marks_on_connect = true;
	o->save_interval_ms = -1;    /* the default, 200 */
}

static int persist_load(struct mim_client *c)
{
	struct mim_loader l = {c};

	if(!c->has_persist || c->persist.load == NULL) return 0;
	return c->persist.load(c->persist.ctx, &l);
}

struct mim_client *mim_new(const struct mim_options *o, int *result)
{
	struct mim_client *c;
	int rc = MIM_ERR_INVAL, i;
	size_t n;

	if(result) *result = MIM_ERR_INVAL;
	if(o == NULL || o->size == 0 || !mim__valid_name(o->user)) return NULL;
	c = calloc(1, sizeof(*c));
	if(c == NULL){
		if(result) *result = MIM_ERR_NOMEM;
		return NULL;
	}
	mim_options_init(&c->opt);
	memcpy(&c->opt, o, o->size < sizeof(c->opt) ? o->size : sizeof(c->opt));
	c->opt.size = sizeof(c->opt);
	if(c->opt.port <= 0) c->opt.port = 1883;
	if(c->opt.keepalive <= 0) c->opt.keepalive = 30;
	if(c->opt.ack_interval_ms <= 0) c->opt.ack_interval_ms = 1000;
	if(c->opt.request_timeout_ms <= 0) c->opt.request_timeout_ms = 30000;
	if(c->opt.sync_limit == 0) c->opt.sync_limit = 500;
	if(c->opt.history == 0) c->opt.history = 200;
	if(c->opt.save_interval_ms < 0) c->opt.save_interval_ms = 200;
	if(c->opt.session_expiry == 0) c->opt.session_expiry = 7 * 24 * 3600;
	if(c->opt.reconnect_min_ms <= 0) c->opt.reconnect_min_ms = 250;
	if(c->opt.reconnect_max_ms < c->opt.reconnect_min_ms) c->opt.reconnect_max_ms = c->opt.reconnect_min_ms > 5000 ? c->opt.reconnect_min_ms : 5000;
	c->host = strdup(o->host ? o->host : "127.0.0.1");
	c->user = strdup(o->user);
	c->password = dupstr(o->password);
	c->prefix = strdup(o->prefix ? o->prefix : "im");
	c->cafile = dupstr(o->cafile);
	if(o->client_id) c->client_id = strdup(o->client_id);
	if(!c->host || !c->user || !c->prefix || (o->password && !c->password) || (o->cafile && !c->cafile)
			|| (o->client_id && !c->client_id)){
		rc = MIM_ERR_NOMEM;
		goto fail;
	}
	snprintf(c->me, sizeof(c->me), "u/%s", c->user);
	{
		char r[37];

		mim__uuid(r);
		snprintf(c->run, sizeof(c->run), "%.8s", r);
	}
	c->backoff = c->opt.reconnect_min_ms;
	c->state = MIM_STATE_NEW;
	if(o->persist){
		mim_persist_init(&c->persist);
		memcpy(&c->persist, o->persist, o->persist->size < sizeof(c->persist) ? o->persist->size : sizeof(c->persist));
		c->has_persist = c->persist.save != NULL;
	}else if(o->state_path){
		if((rc = mim_persist_file(&c->persist, o->state_path, false)) != 0) goto fail;
		c->has_persist = true;
	}
	if((rc = persist_load(c)) != 0) goto fail;
	if(c->client_id == NULL){
		char r[37];

		mim__uuid(r);
		n = strlen(c->user) + 20;
		c->client_id = malloc(n);
		if(c->client_id == NULL){
			rc = MIM_ERR_NOMEM;
			goto fail;
		}
		snprintf(c->client_id, n, "%s-c-%.12s", c->user, r + 24);
		c->id_made = true;
		c->dirty = true;
	}
	/* the inbox, and the groups: those named, or those followed last time */
	if(c->opt.requests_only){
		c->opt.follow_groups = false;
		c->opt.read_marks_on_connect = false;
	}else if(add_tl(c, c->me) == NULL){
		goto nomem;
	}
	if(c->opt.requests_only){
		/* nothing followed */
	}else if(o->groups){
		c->opt.follow_groups = false;
		for(i = 0; o->groups[i]; i++){
			char tl[MIM_TL_MAX + 1];

			if(!mim__valid_name(o->groups[i])) goto fail;
			snprintf(tl, sizeof(tl), "g/%s", o->groups[i]);
			if(add_tl(c, tl) == NULL) goto nomem;
		}
	}else if(c->opt.follow_groups){
		for(n = 0; n < c->n_cursors; n++){
			if(c->cursors[n].timeline[0] == 'g' && add_tl(c, c->cursors[n].timeline) == NULL) goto nomem;
		}
	}
	mosquitto_lib_init();
	c->mosq = mosquitto_new(c->client_id, c->opt.requests_only, c);
	if(c->mosq == NULL) goto nomem;
	mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);  /* PROTOCOL.md 7: sync pages without delayed ACKs */
	mosquitto_username_pw_set(c->mosq, c->user, c->password);
	if(c->cafile && mosquitto_tls_set(c->mosq, c->cafile, NULL, NULL, NULL, NULL) != MOSQ_ERR_SUCCESS) goto fail;
	mosquitto_connect_v5_callback_set(c->mosq, on_connect);
	mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
	mosquitto_publish_v5_callback_set(c->mosq, on_puback);
	mosquitto_message_v5_callback_set(c->mosq, on_message);
	if(c->dirty) save(c);
	if(result) *result = MIM_OK;
	return c;
nomem:
	rc = MIM_ERR_NOMEM;
fail:
	if(result) *result = rc;
	c->no_save = true;          /* nothing to save: the state was not (all) read */
	mim_destroy(c);
	return NULL;
}

static int try_connect(struct mim_client *c)
{
	mosquitto_property *props = NULL;
	int rc;

	c->connect_at = mim__now_ms();
	if(!c->opt.requests_only){
		mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, c->opt.session_expiry);
	}
	if(!c->started){
		rc = mosquitto_connect_bind_v5(c->mosq, c->host, c->opt.port, c->opt.keepalive, NULL, props);
		if(rc == MOSQ_ERR_SUCCESS) c->started = true;
	}else{
		rc = mosquitto_reconnect(c->mosq);
	}
	mosquitto_property_free_all(&props);
	if(rc == MOSQ_ERR_SUCCESS){
		c->sock_up = true;
		return 0;
	}
	c->reconnect_at = mim__now_ms() + c->backoff;
	c->backoff = c->backoff * 2 > c->opt.reconnect_max_ms ? c->opt.reconnect_max_ms : c->backoff * 2;
	return MIM_ERR_CONNECT;
}

int mim_connect(struct mim_client *c)
{
	if(c->state == MIM_STATE_NEW) c->state = MIM_STATE_CONNECTING;
	if(c->opt.cb.on_state) c->opt.cb.on_state(c->opt.userdata, c->state);
	return try_connect(c);
}

bool mim_caught_up(const struct mim_client *c)
{
	size_t i;

	if(!c->connected || !c->groups_known) return false;
	for(i = 0; i < c->n_tls; i++){
		if(c->tls[i]->syncing || c->tls[i]->n_held || c->tls[i]->req[0]) return false;
	}
	return true;
}

static void update_state(struct mim_client *c)
{
	enum mim_state s;

	if(c->connected) s = mim_caught_up(c) ? MIM_STATE_ONLINE : MIM_STATE_SYNCING;
	else s = c->ever_connected ? MIM_STATE_OFFLINE : MIM_STATE_CONNECTING;
	if(s == c->state) return;
	c->state = s;
	logv(c, "state %d", (int)s);
	if(c->opt.cb.on_state) c->opt.cb.on_state(c->opt.userdata, s);
}

static void tick(struct mim_client *c)
{
	int64_t now = mim__now_ms();
	size_t i;

	for(i = 0; i < c->n_reqs;){
		if(now <= c->reqs[i].deadline){
			i++;
			continue;
		}
		{
			struct req r = c->reqs[i];

			memmove(c->reqs + i, c->reqs + i + 1, (c->n_reqs - i - 1) * sizeof(*c->reqs));
			c->n_reqs--;
			fail_req(c, &r, MIM_ERR_TIMEOUT);
		}
	}
	if(c->connected){
		for(i = 0; i < c->n_tls; i++){
			struct timeline *t = c->tls[i];

			if(t->req[0] && now - t->req_at > c->opt.request_timeout_ms){
				t->req[0] = '\0';    /* its answer never came: ask again */
				t->want = true;
			}
		}
		pump_syncs(c);
		pump_reads(c);
		if(c->groups_retry_at && now >= c->groups_retry_at) refresh_groups(c);
		if(c->ack_due && now >= c->ack_due) send_acks(c);
		pump_sends(c);
	}
	if(c->dirty && now - c->last_save >= c->opt.save_interval_ms) save(c);
	update_state(c);
}

int mim_loop(struct mim_client *c, int timeout_ms)
{
	int rc;
	int64_t now = mim__now_ms();

	if(c->refused) return MIM_ERR_LOGIN;
	if(c->state == MIM_STATE_NEW) mim_connect(c);
	if(!c->sock_up){
		int wait = timeout_ms;

		if(c->reconnect_at > now && c->reconnect_at - now < wait) wait = (int)(c->reconnect_at - now);
		if(c->reconnect_at > now) poll(NULL, 0, wait);
		if(mim__now_ms() >= c->reconnect_at) try_connect(c);
		tick(c);
		return MIM_OK;
	}
	rc = mosquitto_loop(c->mosq, timeout_ms, 1);
	if(c->refused) return MIM_ERR_LOGIN;
	if(rc != MOSQ_ERR_SUCCESS || (!c->connected && mim__now_ms() - c->connect_at > CONNACK_WAIT_MS)){
		if(c->sock_up && !c->connected && rc == MOSQ_ERR_SUCCESS) mosquitto_disconnect(c->mosq);
		lost(c);
		c->reconnect_at = mim__now_ms() + c->backoff;
		c->backoff = c->backoff * 2 > c->opt.reconnect_max_ms ? c->opt.reconnect_max_ms : c->backoff * 2;
	}
	tick(c);
	return MIM_OK;
}

int mim_loop_forever(struct mim_client *c)
{
	int rc = MIM_OK;

	c->stop = false;
	while(!c->stop && rc == MIM_OK) rc = mim_loop(c, 100);
	return rc;
}

void mim_stop(struct mim_client *c)
{
	c->stop = true;
}

int mim_socket(const struct mim_client *c)
{
	return c->sock_up ? mosquitto_socket(c->mosq) : -1;
}

void mim_destroy(struct mim_client *c)
{
	size_t i;

	if(c == NULL) return;
	if(c->mosq && c->connected){
		int64_t until = mim__now_ms() + 500;

		send_acks(c);
		/* let the acks leave */
		while(mosquitto_want_write(c->mosq) && mim__now_ms() < until) mosquitto_loop(c->mosq, 50, 1);
		mosquitto_disconnect(c->mosq);
		mosquitto_loop(c->mosq, 50, 1);
	}
	if(c->has_persist && !c->no_save) save(c);
	fail_all_reqs(c, MIM_ERR_CLOSED);
	if(c->persist.close) c->persist.close(c->persist.ctx);
	if(c->mosq){
		mosquitto_destroy(c->mosq);
		mosquitto_lib_cleanup();
	}
	for(i = 0; i < c->n_tls; i++) free_tl(c->tls[i]);
	free(c->tls);
	for(i = 0; i < c->n_cursors; i++) free(c->cursors[i].timeline);
	free(c->cursors);
	for(i = 0; i < c->n_pending; i++){
		struct psend *p = c->pending[i];

		if(p->cb){
			struct mim_receipt r = {0};

			r.status = MIM_ERR_CLOSED;
			r.reason = "the client was closed before the Receipt (the message is sent again by the next run)";
			r.cmid = p->cmid;
			r.timeline = p->timeline;
			p->cb(p->ud, &r);
		}
		psend_free(p);
	}
	free(c->pending);
	free(c->reqs);
	for(i = 0; i < c->n_marks; i++){
		free(c->marks[i].timeline);
		free(c->marks[i].user);
	}
	free(c->marks);
	free(c->host);
	free(c->user);
	free(c->password);
	free(c->prefix);
	free(c->cafile);
	free(c->client_id);
	free(c);
}

/* ---- accessors ---- */

uint64_t mim_last(const struct mim_client *c, const char *timeline)
{
	char tl[MIM_TL_MAX + 1];
	const struct timeline *t;

	if(c == NULL || !to_timeline(timeline, tl)) return 0;
	t = find_tl(c, tl);
	return t ? t->last : 0;
}

uint64_t mim_read_mark(const struct mim_client *c, const char *timeline, const char *user)
{
	size_t i;

	for(i = 0; c && timeline && user && i < c->n_marks; i++){
		if(!strcmp(c->marks[i].timeline, timeline) && !strcmp(c->marks[i].user, user)) return c->marks[i].seq;
	}
	return 0;
}

uint64_t mim_store_id(const struct mim_client *c)
{
	return c->store_id;
}

const char *mim_client_id(const struct mim_client *c)
{
	return c->client_id;
}

enum mim_state mim_get_state(const struct mim_client *c)
{
	return c->state;
}

const char *mim_timeline(const struct mim_client *c, size_t i)
{
	return i < c->n_tls ? c->tls[i]->name : NULL;
}
