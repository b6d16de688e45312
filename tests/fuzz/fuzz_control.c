/*
 * Fuzz target: the whole plugin as the broker drives it, without a broker.
 *
 * Every source of the mosquitto_im target is linked in; broker_stubs.c
 * stands in for the broker. mosquitto_plugin_init runs once with a real
 * SQLite store in a temporary folder (bodies encrypted at rest with a test
 * key, as plugin_opt_store_key_file); each input is then one event from
 * one client:
 *
 *   byte 0, bits 0-1  0 sync, 1 ack, 2 group request, 3 a publish
 *           bits 2-4  who: alice, bob, root (admin), carol, no username,
 *                      "émile", "a/b" (not a valid IM name), "x"
 *           bit 5     request parameters as v5 user properties (else the
 *                      rest is the protobuf payload)
 *           bit 6     with a Response Topic and Correlation Data
 *           bit 7     publish: retain flag
 *   requests: the rest is the payload, or "k\0v\0k\0v..." user properties
 *   publish:  "topic\0" then (bit 5) "k\0v\0...\0\0" user properties, then
 *             the body.
 *
 * The broker refuses non-UTF-8 strings and bad topics before a plugin sees
 * them, so such inputs are skipped the same way (libmosquitto's checks).
 *
 * Invariants, beyond no crash / leak / UB:
 *  - every request gets exactly one reply, to the requesting client, on
 *    its Response Topic or "$CONTROL/im/v1/<op>/response", decoding as the
 *    op's reply type, with a status;
 *  - a refused request changes nothing (messages, groups, members,
 *    cursors) and a sync never changes anything;
 *  - a sync batch only holds frames of a timeline the user may read, in
 *    increasing seq order above after_seq, at most sync_max_frames;
 *  - READ of im/u/<x> is allowed only to user x; of im/g/<g> only to its
 *    members; SUBSCRIBE to a non-wildcard im/u/<x> only to x;
 *  - a stored publish is retargeted to $IMD, and every frame the plugin
 *    delivers names the authenticated user as sender.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>
#include <sqlite3.h>

#include "base/config.h"
#include "base/limits.h"
#include "base/name.h"
#include "codec/frame.h"
#include "codec/route.h"
#include "broker_stubs.h"
#include "fuzz_common.h"

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions);
int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count);
int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count);

#define MAX_FRAMES 16
/* The token login's secret; corpus/fuzz_auth/ has tokens signed with it. */
#define FUZZ_JWT_SECRET "fuzz-secret-0123456789abcdef0123456789abcdef"

static char g_dir[] = "/tmp/im-fuzz-XXXXXX";
static char g_db[128];
static char g_keys[128];
static char g_secret[128];
static void *g_userdata;
static sqlite3 *g_ro;          /* the harness's own view of the store */
static struct mosquitto_opt g_opts[12];
static int g_nopts;

static const char *const users[8] = {"alice", "bob", "root", "carol", NULL, "\xc3\xa9mile", "a/b", "x"};

static void cleanup(void)
{
	char path[192];
	const char *sfx[] = {"", "-wal", "-shm"};
	size_t i;

	if(g_userdata) mosquitto_plugin_cleanup(g_userdata, g_opts, g_nopts);
	g_userdata = NULL;
	if(g_ro) sqlite3_close(g_ro);
	g_ro = NULL;
	for(i = 0; i < 3; i++){
		snprintf(path, sizeof(path), "%s%s", g_db, sfx[i]);
		unlink(path);
	}
	unlink(g_keys);
	unlink(g_secret);
	rmdir(g_dir);
}

