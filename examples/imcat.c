/*
 * imcat: turns mosquitto-im payloads into readable lines or JSON.
 *
 *   mosquitto_sub -u bob -t im/u/bob -F '%x' | imcat
 *   mosquitto_rr ... -F '%x' | imcat          (sync batches, receipts, ...)
 *   imcat --bin < payload.bin
 *
 * Each input line is one payload in hex (what mosquitto_sub -F '%x'
 * prints). A payload that starts with the frame magic is a frame (a
 * message, or an event from <prefix>/e/...: a read mark, typing); anything
 * else is tried as SyncBatch, Receipt, AckResponse, ReadsResponse,
 * ConversationsResponse, GroupResponse and Response in turn.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>

#include <mosquitto-im/client.h>

#include "im.pb-c.h"
#include "im_print.h"

static int json;

static void print_time(int64_t ms)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;
	char buf[32];

	gmtime_r(&s, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	printf("%s.%03dZ", buf, (int)(ms % 1000));
}

static void json_str(const char *key, const char *s, size_t len)
{
	size_t i;

	if(key) printf("\"%s\":", key);
	putchar('"');
	for(i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		if(c == '"' || c == '\\') printf("\\%c", c);
		else if(c < 0x20) printf("\\u%04x", c);
		else putchar(c);
	}
	putchar('"');
}

static void json_field(const char *key, const char *s)
{
	putchar(',');
	json_str(key, s ? s : "", s ? strlen(s) : 0);
}

static void json_change(uint32_t flags)
{
	static const struct { uint32_t bit; const char *name; } f[] = {
		{IM__V1__HEADER_FLAG__FLAG_EDIT, "edit"}, {IM__V1__HEADER_FLAG__FLAG_RECALL, "recall"},
		{IM__V1__HEADER_FLAG__FLAG_EDITED, "edited"}, {IM__V1__HEADER_FLAG__FLAG_RECALLED, "recalled"}};
	size_t i;

	for(i = 0; i < sizeof(f) / sizeof(f[0]); i++){
		if(flags & f[i].bit) printf(",\"%s\":true", f[i].name);
	}
}

/* An event frame (seq 0, on <prefix>/e/<timeline>): who read how far, who
 * is typing, who joined. */
static void print_event(const struct mim_frame *f, const char *indent)
{
	const struct mim_message *h = &f->msg;
	bool read = f->event_kind == 1, typing = f->event_kind == 2, member = f->event_kind == 3;

	if(json){
		printf("{");
		json_str("timeline", h->timeline ? h->timeline : "", h->timeline ? strlen(h->timeline) : 0);
		printf(",\"seq\":0");
		json_field("from", h->sender);
		printf(",\"ts_ms\":%" PRId64 ",\"event\":{\"kind\":\"%s\"", h->ts_ms,
				read ? "read" : typing ? "typing" : member ? "membership" : "unknown");
		json_field("user", f->event_user);
		json_field("timeline", f->event_timeline);
		if(f->has_event_seq) printf(",\"seq\":%" PRIu64, f->event_seq);
		if(f->event_has_typing || typing) printf(",\"typing\":%s", !f->event_has_typing || f->event_typing ? "true" : "false");
		if(member) printf(",\"member\":%s", f->event_member ? "true" : "false");
		printf(",\"ts_ms\":%" PRId64 "}}\n", f->event_ts_ms);
		return;
	}
	printf("%s%s event ", indent, h->timeline ? h->timeline : "?");
	print_time(f->event_ts_ms ? f->event_ts_ms : h->ts_ms);
	printf(" %s: ", f->event_user ? f->event_user : "?");
	if(read) printf("read %s up to #%" PRIu64 "\n", f->event_timeline ? f->event_timeline : "?", f->event_seq);
	else if(typing) printf("%s in %s\n", !f->event_has_typing || f->event_typing ? "typing" : "stopped typing",
			f->event_timeline ? f->event_timeline : "?");
	else if(member) printf("%s %s\n", f->event_member ? "joined" : "left", f->event_timeline ? f->event_timeline : "?");
	else printf("event of kind %d\n", f->event_kind);
}

static void print_body(const uint8_t *b, size_t n)
{
	size_t i;
	int text = 1;

	for(i = 0; i < n; i++){
		if(b[i] < 0x20 && b[i] != '\n' && b[i] != '\t') text = 0;
	}
	if(text){
		fwrite(b, 1, n, stdout);
	}else{
		printf("<%zu bytes:", n);
		for(i = 0; i < n && i < 32; i++) printf(" %02x", b[i]);
		printf(n > 32 ? " ...>" : ">");
	}
}

/* Returns 0 if buf was a frame and was printed (decoded by the client
 * library: libmosquitto-im-client's mim_frame_parse). */
