/*
 * Reference client: see im_client.h and docs/PROTOCOL.md, section 7.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#include "base/limits.h"
#include "codec/frame.h"
#include "im_client.h"

#define MAX_TIMELINES 64
#define ACK_EVERY 50          /* messages */
#define ACK_AFTER_MS 1000
#define SYNC_WINDOW 8         /* sync requests out at once (the plugin's sync_inflight default is 16) */
#define RETRY_MS 1000         /* after a TOO_MANY without retry_after_ms */
#define MARKS_CONVS 200       /* conversations asked for their peers' read marks on connect (the plugin's page maximum) */

struct held {
	uint64_t seq;
	uint8_t *frame;
	size_t len;
};

struct timeline {
	char name[IM_TL_MAX + 1];
	char topic[IM_TL_MAX + 70];
	char events[IM_TL_MAX + 72];  /* <prefix>/e/<name>: read marks and typing */
	uint64_t last;
	uint64_t acked;
	bool syncing;             /* catching up: live frames are held */
	bool want;                /* a sync request from `last` is to be sent */
	bool inflight;            /* a sync request is out, not answered yet */
	bool want_reads;          /* a group's read marks are to be asked for */
	uint64_t req_after;       /* its after_seq */
	int64_t retry_at;         /* after a TOO_MANY: not before this (now_ms) */
	struct held *held;        /* sorted by seq */
	size_t n_held, cap_held;
};

/* The last read mark reported for (user, timeline). */
struct mark {
	char user[IM_NAME_MAX + 1];
	char timeline[IM_TL_MAX + 1];
	uint64_t seq;
};

