/*
 * A message as journaled [any thread]: the record the broker thread
 * appends to the journal and the worker reads back.
 */
#ifndef IM_CODEC_RECORD_H
#define IM_CODEC_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum im_rec_kind { IM_REC_MESSAGE = 0, IM_REC_SYSTEM = 1 };
enum im_rec_op { IM_REC_PLAIN = 0, IM_REC_EDIT = 1, IM_REC_RECALL = 2 };

/* A message as it enters the store. Strings point into the record buffer
 * (decode) or the caller's memory (encode); "" for none. */
struct im__rec {
	uint8_t kind;           /* enum im_rec_kind */
	int64_t ts_ms;          /* server time at the acknowledgement */
	int64_t expires_ms;     /* 0 = never */
	uint16_t key_id;        /* 0: body as sent; else sealed (AAD: "" and the LSN) */
	uint8_t op;             /* enum im_rec_op */
	uint64_t ref_seq;       /* IM_REC_EDIT / IM_REC_RECALL: the seq in `to` it changes */
	const char *sender;
	const char *to;         /* "u/<user>" or "g/<group>" */
	const char *own;        /* the sender's inbox for its copy, "" for none */
	const char *cmid;
	const char *ctype;
	const void *body;
	uint32_t body_len;
};

/* Bytes im_rec__encode writes for r. */
size_t im_rec__size(const struct im__rec *r);
/* Writes r into out (exactly im_rec__size(r) bytes). */
void im_rec__encode(uint8_t *out, const struct im__rec *r);
/* Reads a record; false if buf does not hold exactly one valid record. */
bool im_rec__decode(const uint8_t *buf, size_t len, struct im__rec *r);

#endif