static int print_frame(const uint8_t *buf, size_t len, const char *indent)
{
	struct mim_frame *f = mim_frame_parse(buf, len);
	const struct mim_message *h;

	if(f == NULL) return -1;
	h = &f->msg;
	if(f->event_kind){
		print_event(f, indent);
	}else if(json){
		printf("{");
		json_str("timeline", h->timeline ? h->timeline : "", h->timeline ? strlen(h->timeline) : 0);
		printf(",\"seq\":%" PRIu64 ",", h->seq);
		json_str("from", h->sender ? h->sender : "", h->sender ? strlen(h->sender) : 0);
		printf(",\"ts_ms\":%" PRId64, h->ts_ms);
		if(h->cmid){ putchar(','); json_str("cmid", h->cmid, strlen(h->cmid)); }
		if(h->to){ putchar(','); json_str("to", h->to, strlen(h->to)); }
		if(h->content_type){ putchar(','); json_str("content_type", h->content_type, strlen(h->content_type)); }
		if(h->body_omitted) printf(",\"body_omitted\":true,\"body_len\":%u", h->body_len);
		if(h->flags) printf(",\"flags\":%u", h->flags);
		json_change(h->flags);
		if(h->ref_seq) printf(",\"ref_seq\":%" PRIu64, h->ref_seq);
		if(h->peer_seq) printf(",\"peer_seq\":%" PRIu64, h->peer_seq);
		putchar(',');
		json_str("body", h->body ? (const char *)h->body : "", h->body ? h->len : 0);
		printf("}\n");
	}else{
		printf("%s%s #%" PRIu64 " ", indent, h->timeline ? h->timeline : "?", h->seq);
		print_time(h->ts_ms);
		printf(" %s", h->sender ? h->sender : "?");
		if(h->to && h->timeline && strcmp(h->to, h->timeline)) printf(" -> %s", h->to);
		if(h->cmid) printf(" [%s]", h->cmid);
		if(h->flags & MIM_FLAG_SYSTEM) printf(" (system)");
		im_print_change(h->flags, h->ref_seq);
		printf(": ");
		if(h->body_omitted) printf("<%u bytes, sync to read>", h->body_len);
		else if(f->not_inflated) printf("<%zu bytes that do not inflate>", f->wire_body_len);
		else print_body(h->body, h->len);
		printf("\n");
	}
	mim_frame_free(f);
	return 0;
}

static const char *status_name(int s)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&im__v1__status__descriptor, s);
	return v ? v->name : "?";
}

static int print_batch(const uint8_t *buf, size_t len)
{
	Im__V1__SyncBatch *b = im__v1__sync_batch__unpack(NULL, len, buf);
	size_t i;

	if(b == NULL || !b->has_head_seq){
		if(b) im__v1__sync_batch__free_unpacked(b, NULL);
		return -1;
	}
	for(i = 0; i < b->n_frames; i++){
		if(b->frames[i].len < 2 || b->frames[i].data[0] != 'I' || b->frames[i].data[1] != 'M'){
			im__v1__sync_batch__free_unpacked(b, NULL);
			return -1; /* not frames: another reply of the same shape */
		}
	}
	if(!json){
		printf("sync %s: %s%s%s, %zu frames, head %" PRIu64 ", first %" PRIu64 ", cursor %" PRIu64
				", unread %" PRIu64 "%s\n",
				b->timeline ? b->timeline : "?", status_name(b->status),
				b->reason ? " " : "", b->reason ? b->reason : "", b->n_frames, b->head_seq,
				b->first_seq, b->cursor, b->unread, b->has_more ? ", more" : "");
	}
	for(i = 0; i < b->n_frames; i++) print_frame(b->frames[i].data, b->frames[i].len, "  ");
	im__v1__sync_batch__free_unpacked(b, NULL);
	return 0;
}

/* ReadsResponse: the read marks of a conversation. Its shape is an
 * AckResponse's with marks for the cursor: tried after it, and only taken
 * with a head_seq (an AckResponse with one always has a cursor). */
static int print_reads(const uint8_t *buf, size_t len)
{
	Im__V1__ReadsResponse *r = im__v1__reads_response__unpack(NULL, len, buf);
	size_t i;

	if(r == NULL || (!r->has_head_seq && r->n_marks == 0)){
		if(r) im__v1__reads_response__free_unpacked(r, NULL);
		return -1;
	}
	if(json){
		printf("{");
		json_str("reads", r->timeline ? r->timeline : "", r->timeline ? strlen(r->timeline) : 0);
		printf(",\"status\":%d,\"head_seq\":%" PRIu64 ",\"marks\":[", r->status, r->head_seq);
		for(i = 0; i < r->n_marks; i++){
			printf("%s{", i ? "," : "");
			json_str("user", r->marks[i]->user ? r->marks[i]->user : "", r->marks[i]->user ? strlen(r->marks[i]->user) : 0);
			printf(",\"seq\":%" PRIu64 "}", r->marks[i]->seq);
		}
		printf("]}\n");
	}else{
		printf("reads %s: %s, head %" PRIu64 "%s", r->timeline ? r->timeline : "?", status_name(r->status), r->head_seq,
				r->n_marks ? ":" : ", no read marks");
		for(i = 0; i < r->n_marks; i++){
			printf("%s %s #%" PRIu64, i ? "," : "", r->marks[i]->user ? r->marks[i]->user : "?", r->marks[i]->seq);
		}
		putchar('\n');
	}
	im__v1__reads_response__free_unpacked(r, NULL);
	return 0;
}