struct im_client {
	struct im_client_options opt;
	struct mosquitto *mosq;
	im_client_deliver_fn fn;
	void *ud;
	struct timeline tls[MAX_TIMELINES];
	int n_tls;
	long delivered;
	long unacked;
	int64_t last_delivery_ms, last_ack_ms;
	bool connected, ever_connected, refused, stop;
	char *other_state;      /* state lines of timelines not followed this run, kept as they are */
	size_t other_len;
	uint64_t store_id;      /* the store the seqs in `last` come from; 0: not known yet */
	uint64_t retired;       /* the store id we left: late messages of it are dropped */
	bool store_seen;        /* this connection answered with store_id: acks may go */
	int anon_refused;       /* TOO_MANY replies that named no timeline, not yet matched */
	uint32_t anon_retry_ms;
	int rr;                 /* next timeline pump() looks at first */
	int reads_out;          /* index of the timeline whose `reads` is out, -1: none */
	int64_t reads_retry_at; /* after a TOO_MANY: no `reads` before this (now_ms) */
	struct mark *marks;     /* reported read marks, to report each move once */
	size_t n_marks, cap_marks;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- state file: one "timeline last" line per timeline, and "store <id>" ---- */

static void state_load(struct im_client *c)
{
	FILE *f;
	char name[IM_TL_MAX + 2];
	unsigned long long last;
	int i;

	int found;
	char line[256], *grown, *end;

	if(!c->opt.state_path || !(f = fopen(c->opt.state_path, "r"))) return;
	while(fgets(line, sizeof(line), f)){
		if(!strncmp(line, "store ", 6)){
			/* the store the seqs below belong to (no such line: a file
			 * written before store ids, or by a client of an older broker) */
			unsigned long long id = strtoull(line + 6, &end, 16);

			if(end > line + 6 && (*end == '\n' || *end == '\0')) c->store_id = id;
			continue;
		}
		if(sscanf(line, "%66s %llu", name, &last) != 2) continue;
		for(i = 0, found = 0; i < c->n_tls; i++){
			if(!strcmp(c->tls[i].name, name)){
				c->tls[i].last = c->tls[i].acked = last;
				found = 1;
			}
		}
		/* A group followed by another run (imchat listen -g ...): keep its
		 * place, or the next run that follows it would start over. */
		if(!found){
			int n = snprintf(line, sizeof(line), "%s %llu\n", name, last);
			grown = realloc(c->other_state, c->other_len + (size_t)n + 1);
			if(grown == NULL) continue;
			c->other_state = grown;
			memcpy(c->other_state + c->other_len, line, (size_t)n + 1);
			c->other_len += (size_t)n;
		}
	}
	fclose(f);
}

static void state_save(struct im_client *c)
{
	char tmp[4096];
	FILE *f;
	int i;

	if(!c->opt.state_path) return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", c->opt.state_path);
	if(!(f = fopen(tmp, "w"))) return;
	for(i = 0; i < c->n_tls; i++) fprintf(f, "%s %llu\n", c->tls[i].name, (unsigned long long)c->tls[i].last);
	if(c->other_state) fputs(c->other_state, f);
	/* Last: a reader from before store ids has read the timelines when it
	 * meets this line. */
	if(c->store_id) fprintf(f, "store %016llx\n", (unsigned long long)c->store_id);
	if(fclose(f) == 0) rename(tmp, c->opt.state_path);
}

/* ---- requests ---- */

static void request(struct im_client *c, const char *op, const void *buf, size_t len)
{
	char topic[64];

	snprintf(topic, sizeof(topic), "$CONTROL/im/v1/%s", op);
	mosquitto_publish(c->mosq, NULL, topic, (int)len, buf, 1, false);
}

static void send_sync(struct im_client *c, struct timeline *t)
{
	Im__V1__SyncRequest r = IM__V1__SYNC_REQUEST__INIT;
	uint8_t buf[128];

	r.timeline = t->name;
	r.has_after_seq = 1;
	r.after_seq = t->last;
	r.has_limit = 1;
	r.limit = c->opt.sync_limit;
	t->want = false;
	t->inflight = true;
	t->req_after = t->last;
	request(c, "sync", buf, im__v1__sync_request__pack(&r, buf));
}

/* Catch up t from `last`: hold live frames until a batch without has_more.
 * The request goes out from pump(). */
static void start_sync(struct timeline *t)
{
	t->syncing = true;
	t->want = true;
}

/* Sends the sync requests that are due: one per timeline at most, at most
 * SYNC_WINDOW in all, none before a TOO_MANY's retry_after_ms. One out per
 * timeline lets a batch be matched to its request by after_seq; the window
 * keeps a client with many groups under the plugin's sync_inflight. */
static void pump(struct im_client *c)
{
	int i, k, out = 0;
	int64_t now = now_ms();

	if(!c->connected) return;
	for(i = 0; i < c->n_tls; i++) out += c->tls[i].inflight;
	for(k = 0; k < c->n_tls && out < SYNC_WINDOW; k++){
		struct timeline *t = &c->tls[(c->rr + k) % c->n_tls];

		if(!t->want || t->inflight || now < t->retry_at) continue;
		send_sync(c, t);
		out++;
		c->rr = (c->rr + k + 1) % c->n_tls; /* round robin: a long catch-up does not starve the others */
	}
}

static void send_acks(struct im_client *c)
{
	Im__V1__Ack a = IM__V1__ACK__INIT;
	uint8_t buf[128];
	int i;

	/* Not before this connection showed the store is still ours: a seq
	 * of a replaced store would move the new store's cursor. */
	if(!c->store_seen) return;
	for(i = 0; i < c->n_tls; i++){
		if(c->tls[i].last <= c->tls[i].acked) continue;
		a.timeline = c->tls[i].name;
		a.has_seq = 1;
		a.seq = c->tls[i].last;
		request(c, "ack", buf, im__v1__ack__pack(&a, buf));
		c->tls[i].acked = c->tls[i].last;
	}
	c->unacked = 0;
	c->last_ack_ms = now_ms();
}

/* ---- the store id: seqs are comparable only within one ---- */

static void free_held(struct timeline *t)
{
	size_t j;

	for(j = 0; j < t->n_held; j++) free(t->held[j].frame);
	t->n_held = 0;
}

/* The server's history was replaced (a new database, a rolled back or
 * restored one): every `last` counts seqs of a store that is gone, and
 * keeping it would drop the new store's messages as duplicates. Forget
 * them all and catch up every timeline from 0. */
static void reset_store(struct im_client *c, uint64_t id)
{
	uint64_t old = c->store_id;
	int i;

	if(c->opt.verbose){
		fprintf(stderr, "imclient: store id %016llx, was %016llx: the server's history was replaced; starting over\n",
				(unsigned long long)id, (unsigned long long)old);
	}
	c->retired = old;
	c->store_id = id;
	for(i = 0; i < c->n_tls; i++){
		struct timeline *t = &c->tls[i];

		t->last = t->acked = 0;
		free_held(t);
		t->retry_at = 0;
		/* A request still out asked from the old `last`: its answer is
		 * not used (on_batch), and this one follows it. */
		start_sync(t);
	}
	/* The timelines other runs follow counted the old store too. */
	free(c->other_state);
	c->other_state = NULL;
	c->other_len = 0;
	c->unacked = 0;
	c->n_marks = 0;         /* read marks of the old store's seqs */
	state_save(c);
	if(c->opt.on_reset) c->opt.on_reset(c->ud, old, id);
}

/* Every frame and reply carries the store id; false: drop the message. */
static bool check_store(struct im_client *c, bool has, uint64_t id)
{
	if(!has || id == 0 || id == c->store_id){
		c->store_seen = true; /* 0/absent: a broker without store ids, nothing to compare */
		return true;
	}
	if(id == c->retired){
		/* Sent before the switch and delivered late (a persistent
		 * session's queue, a redelivery after a reconnect). */
		return false;
	}
	if(c->store_id == 0){
		c->store_id = id; /* the first we see: a new state file, or one from before store ids */
		state_save(c);
	}else{
		reset_store(c, id);
	}
	c->store_seen = true;
	return true;
}

/* ---- the algorithm ---- */

static struct timeline *find_tl(struct im_client *c, const char *name)
{
	int i;