static void opt(const char *k, const char *v)
{
	g_opts[g_nopts].key = (char *)k;
	g_opts[g_nopts].value = (char *)v;
	g_nopts++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int versions[] = {5, 4};
	FILE *f;

	(void)argc;
	(void)argv;
	FUZZ_ASSERT(mkdtemp(g_dir) != NULL);
	snprintf(g_db, sizeof(g_db), "%s/im.db", g_dir);
	snprintf(g_keys, sizeof(g_keys), "%s/keys", g_dir);
	f = fopen(g_keys, "w");
	FUZZ_ASSERT(f != NULL);
	fprintf(f, "# bodies encrypted at rest, as plugin_opt_store_key_file\n"
			"1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n");
	fclose(f);
	snprintf(g_secret, sizeof(g_secret), "%s/jwt-secret", g_dir);
	f = fopen(g_secret, "w");
	FUZZ_ASSERT(f != NULL);
	fputs(FUZZ_JWT_SECRET, f);
	fclose(f);
	opt("auth_jwt_secret_file", g_secret);
	opt("db_path", g_db);
	/* Comment this out to fuzz a plain store. */
	opt("store_key_file", g_keys);
	opt("admins", "root");
	opt("max_group_members", "40");
	opt("sync_max_frames", "16");
	opt("sync_max_bytes", "4096");
	opt("max_body", "2048");
	FUZZ_ASSERT(mosquitto_plugin_version(2, versions) == 5);
	FUZZ_ASSERT(mosquitto_plugin_init((mosquitto_plugin_id_t *)&g_userdata, &g_userdata, g_opts, g_nopts) == MOSQ_ERR_SUCCESS);
	FUZZ_ASSERT(sqlite3_open_v2(g_db, &g_ro, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
	atexit(cleanup);
	return 0;
}

/* ---- the harness's view of the store ---- */

struct state { long long msgs, groups, members, cursors; };

static long long q1(const char *sql, const char *arg1, const char *arg2)
{
	sqlite3_stmt *s;
	long long v = -1;

	FUZZ_ASSERT(sqlite3_prepare_v2(g_ro, sql, -1, &s, NULL) == SQLITE_OK);
	if(arg1) sqlite3_bind_text(s, 1, arg1, -1, SQLITE_TRANSIENT);
	if(arg2) sqlite3_bind_text(s, 2, arg2, -1, SQLITE_TRANSIENT);
	if(sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return v;
}

static struct state state_now(void)
{
	struct state st;

	st.msgs = q1("SELECT count(*) FROM messages", NULL, NULL);
	st.groups = q1("SELECT count(*) FROM groups", NULL, NULL);
	st.members = q1("SELECT count(*) FROM members", NULL, NULL);
	st.cursors = q1("SELECT coalesce(sum(seq), 0) + count(*) FROM cursors", NULL, NULL);
	return st;
}

static bool same_state(struct state a, struct state b)
{
	return a.msgs == b.msgs && a.groups == b.groups && a.members == b.members && a.cursors == b.cursors;
}

static bool is_member(const char *group, size_t glen, const char *user)
{
	char g[IM_NAME_MAX + 1];

	if(glen > IM_NAME_MAX || user == NULL) return false;
	memcpy(g, group, glen);
	g[glen] = '\0';
	return q1("SELECT count(*) FROM members WHERE grp = ?1 AND user = ?2", g, user) > 0;
}

/* ---- building the event ---- */

/* Appends "k\0v\0" pairs from p..end as user properties; stops at an
 * empty key (consumed) or the end. Skips what the broker would refuse. */
static const uint8_t *add_pairs(const uint8_t *p, const uint8_t *end, mosquitto_property **props, bool stop_at_empty)
{
	while(p < end){
		const uint8_t *k = p, *kz = memchr(p, 0, (size_t)(end - p)), *v, *vz;
		if(kz == NULL) return end;
		if(kz == k && stop_at_empty) return kz + 1;
		v = kz + 1;
		vz = v < end ? memchr(v, 0, (size_t)(end - v)) : NULL;
		if(vz == NULL) vz = end;
		/* Values cut at the end of the input are still NUL-terminated by
		 * copying. */
		{
			size_t vl = (size_t)(vz - v);
			char *vs = malloc(vl + 1);
			FUZZ_ASSERT(vs != NULL);
			memcpy(vs, v, vl);
			vs[vl] = '\0';
			mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, (const char *)k, vs);
			free(vs);
		}
		p = vz < end ? vz + 1 : end;
	}
	return end;
}

static int call(int event, void *ed, const char *topic)
{
	int i, rc = MOSQ_ERR_PLUGIN_DEFER;

	for(i = 0; i < stub_n_cbs; i++){
		if(stub_cbs[i].event != event) continue;
		if(event == MOSQ_EVT_CONTROL && strcmp(stub_cbs[i].topic, topic)) continue;
		rc = stub_cbs[i].cb(event, ed, stub_cbs[i].userdata);
		if(event != MOSQ_EVT_ACL_CHECK || rc != MOSQ_ERR_PLUGIN_DEFER) return rc;
	}
	return rc;
}

/* ---- checks of replies ---- */

static const char *const ops[] = {"sync", "ack", "group"};

static void check_sync(const struct stub_pub *r, const char *user, int *status)
{
	Im__V1__SyncBatch *b = im__v1__sync_batch__unpack(NULL, r->len, r->payload);
	struct im__route rt;
	uint64_t last;
	size_t i;

	FUZZ_ASSERT(b != NULL && b->has_status);
	*status = b->status;
	if(b->status == IM__V1__STATUS__OK){
		FUZZ_ASSERT(b->timeline && im_route__parse_timeline(b->timeline, &rt) == MOSQ_ERR_SUCCESS);
		FUZZ_ASSERT(user != NULL);
		if(rt.kind == 'u') FUZZ_ASSERT(strlen(user) == rt.name_len && !memcmp(user, rt.name, rt.name_len));
		else FUZZ_ASSERT(is_member(rt.name, rt.name_len, user));
		FUZZ_ASSERT(b->n_frames <= MAX_FRAMES);
		last = b->after_seq;
		for(i = 0; i < b->n_frames; i++){
			Im__V1__Header *h;
			const uint8_t *body;
			size_t blen;
			FUZZ_ASSERT(im_frame__decode(b->frames[i].data, b->frames[i].len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS);
			FUZZ_ASSERT(h->seq > last && h->seq <= b->head_seq);
			FUZZ_ASSERT(h->timeline && !strcmp(h->timeline, b->timeline));
			last = h->seq;
			im__v1__header__free_unpacked(h, NULL);
		}
	}else{
		FUZZ_ASSERT(b->n_frames == 0);
	}
	im__v1__sync_batch__free_unpacked(b, NULL);
}

static void check_reply(int op, const char *user, const char *resp_topic, struct state before)
{
	const struct stub_pub *r = NULL;
	char want[64];
	int status = -1, i, replies = 0;

	/* Exactly one reply to the client; anything else is the system
	 * message of a group change, from this user, to the group, the
	 * membership news it sends to the users it names (issue #23), or the
	 * read-mark event an ack sends (issue #15): on im/e/, seq 0, this
	 * user's mark. */
	for(i = 0; i < stub_n_pubs; i++){
		const struct stub_pub *d = &stub_pubs[i];
		Im__V1__Header *h;
		const uint8_t *body;
		size_t blen;

		if(d->client_id){
			FUZZ_ASSERT(!strcmp(d->client_id, "fuzz-client"));
			r = d;
			replies++;
			continue;
		}
		if(op == 1 && !strncmp(d->topic, "im/e/", 5)){
			FUZZ_ASSERT(im_frame__decode(d->payload, d->len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS);
			FUZZ_ASSERT(h->seq == 0 && h->event != NULL);
			FUZZ_ASSERT(h->event->kind == IM__V1__EVENT__KIND__READ);
			FUZZ_ASSERT(h->event->user && user && !strcmp(h->event->user, user));
			im__v1__header__free_unpacked(h, NULL);
			continue;
		}
		if(op == 2 && !strncmp(d->topic, "im/e/u/", 7)){
			/* Membership news of a group change (PROTOCOL.md 11.1): to
			 * the user it names, on that user's own event topic. */
			FUZZ_ASSERT(im_frame__decode(d->payload, d->len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS);
			FUZZ_ASSERT(h->seq == 0 && h->event != NULL);
			FUZZ_ASSERT(h->event->kind == IM__V1__EVENT__KIND__MEMBERSHIP && h->event->has_member);
			FUZZ_ASSERT(h->event->user && !strcmp(h->event->user, d->topic + 7));
			FUZZ_ASSERT(h->event->timeline && !strncmp(h->event->timeline, "g/", 2));
			im__v1__header__free_unpacked(h, NULL);
			continue;
		}
		FUZZ_ASSERT(op == 2 && !strncmp(d->topic, "im/g/", 5));
		FUZZ_ASSERT(im_frame__decode(d->payload, d->len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS);
		FUZZ_ASSERT(h->flags & IM__V1__HEADER_FLAG__FLAG_SYSTEM);
		FUZZ_ASSERT(h->sender && user && !strcmp(h->sender, user));
		FUZZ_ASSERT(h->timeline && !strcmp(h->timeline, d->topic + 3));
		im__v1__header__free_unpacked(h, NULL);
	}
	FUZZ_ASSERT(replies == 1);
	snprintf(want, sizeof(want), "$CONTROL/im/v1/%s/response", ops[op]);
	FUZZ_ASSERT(!strcmp(r->topic, resp_topic ? resp_topic : want));
	if(op == 0){
		check_sync(r, user, &status);
	}else if(op == 1){
		Im__V1__AckResponse *a = im__v1__ack_response__unpack(NULL, r->len, r->payload);
		FUZZ_ASSERT(a != NULL && a->has_status);
		status = a->status;
		if(status == IM__V1__STATUS__OK) FUZZ_ASSERT(a->cursor <= a->head_seq);
		im__v1__ack_response__free_unpacked(a, NULL);
	}else{
		Im__V1__GroupResponse *g = im__v1__group_response__unpack(NULL, r->len, r->payload);
		FUZZ_ASSERT(g != NULL && g->has_status);
		status = g->status;
		if(status == IM__V1__STATUS__OK && g->op && !strcmp(g->op, "info") && strcmp(user, "root")){
			FUZZ_ASSERT(g->group && is_member(g->group, strlen(g->group), user));
		}
		im__v1__group_response__free_unpacked(g, NULL);
	}
	FUZZ_ASSERT(protobuf_c_enum_descriptor_get_value(&im__v1__status__descriptor, status) != NULL);
	if(status != IM__V1__STATUS__OK || op == 0){
		FUZZ_ASSERT(same_state(before, state_now()));  /* refused (or read-only): nothing changed */
	}
	if(user == NULL) FUZZ_ASSERT(status != IM__V1__STATUS__OK);
	/* A user whose name is not a valid IM name can do nothing (found by
	 * this target: tests/fuzz/corpus/fuzz_control/group-create-by-invalid-username). */
	if(user && !im_name__valid(user, strlen(user))){
		FUZZ_ASSERT(status != IM__V1__STATUS__OK);
	}
}

/* ---- a publish ---- */

static void check_read_acl(struct mosquitto *cl, const char *topic)
{
	struct mosquitto_evt_acl_check acl;
	struct im__config cfg;
	struct im__route rt;
	int rc;

	memset(&cfg, 0, sizeof(cfg));
	cfg.prefix = "im";
	cfg.prefix_len = 2;
	memset(&acl, 0, sizeof(acl));
	acl.client = cl;
	acl.topic = topic;
	acl.access = MOSQ_ACL_READ;
	acl.qos = 1;
	rc = call(MOSQ_EVT_ACL_CHECK, &acl, NULL);
	if(rc == MOSQ_ERR_SUCCESS && im_route__in_namespace(&cfg, topic)){
		FUZZ_ASSERT(cl->username != NULL);
		FUZZ_ASSERT(im_route__parse_topic(&cfg, topic, &rt) == MOSQ_ERR_SUCCESS);
		if(rt.kind == 'u'){
			FUZZ_ASSERT(strlen(cl->username) == rt.name_len && !memcmp(cl->username, rt.name, rt.name_len));
		}else{
			FUZZ_ASSERT(is_member(rt.name, rt.name_len, cl->username));
		}
	}
	if(!strncmp(topic, "$IMD", 4)) FUZZ_ASSERT(rc != MOSQ_ERR_SUCCESS);

	if(mosquitto_sub_topic_check(topic) == MOSQ_ERR_SUCCESS && !strpbrk(topic, "+#")){
		acl.access = MOSQ_ACL_SUBSCRIBE;
		rc = call(MOSQ_EVT_ACL_CHECK, &acl, NULL);
		if(rc == MOSQ_ERR_SUCCESS && im_route__parse_topic(&cfg, topic, &rt) == MOSQ_ERR_SUCCESS && rt.kind == 'u'){
			FUZZ_ASSERT(cl->username && strlen(cl->username) == rt.name_len
					&& !memcmp(cl->username, rt.name, rt.name_len));
		}
	}
	stub_reset_pubs();
}

static void publish(struct mosquitto *cl, const uint8_t *p, const uint8_t *end, bool with_props,
		bool retain, bool resp)
{
	const uint8_t *tz = memchr(p, 0, (size_t)(end - p));
	struct mosquitto_evt_acl_check acl;
	struct mosquitto_evt_message msg;
	mosquitto_property *props = NULL;
	struct state before;
	char *topic, topic_copy[128];
	int rc, i;

	if(tz == NULL) return;
	topic = strdup((const char *)p);
	FUZZ_ASSERT(topic != NULL);
	/* What the broker refuses before any plugin sees it. */
	if(mosquitto_validate_utf8(topic, (int)strlen(topic)) != MOSQ_ERR_SUCCESS
			|| mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS){
		free(topic);
		return;
	}
	check_read_acl(cl, topic);
	snprintf(topic_copy, sizeof(topic_copy), "%s", topic);
	p = tz + 1;
	if(with_props) p = add_pairs(p, end, &props, true);
	if(resp) mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, "reply/fuzz");
	before = state_now();

	memset(&acl, 0, sizeof(acl));
	acl.client = cl;
	acl.topic = topic;
	acl.payload = p;
	acl.payloadlen = (uint32_t)(end - p);
	acl.properties = props;
	acl.access = MOSQ_ACL_WRITE;
	acl.qos = 1;
	acl.retain = retain;
	rc = call(MOSQ_EVT_ACL_CHECK, &acl, NULL);
	/* A reply to an unknown $CONTROL op may be published from the ACL
	 * check; anything else must not be. */
	for(i = 0; i < stub_n_pubs; i++) FUZZ_ASSERT(!strncmp(stub_pubs[i].topic, "$CONTROL/im/v1/", 15));
	stub_reset_pubs();
	if(rc != MOSQ_ERR_SUCCESS || !strncmp(topic, "$CONTROL/", 9)){
		FUZZ_ASSERT(same_state(before, state_now()));
		goto out;
	}
	memset(&msg, 0, sizeof(msg));
	msg.client = cl;
	msg.topic = topic;
	msg.payload = (void *)p;
	msg.payloadlen = (uint32_t)(end - p);
	msg.properties = props;
	msg.qos = 1;
	msg.retain = retain;
	rc = call(MOSQ_EVT_MESSAGE, &msg, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		FUZZ_ASSERT(stub_n_pubs == 0);
		FUZZ_ASSERT(same_state(before, state_now()));
		goto out;
	}
	if(strncmp(topic_copy, "im/", 3)) goto out; /* not ours: untouched */
	FUZZ_ASSERT(!strcmp(topic, "$IMD"));
	if(!strncmp(topic_copy, "im/g/", 5)){
		FUZZ_ASSERT(is_member(topic_copy + 5, strlen(topic_copy + 5), cl->username));
	}
	for(i = 0; i < stub_n_pubs; i++){
		const struct stub_pub *d = &stub_pubs[i];
		Im__V1__Header *h;
		const uint8_t *body;
		size_t blen;

		if(!strcmp(d->topic, "reply/fuzz")) continue;  /* the receipt */
		FUZZ_ASSERT(d->client_id == NULL && !d->retain);
		FUZZ_ASSERT(im_frame__decode(d->payload, d->len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS);
		FUZZ_ASSERT(h->sender && cl->username && !strcmp(h->sender, cl->username));
		FUZZ_ASSERT(blen == (size_t)(end - p) && (blen == 0 || !memcmp(body, p, blen)));
		im__v1__header__free_unpacked(h, NULL);
	}
out:
	stub_reset_pubs();
	mosquitto_property_free_all(&props);
	free(topic);
}

#ifdef FUZZ_AUTH
/* fuzz_auth: MOSQ_EVT_BASIC_AUTH (token login). Byte 0 picks the username
 * (as above), the rest is the password. A login is accepted only for a
 * password that is a JWT (three dot-separated parts) whose sub is the
 * username; anything not shaped like a JWT is deferred. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mosquitto cl;
	struct mosquitto_evt_basic_auth ed;
	char *pw, *dot1, *dot2;
	int rc;

	if(size < 1) return 0;
	cl.id = "fuzz-client";
	cl.username = users[data[0] & 7];
	cl.protocol_version = 4;
	pw = malloc(size);
	FUZZ_ASSERT(pw != NULL);
	memcpy(pw, data + 1, size - 1);
	pw[size - 1] = '\0';
	memset(&ed, 0, sizeof(ed));
	ed.client = &cl;
	ed.username = (char *)cl.username;
	ed.password = pw;
	rc = call(MOSQ_EVT_BASIC_AUTH, &ed, NULL);
	if(getenv("FUZZ_LOG")) fprintf(stderr, "fuzz_auth: user %s: rc %d\n", cl.username ? cl.username : "(none)", rc);
	FUZZ_ASSERT(rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_AUTH || rc == MOSQ_ERR_PLUGIN_DEFER);
	if(rc == MOSQ_ERR_SUCCESS){
		dot1 = strchr(pw, '.');
		dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
		FUZZ_ASSERT(dot2 != NULL && strchr(dot2 + 1, '.') == NULL);
		FUZZ_ASSERT(cl.username != NULL);
		FUZZ_ASSERT(strstr(pw, "eyJhbGciOiJub25l") == NULL);   /* never alg "none" */
	}
	FUZZ_ASSERT(stub_n_pubs == 0);
	free(pw);
	return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mosquitto cl;
	struct mosquitto_evt_control ed;
	mosquitto_property *props = NULL;
	const uint8_t *end = data + size;
	struct state before;
	char topic[64];
	int op;
	bool with_props, resp;

	if(size < 1) return 0;
	op = data[0] & 3;
	with_props = data[0] & 0x20;
	resp = data[0] & 0x40;
	cl.id = "fuzz-client";
	cl.username = users[(data[0] >> 2) & 7];
	cl.protocol_version = 5;
	stub_reset_pubs();

	if(op == 3){
		publish(&cl, data + 1, end, with_props, data[0] & 0x80, resp);
		return 0;
	}

	memset(&ed, 0, sizeof(ed));
	if(with_props){
		add_pairs(data + 1, end, &props, false);
	}else{
		ed.payload = data + 1;
		ed.payloadlen = (uint32_t)(size - 1);
	}
	if(resp){
		mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, "reply/fuzz");
		mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, "c", 1);
	}
	snprintf(topic, sizeof(topic), "$CONTROL/im/v1/%s", ops[op]);
	ed.client = &cl;
	ed.topic = topic;
	ed.properties = props;
	ed.qos = 1;
	before = state_now();
	FUZZ_ASSERT(call(MOSQ_EVT_CONTROL, &ed, topic) == MOSQ_ERR_SUCCESS);
	check_reply(op, cl.username, resp ? "reply/fuzz" : NULL, before);
	stub_reset_pubs();
	mosquitto_property_free_all(&props);
	return 0;
}
#endif