static void print_conv(const Im__V1__Conversation *c)
{
	if(json){
		printf("{");
		json_str("timeline", c->timeline ? c->timeline : "", c->timeline ? strlen(c->timeline) : 0);
		printf(",\"last_seq\":%" PRIu64 ",\"last_ts_ms\":%" PRId64, c->last_seq, c->last_ts_ms);
		json_field("last_sender", c->last_sender);
		printf(",\"last_flags\":%u,\"unread\":%" PRIu64, c->last_flags, c->unread);
		if(c->has_peer_read_seq) printf(",\"peer_read_seq\":%" PRIu64, c->peer_read_seq);
		if(c->last_preview) json_field("last_preview", c->last_preview);
		printf("}");
		return;
	}
	printf("  %s #%" PRIu64 " ", c->timeline ? c->timeline : "?", c->last_seq);
	print_time(c->last_ts_ms);
	printf(" %s", c->last_sender ? c->last_sender : "?");
	if(c->last_flags & IM__V1__HEADER_FLAG__FLAG_SYSTEM) printf(" (system)");
	im_print_change(c->last_flags, 0);
	printf(", unread %" PRIu64, c->unread);
	if(c->has_peer_read_seq) printf(", peer read #%" PRIu64, c->peer_read_seq);
	printf(": %s\n", c->last_preview ? c->last_preview : "<no preview>");
}

/* ConversationsResponse: one page of the conversation list. */
static int print_convs(const uint8_t *buf, size_t len)
{
	Im__V1__ConversationsResponse *r = im__v1__conversations_response__unpack(NULL, len, buf);
	size_t i;

	if(r == NULL || !r->has_has_more){
		if(r) im__v1__conversations_response__free_unpacked(r, NULL);
		return -1;
	}
	if(json) printf("{\"status\":%d,\"has_more\":%s,\"conversations\":[", r->status, r->has_more ? "true" : "false");
	else printf("conversations: %s, %zu%s\n", status_name(r->status), r->n_conversations, r->has_more ? ", more" : "");
	for(i = 0; i < r->n_conversations; i++){
		if(json && i) putchar(',');
		print_conv(r->conversations[i]);
	}
	if(json) printf("]}\n");
	im__v1__conversations_response__free_unpacked(r, NULL);
	return 0;
}

/* GroupResponse: the only reply that names its op. */
static int print_group(const uint8_t *buf, size_t len)
{
	Im__V1__GroupResponse *r = im__v1__group_response__unpack(NULL, len, buf);
	const char *g;
	size_t i;

	if(r == NULL || r->op == NULL || !r->has_status){
		if(r) im__v1__group_response__free_unpacked(r, NULL);
		return -1;
	}
	g = r->group ? r->group : "";
	if(json){
		printf("{");
		json_str("group_op", r->op, strlen(r->op));
		printf(",\"status\":%d", r->status);
		if(r->reason) json_field("reason", r->reason);
		if(r->group) json_field("group", r->group);
		if(r->owner) json_field("owner", r->owner);
		if(r->has_seq) printf(",\"seq\":%" PRIu64, r->seq);
		if(r->has_head_seq) printf(",\"head_seq\":%" PRIu64, r->head_seq);
		printf(",\"members\":[");
		for(i = 0; i < r->n_members; i++){
			if(i) putchar(',');
			json_str(NULL, r->members[i], strlen(r->members[i]));
		}
		printf("],\"groups\":[");
		for(i = 0; i < r->n_groups; i++){
			const Im__V1__GroupInfo *gi = r->groups[i];
			printf("%s{", i ? "," : "");
			json_str("name", gi->name ? gi->name : "", gi->name ? strlen(gi->name) : 0);
			printf(",\"head_seq\":%" PRIu64 ",\"cursor\":%" PRIu64 ",\"unread\":%" PRIu64 "}", gi->head_seq, gi->cursor, gi->unread);
		}
		printf("]}\n");
		im__v1__group_response__free_unpacked(r, NULL);
		return 0;
	}
	printf("group %s%s%s: %s", r->op, *g ? " " : "", g, status_name(r->status));
	if(r->reason) printf(" (%s)", r->reason);
	if(r->has_seq) printf(", seq %" PRIu64, r->seq);
	if(r->owner) printf(", owner %s", r->owner);
	if(r->has_head_seq) printf(", head %" PRIu64, r->head_seq);
	if(!strcmp(r->op, "list")) printf(", %zu group%s", r->n_groups, r->n_groups == 1 ? "" : "s");
	for(i = 0; i < r->n_members; i++) printf("%s%s", i ? ", " : ", members ", r->members[i]);
	putchar('\n');
	for(i = 0; i < r->n_groups; i++){
		const Im__V1__GroupInfo *gi = r->groups[i];
		printf("  %s: head %" PRIu64 ", cursor %" PRIu64 ", unread %" PRIu64 "\n", gi->name ? gi->name : "?",
				gi->head_seq, gi->cursor, gi->unread);
	}
	im__v1__group_response__free_unpacked(r, NULL);
	return 0;
}