	for(i = 0; name && i < c->n_tls; i++){
		if(!strcmp(c->tls[i].name, name)) return &c->tls[i];
	}
	return NULL;
}

static void deliver(struct im_client *c, struct timeline *t, const Im__V1__Header *h,
		const uint8_t *body, size_t len)
{
	uint8_t *raw = NULL;

	if(h->flags & IM__V1__HEADER_FLAG__FLAG_COMPRESSED){
		/* Deflated by the plugin (compress_min_bytes): the app sees the body as sent. */
		raw = im_frame__inflate(body, len, h->raw_len);
		if(raw){
			body = raw;
			len = h->raw_len;
		}
	}
	t->last = h->seq;
	c->fn(c->ud, h, body, len);
	free(raw);
	c->delivered++;
	c->unacked++;
	c->last_delivery_ms = now_ms();
	state_save(c);
}

static void hold(struct timeline *t, uint64_t seq, const uint8_t *frame, size_t len)
{
	size_t i;

	for(i = 0; i < t->n_held; i++){
		if(t->held[i].seq == seq) return; /* already held */
		if(t->held[i].seq > seq) break;
	}
	if(t->n_held == t->cap_held){
		size_t cap = t->cap_held ? t->cap_held * 2 : 16;
		struct held *h = realloc(t->held, cap * sizeof(*h));
		if(h == NULL) return; /* sync will bring it again */
		t->held = h;
		t->cap_held = cap;
	}
	memmove(&t->held[i + 1], &t->held[i], (t->n_held - i) * sizeof(*t->held));
	t->held[i].seq = seq;
	t->held[i].frame = malloc(len);
	t->held[i].len = len;
	if(t->held[i].frame == NULL) return;
	memcpy(t->held[i].frame, frame, len);
	t->n_held++;
}

/* Delivers held frames that follow `last`; drops those at or below it.
 * up_to: seqs up to here are known complete (a sync covered them), so a
 * held frame at or below it may skip expired seqs. */
static void drain(struct im_client *c, struct timeline *t, uint64_t up_to)
{
	size_t i = 0;
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;

	while(i < t->n_held && (t->held[i].seq <= t->last + 1 || t->held[i].seq <= up_to)){
		if(t->held[i].seq > t->last
				&& im_frame__decode(t->held[i].frame, t->held[i].len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS){
			deliver(c, t, h, body, blen);
			im__v1__header__free_unpacked(h, NULL);
		}
		free(t->held[i].frame);
		i++;
	}
	if(i == 0) return; /* also: held may still be NULL, and memmove(NULL) is undefined */
	memmove(t->held, t->held + i, (t->n_held - i) * sizeof(*t->held));
	t->n_held -= i;
}

static void on_frame(struct im_client *c, const uint8_t *frame, size_t len)
{
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;
	struct timeline *t;

	if(im_frame__decode(frame, len, NULL, &h, &body, &blen) != MOSQ_ERR_SUCCESS) return;
	t = find_tl(c, h->timeline);
	if(!check_store(c, h->has_store_id, h->store_id) || t == NULL || h->seq <= t->last){
		/* of a store we left, not ours, or a duplicate */
	}else if(h->body_omitted){
		/* Notify mode: the frame only says there is more; the bodies come
		 * by sync (which returns whole frames). */
		if(!t->syncing) start_sync(t);
	}else if(t->syncing){
		hold(t, h->seq, frame, len);
	}else if(h->seq == t->last + 1){
		deliver(c, t, h, body, blen);
		drain(c, t, 0);
	}else{
		hold(t, h->seq, frame, len); /* a gap: fill it by sync */
		start_sync(t);
	}
	im__v1__header__free_unpacked(h, NULL);
}

static void retry_later(struct timeline *t, uint32_t ms)
{
	t->want = true; /* still syncing: live frames stay held */
	t->retry_at = now_ms() + (ms ? ms : RETRY_MS);
}

/* A TOO_MANY that names no timeline (the plugin refuses before it reads
 * the request) is for one of the requests out. Answers to the others still
 * come; once every request out is accounted for by such a refusal, all of
 * them were refused: ask again after the wait. */
static void settle_refusals(struct im_client *c)
{
	int i, out = 0;

	if(c->anon_refused == 0) return;
	for(i = 0; i < c->n_tls; i++) out += c->tls[i].inflight;
	if(c->anon_refused < out) return;
	for(i = 0; i < c->n_tls; i++){
		if(!c->tls[i].inflight) continue;
		c->tls[i].inflight = false;
		retry_later(&c->tls[i], c->anon_retry_ms);
	}
	c->anon_refused = 0;
	c->anon_retry_ms = 0;
}

static void apply_batch(struct im_client *c, struct timeline *t, const Im__V1__SyncBatch *b)
{
	Im__V1__Header *h;
	const uint8_t *body;
	size_t i, blen;

	if(b->first_seq > t->last + 1){
		if(c->opt.verbose) fprintf(stderr, "imclient: %s: seqs %llu..%llu are gone (retention)\n", t->name,
				(unsigned long long)t->last + 1, (unsigned long long)b->first_seq - 1);
		t->last = b->first_seq - 1;
	}
	/* A batch is complete between its frames: a seq it skips was expired
	 * or trimmed, not lost. */
	for(i = 0; i < b->n_frames; i++){
		if(im_frame__decode(b->frames[i].data, b->frames[i].len, NULL, &h, &body, &blen) != MOSQ_ERR_SUCCESS) continue;
		if(h->seq > t->last) deliver(c, t, h, body, blen);
		im__v1__header__free_unpacked(h, NULL);
	}
	if(b->has_more || t->want){
		start_sync(t);
	}else{
		t->syncing = false;
		drain(c, t, b->head_seq);
		if(t->n_held > 0) start_sync(t); /* live frames lost in between */
		send_acks(c);
	}
}

static void on_batch(struct im_client *c, const uint8_t *buf, size_t len)
{
	Im__V1__SyncBatch *b = im__v1__sync_batch__unpack(NULL, len, buf);
	struct timeline *t;

	if(b == NULL) return;
	if(!check_store(c, b->has_store_id, b->store_id)) goto done;
	t = find_tl(c, b->timeline);
	if(t == NULL){
		if(b->status == IM__V1__STATUS__TOO_MANY){
			c->anon_refused++;
			if(b->retry_after_ms > c->anon_retry_ms) c->anon_retry_ms = b->retry_after_ms;
			settle_refusals(c);
		}
		goto done;
	}
	/* Only the answer to the request out for t counts; another is late:
	 * asked on an earlier connection (a persistent session's queue). */
	if(!t->inflight || (b->has_after_seq && b->after_seq != t->req_after)) goto done;
	t->inflight = false;
	if(b->status == IM__V1__STATUS__TOO_MANY){
		retry_later(t, b->retry_after_ms);
	}else if(b->status != IM__V1__STATUS__OK){
		fprintf(stderr, "imclient: sync %s refused: %d %s\n", t->name, b->status, b->reason ? b->reason : "");
		t->syncing = t->want;
	}else if(t->req_after > t->last){
		/* Asked from a `last` a store reset took back: its frames do not
		 * follow `last`. The request from 0 goes next. */
		start_sync(t);
	}else{
		apply_batch(c, t, b);
	}
	settle_refusals(c);
done:
	im__v1__sync_batch__free_unpacked(b, NULL);
}

static void on_ack_response(struct im_client *c, const uint8_t *buf, size_t len)
{
	Im__V1__AckResponse *r = im__v1__ack_response__unpack(NULL, len, buf);

	if(r == NULL) return;
	check_store(c, r->has_store_id, r->store_id);
	im__v1__ack_response__free_unpacked(r, NULL);
}

/* ---- events: read marks and typing ---- */

/* Reports a read mark once it is above the last one reported for (user,
 * timeline): live events and the marks asked for on connect overlap. */
static void report_read(struct im_client *c, const char *user, const char *timeline, uint64_t seq, int64_t ts_ms)
{
	Im__V1__Event ev = IM__V1__EVENT__INIT;
	struct mark *m = NULL;
	size_t i;

	if(c->opt.on_event == NULL || user == NULL || timeline == NULL || seq == 0) return;
	for(i = 0; i < c->n_marks && m == NULL; i++){
		if(!strcmp(c->marks[i].user, user) && !strcmp(c->marks[i].timeline, timeline)) m = &c->marks[i];
	}
	if(m && seq <= m->seq) return;
	if(m == NULL){
		if(c->n_marks == c->cap_marks){
			size_t cap = c->cap_marks ? c->cap_marks * 2 : 16;
			struct mark *grown = realloc(c->marks, cap * sizeof(*grown));
			if(grown == NULL) return;
			c->marks = grown;
			c->cap_marks = cap;
		}
		m = &c->marks[c->n_marks++];
		snprintf(m->user, sizeof(m->user), "%s", user);
		snprintf(m->timeline, sizeof(m->timeline), "%s", timeline);
	}
	m->seq = seq;
	ev.has_kind = 1;
	ev.kind = IM__V1__EVENT__KIND__READ;
	ev.user = (char *)user;
	ev.timeline = (char *)timeline;
	ev.has_seq = 1;
	ev.seq = seq;
	ev.has_ts_ms = 1;
	ev.ts_ms = ts_ms;
	c->opt.on_event(c->ud, &ev);
}

/* A frame on <prefix>/e/<timeline>: seq 0, an Event in the header. */
static void on_event_frame(struct im_client *c, const uint8_t *frame, size_t len)
{
	Im__V1__Header *h;
	const uint8_t *body;
	size_t blen;
	Im__V1__Event *e;

	if(im_frame__decode(frame, len, NULL, &h, &body, &blen) != MOSQ_ERR_SUCCESS) return;
	e = h->event;
	if(check_store(c, h->has_store_id, h->store_id) && e && h->seq == 0 && find_tl(c, h->timeline)){
		if(e->kind == IM__V1__EVENT__KIND__READ) report_read(c, e->user, e->timeline, e->seq, e->ts_ms);
		else if(e->kind == IM__V1__EVENT__KIND__TYPING && c->opt.on_event) c->opt.on_event(c->ud, e);
	}
	im__v1__header__free_unpacked(h, NULL);
}

/* One group's `reads` out at a time: a client in many groups stays far
 * under the plugin's request_inflight, and an answer without a timeline
 * (refused before the plugin read the request) still names its request. */
static void pump_reads(struct im_client *c)
{
	Im__V1__ReadsRequest r = IM__V1__READS_REQUEST__INIT;
	uint8_t buf[IM_TL_MAX + 16];
	int i;

	if(!c->connected || c->reads_out >= 0 || now_ms() < c->reads_retry_at) return;
	for(i = 0; i < c->n_tls; i++){
		if(!c->tls[i].want_reads) continue;
		c->tls[i].want_reads = false;
		c->reads_out = i;
		r.timeline = c->tls[i].name;
		request(c, "reads", buf, im__v1__reads_request__pack(&r, buf));
		return;
	}
}

/* Events reach only who is connected: on connect, ask how far the others
 * read (the peers' marks come with the conversation list; each group's
 * with `reads`). The answers go through report_read like live events. */
static void ask_marks(struct im_client *c)
{
	Im__V1__ConversationsRequest q = IM__V1__CONVERSATIONS_REQUEST__INIT;
	uint8_t buf[IM_TL_MAX + 16];
	int i;

	if(c->opt.on_event == NULL) return;
	q.has_limit = 1;
	q.limit = MARKS_CONVS;
	request(c, "conversations", buf, im__v1__conversations_request__pack(&q, buf));
	for(i = 0; i < c->n_tls; i++) c->tls[i].want_reads = c->tls[i].name[0] == 'g';
	c->reads_out = -1;
	pump_reads(c);
}

static void on_conversations(struct im_client *c, const uint8_t *buf, size_t len)
{
	Im__V1__ConversationsResponse *r = im__v1__conversations_response__unpack(NULL, len, buf);
	size_t i;

	if(r == NULL) return;
	if(check_store(c, r->has_store_id, r->store_id) && r->status == IM__V1__STATUS__OK){
		for(i = 0; i < r->n_conversations; i++){
			const Im__V1__Conversation *v = r->conversations[i];

			/* u/<peer>: how far the peer read its inbox, u/<peer> */
			if(v->timeline && !strncmp(v->timeline, "u/", 2)) report_read(c, v->timeline + 2, v->timeline, v->peer_read_seq, 0);
		}
	}
	im__v1__conversations_response__free_unpacked(r, NULL);
}

static void on_reads(struct im_client *c, const uint8_t *buf, size_t len)
{
	Im__V1__ReadsResponse *r = im__v1__reads_response__unpack(NULL, len, buf);
	size_t i;

	if(r == NULL) return;
	if(c->reads_out >= 0 && r->status == IM__V1__STATUS__TOO_MANY){
		c->tls[c->reads_out].want_reads = true;
		c->reads_retry_at = now_ms() + RETRY_MS;
	}
	c->reads_out = -1;
	if(check_store(c, r->has_store_id, r->store_id) && r->status == IM__V1__STATUS__OK && find_tl(c, r->timeline)){
		for(i = 0; i < r->n_marks; i++) report_read(c, r->marks[i]->user, r->timeline, r->marks[i]->seq, 0);
	}
	im__v1__reads_response__free_unpacked(r, NULL);
	pump_reads(c);
}

/* ---- libmosquitto callbacks ---- */

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
	struct im_client *c = ud;
	int i;

	if(rc != 0){
		fprintf(stderr, "imclient: connection refused: %s\n", mosquitto_connack_string(rc));
		c->refused = true;
		return;
	}
	c->connected = c->ever_connected = true;
	c->store_seen = false;
	c->anon_refused = 0;
	c->anon_retry_ms = 0;
	for(i = 0; i < c->n_tls; i++){
		char *topics[2] = {c->tls[i].topic, c->tls[i].events};

		/* one SUBACK for both: the timeline, and its events if wanted */
		mosquitto_subscribe_multiple(m, NULL, c->opt.on_event ? 2 : 1, topics, 1, 0, NULL);
	}
	/* Catch up before trusting live delivery: frames queued meanwhile are
	 * held until the sync is complete. Requests of the last connection
	 * are not answered on this one. */
	for(i = 0; i < c->n_tls; i++){
		c->tls[i].inflight = false;
		c->tls[i].retry_at = 0;
		start_sync(&c->tls[i]);
	}
	pump(c);
	ask_marks(c);
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc)
{
	struct im_client *c = ud;

	(void)m;
	(void)rc;
	c->connected = false;
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
	struct im_client *c = ud;
	size_t plen = strlen(c->opt.prefix);

	(void)m;
	if(!strcmp(msg->topic, "$CONTROL/im/v1/sync/response")){
		on_batch(c, msg->payload, (size_t)msg->payloadlen);
	}else if(!strcmp(msg->topic, "$CONTROL/im/v1/ack/response")){
		on_ack_response(c, msg->payload, (size_t)msg->payloadlen);
	}else if(!strcmp(msg->topic, "$CONTROL/im/v1/conversations/response")){
		on_conversations(c, msg->payload, (size_t)msg->payloadlen);
	}else if(!strcmp(msg->topic, "$CONTROL/im/v1/reads/response")){
		on_reads(c, msg->payload, (size_t)msg->payloadlen);
	}else if(!strncmp(msg->topic, c->opt.prefix, plen) && !strncmp(msg->topic + plen, "/e/", 3)){
		on_event_frame(c, msg->payload, (size_t)msg->payloadlen);
	}else if(strncmp(msg->topic, "$CONTROL/", 9)){
		on_frame(c, msg->payload, (size_t)msg->payloadlen);
	}
	pump(c);
}

/* ---- lifecycle ---- */

static int add_tl(struct im_client *c, const char *kind, const char *name)
{
	struct timeline *t;

	if(c->n_tls == MAX_TIMELINES || strlen(name) > IM_NAME_MAX) return -1;
	char tl[IM_TL_MAX + 1];

	snprintf(tl, sizeof(tl), "%s/%s", kind, name);
	t = &c->tls[c->n_tls++];
	memcpy(t->name, tl, sizeof(tl));
	snprintf(t->topic, sizeof(t->topic), "%s/%s", c->opt.prefix, tl);
	snprintf(t->events, sizeof(t->events), "%s/e/%s", c->opt.prefix, tl);
	return 0;
}

struct im_client *im_client_new(const struct im_client_options *opt, im_client_deliver_fn fn, void *ud)
{
	struct im_client *c;
	static char idbuf[128];
	int i;

