/*
 * Fuzz target: the protobuf request decoders exactly as the plugin calls
 * them (protobuf-c unpack of im.v1.SyncRequest, Ack, GroupRequest; and the
 * replies and Header a client decodes), then what the plugin does with the
 * strings it got: strlen, the timeline and name checks.
 *
 * Invariants: an unpacked message packs again and unpacks to the same
 * size (see ROUNDTRIP for the one protobuf-c quirk tolerated) (proto2 optional strings are NUL-terminated C strings; repeated
 * fields have as many non-NULL elements as n_*).
 */
#include <stdbool.h>
#include <string.h>

#include <mosquitto.h>

#include "base/name.h"
#include "codec/frame.h"
#include "codec/route.h"
#include "fuzz_common.h"

static void names(const char *s)
{
	struct im__route r;

	if(s == NULL) return;
	im_name__valid(s, strlen(s));
	if(im_route__parse_timeline(s, &r) == MOSQ_ERR_SUCCESS){
		FUZZ_ASSERT(r.name_len == strlen(s) - 2);
	}
}

/* Whether m or any message inside it kept unknown fields. */
static bool has_unknown(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	unsigned i;
	size_t k;

	if(m->n_unknown_fields > 0) return true;
	for(i = 0; i < d->n_fields; i++){
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *at = (const char *)m + f->offset;

		if(f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
		/* A oneof member is there only when the case names it. */
		if((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
				&& *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id) continue;
		if(f->label == PROTOBUF_C_LABEL_REPEATED){
			size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
			ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)at;
			for(k = 0; k < n; k++){
				if(v[k] && has_unknown(v[k])) return true;
			}
		}else{
			const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)at;
			if(sub && has_unknown(sub)) return true;
		}
	}
	return false;
}

#define ROUNDTRIP(type, fn, msg) do { \
	size_t n_ = im__v1__##fn##__get_packed_size(msg); \
	uint8_t *b_ = malloc(n_ ? n_ : 1); \
	type *again_; \
	FUZZ_ASSERT(b_ != NULL); \
	FUZZ_ASSERT(im__v1__##fn##__pack(msg, b_) == n_); \
	again_ = im__v1__##fn##__unpack(NULL, n_, b_); \
	/* protobuf-c keeps unknown fields, even field number 0 written as \
	 * a non-minimal varint, and re-emits them in a form it then refuses: \
	 * a quirk of the library, harmless to the plugin, which never \
	 * re-packs a request; also inside a nested message (a Header's \
	 * Event). Anything else must round-trip. */ \
	FUZZ_ASSERT(again_ != NULL || has_unknown(&(msg)->base)); \
	if(again_){ \
		FUZZ_ASSERT(im__v1__##fn##__get_packed_size(again_) == n_); \
		im__v1__##fn##__free_unpacked(again_, NULL); \
	} \
	free(b_); \
} while(0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Im__V1__SyncRequest *sr;
	Im__V1__Ack *ack;
	Im__V1__GroupRequest *gr;
	Im__V1__SyncBatch *sb;
	Im__V1__GroupResponse *gres;
	Im__V1__Header *h;
	size_t i;

	if((sr = im__v1__sync_request__unpack(NULL, size, data)) != NULL){
		names(sr->timeline);
		ROUNDTRIP(Im__V1__SyncRequest, sync_request, sr);
		im__v1__sync_request__free_unpacked(sr, NULL);
	}
	if((ack = im__v1__ack__unpack(NULL, size, data)) != NULL){
		names(ack->timeline);
		ROUNDTRIP(Im__V1__Ack, ack, ack);
		im__v1__ack__free_unpacked(ack, NULL);
	}
	if((gr = im__v1__group_request__unpack(NULL, size, data)) != NULL){
		names(gr->op);
		names(gr->group);
		FUZZ_ASSERT(gr->n_members == 0 || gr->members != NULL);
		for(i = 0; i < gr->n_members; i++){
			FUZZ_ASSERT(gr->members[i] != NULL);
			names(gr->members[i]);
		}
		ROUNDTRIP(Im__V1__GroupRequest, group_request, gr);
		im__v1__group_request__free_unpacked(gr, NULL);
	}
	/* What clients decode (the reference client, imcat). */
	if((sb = im__v1__sync_batch__unpack(NULL, size, data)) != NULL){
		for(i = 0; i < sb->n_frames; i++){
			const uint8_t *body;
			size_t blen;
			if(im_frame__decode(sb->frames[i].data, sb->frames[i].len, NULL, &h, &body, &blen) == MOSQ_ERR_SUCCESS){
				im__v1__header__free_unpacked(h, NULL);
			}
		}
		im__v1__sync_batch__free_unpacked(sb, NULL);
	}
	if((gres = im__v1__group_response__unpack(NULL, size, data)) != NULL){
		im__v1__group_response__free_unpacked(gres, NULL);
	}
	if((h = im__v1__header__unpack(NULL, size, data)) != NULL){
		ROUNDTRIP(Im__V1__Header, header, h);
		im__v1__header__free_unpacked(h, NULL);
	}
	return 0;
}