static void print_other(const uint8_t *buf, size_t len)
{
	Im__V1__Receipt *r = im__v1__receipt__unpack(NULL, len, buf);

	if(r && r->has_seq){
		printf("receipt %s #%" PRIu64 "%s%s%s\n", r->timeline ? r->timeline : "?", r->seq,
				r->cmid ? " cmid " : "", r->cmid ? r->cmid : "", r->duplicate ? " (duplicate)" : "");
		im__v1__receipt__free_unpacked(r, NULL);
		return;
	}
	if(r) im__v1__receipt__free_unpacked(r, NULL);
	{
		Im__V1__AckResponse *a = im__v1__ack_response__unpack(NULL, len, buf);
		if(a && a->has_cursor){
			printf("ack %s: cursor %" PRIu64 ", head %" PRIu64 "\n", a->timeline ? a->timeline : "?",
					a->cursor, a->head_seq);
			im__v1__ack_response__free_unpacked(a, NULL);
			return;
		}
		if(a) im__v1__ack_response__free_unpacked(a, NULL);
	}
	if(print_reads(buf, len) == 0 || print_convs(buf, len) == 0 || print_group(buf, len) == 0) return;
	{
		Im__V1__Response *s = im__v1__response__unpack(NULL, len, buf);
		if(s && s->has_status){
			printf("%s (%d)%s%s\n", status_name(s->status), s->status, s->reason ? ": " : "",
					s->reason ? s->reason : "");
			im__v1__response__free_unpacked(s, NULL);
			return;
		}
		if(s) im__v1__response__free_unpacked(s, NULL);
	}
	printf("? %zu bytes, not a mosquitto-im payload\n", len);
}

static void print_payload(const uint8_t *buf, size_t len)
{
	if(len >= 3 && buf[0] == 'I' && buf[1] == 'M'){
		if(print_frame(buf, len, "") == 0) return;
	}
	if(print_batch(buf, len) == 0) return;
	print_other(buf, len);
}

static int unhex(const char *line, uint8_t *out, size_t *len)
{
	size_t n = 0;
	unsigned int v;

	while(*line && !isspace((unsigned char)*line)){
		if(!isxdigit((unsigned char)line[0]) || !isxdigit((unsigned char)line[1])) return -1;
		sscanf(line, "%2x", &v);
		out[n++] = (uint8_t)v;
		line += 2;
	}
	*len = n;
	return 0;
}

int main(int argc, char **argv)
{
	int bin = 0, i;
	char *line = NULL;
	size_t cap = 0, len;
	ssize_t got;
	uint8_t *buf;

	for(i = 1; i < argc; i++){
		if(!strcmp(argv[i], "--json")) json = 1;
		else if(!strcmp(argv[i], "--bin")) bin = 1;
		else if(!strcmp(argv[i], "--hex")) bin = 0;
		else{
			fprintf(stderr, "usage: imcat [--hex|--bin] [--json]\n"
					"  reads payloads (hex lines from mosquitto_sub/rr -F '%%x', or one binary payload)\n");
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if(bin){
		size_t used = 0, bcap = 65536;
		buf = malloc(bcap);
		while(buf && (len = fread(buf + used, 1, bcap - used, stdin)) > 0){
			used += len;
			if(used == bcap) buf = realloc(buf, bcap *= 2);
		}
		if(buf == NULL) return 1;
		print_payload(buf, used);
		free(buf);
		return 0;
	}
	while((got = getline(&line, &cap, stdin)) > 0){
		buf = malloc((size_t)got / 2 + 1);
		if(buf == NULL) return 1;
		if(unhex(line, buf, &len) == 0) print_payload(buf, len);
		else fprintf(stderr, "imcat: not a hex line\n");
		free(buf);
	}
	free(line);
	return 0;
}