	if(opt == NULL || opt->user == NULL || fn == NULL) return NULL;
	c = calloc(1, sizeof(*c));
	if(c == NULL) return NULL;
	c->opt = *opt;
	c->fn = fn;
	c->ud = ud;
	c->reads_out = -1;
	if(!c->opt.host) c->opt.host = "127.0.0.1";
	if(!c->opt.port) c->opt.port = 1883;
	if(!c->opt.prefix) c->opt.prefix = "im";
	if(!c->opt.sync_limit) c->opt.sync_limit = 500;
	if(!c->opt.client_id){
		snprintf(idbuf, sizeof(idbuf), "%s-imclient", opt->user);
		c->opt.client_id = idbuf;
	}
	add_tl(c, "u", opt->user);
	for(i = 0; opt->groups && opt->groups[i]; i++) add_tl(c, "g", opt->groups[i]);
	state_load(c);

	mosquitto_lib_init();
	/* A persistent session: frames sent while we are away are queued by
	 * the broker, and the algorithm drops the overlap with sync by seq. */
	c->mosq = mosquitto_new(c->opt.client_id, false, c);
	if(c->mosq == NULL){
		free(c);
		return NULL;
	}
	mosquitto_username_pw_set(c->mosq, opt->user, opt->password);
	if(opt->cafile) mosquitto_tls_set(c->mosq, opt->cafile, NULL, NULL, NULL, NULL);
	mosquitto_connect_callback_set(c->mosq, on_connect);
	mosquitto_disconnect_callback_set(c->mosq, on_disconnect);
	mosquitto_message_callback_set(c->mosq, on_message);
	mosquitto_reconnect_delay_set(c->mosq, 1, 5, true);
	return c;
}

static bool caught_up(const struct im_client *c)
{
	int i;

	for(i = 0; i < c->n_tls; i++){
		if(c->tls[i].syncing || c->tls[i].n_held) return false;
	}
	return c->connected;
}

int im_client_run(struct im_client *c, long max_messages, int idle_ms)
{
	int rc, backoff = 250;

	rc = mosquitto_connect(c->mosq, c->opt.host, c->opt.port, 30);
	if(rc != MOSQ_ERR_SUCCESS){
		fprintf(stderr, "imclient: cannot connect to %s:%d: %s\n", c->opt.host, c->opt.port,
				rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		return -1;
	}
	c->last_delivery_ms = c->last_ack_ms = now_ms();
	while(!c->stop){
		rc = mosquitto_loop(c->mosq, 100, 1);
		if(c->refused && !c->ever_connected) return -1;
		pump(c); /* retries after TOO_MANY */
		pump_reads(c);
		if(max_messages && c->delivered >= max_messages) break;
		if(c->connected && (c->unacked >= ACK_EVERY || (c->unacked && now_ms() - c->last_ack_ms > ACK_AFTER_MS))){
			send_acks(c);
		}
		if(idle_ms && caught_up(c) && now_ms() - c->last_delivery_ms > idle_ms) break;
		if(rc != MOSQ_ERR_SUCCESS){
			/* Lost the connection: wait a little, then try again; the
			 * session resumes and on_connect syncs. */
			c->connected = false;
			usleep((useconds_t)backoff * 1000);
			if(backoff < 4000) backoff *= 2;
			if(mosquitto_reconnect(c->mosq) == MOSQ_ERR_SUCCESS) backoff = 250;
			if(idle_ms && now_ms() - c->last_delivery_ms > idle_ms + 30000) break;
		}
	}
	if(c->connected){
		send_acks(c);
		mosquitto_loop(c->mosq, 100, 1);
		mosquitto_disconnect(c->mosq);
		mosquitto_loop(c->mosq, 100, 1);
	}
	return 0;
}

void im_client_stop(struct im_client *c)
{
	c->stop = true;
}

uint64_t im_client_last(const struct im_client *c, const char *timeline)
{
	int i;

	for(i = 0; i < c->n_tls; i++){
		if(!strcmp(c->tls[i].name, timeline)) return c->tls[i].last;
	}
	return 0;
}

void im_client_free(struct im_client *c)
{
	int i;

	if(c == NULL) return;
	for(i = 0; i < c->n_tls; i++){
		free_held(&c->tls[i]);
		free(c->tls[i].held);
	}
	mosquitto_destroy(c->mosq);
	mosquitto_lib_cleanup();
	free(c->other_state);
	free(c->marks);
	free(c);
}
