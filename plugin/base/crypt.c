/*
 * Encryption at rest: message bodies sealed with AES-256-GCM.
 *
 * Each body gets a fresh random 96-bit nonce; the associated data is the
 * timeline name and the seq, so a row copied to another timeline or seq
 * fails to open instead of showing someone else's message. Rows carry the
 * id of the key that sealed them: rotation is adding a key to the file
 * (the last one seals), old keys stay to open old rows.
 *
 * Key file: one key per line, "<id> <64 hex digits>", id 1..65535;
 * '#' starts a comment. The last key listed seals new messages.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "base/crypt.h"
#include "base/defs.h"
#include "base/util.h"

#define NONCE 12
#define TAG 16

static int hexval(int c)
{
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	if(c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static int parse_line(const char *line, struct im__key *k)
{
	char *end;
	long id;
	int i, hi, lo;

	id = strtol(line, &end, 10);
	if(end == line || id < 1 || id > 65535 || !isspace((unsigned char)*end)) return -1;
	while(isspace((unsigned char)*end)) end++;
	for(i = 0; i < 32; i++){
		hi = hexval(end[2 * i]);
		lo = hi < 0 ? -1 : hexval(end[2 * i + 1]);
		if(lo < 0) return -1;
		k->key[i] = (uint8_t)(hi << 4 | lo);
	}
	end += 64;
	while(*end && isspace((unsigned char)*end)) end++;
	if(*end != '\0' && *end != '#') return -1;
	k->id = (uint16_t)id;
	return 0;
}

int im_crypt__load(struct im__crypt *c, const char *path)
{
	FILE *f = fopen(path, "r");
	char line[512], *s;
	int lineno = 0;

	memset(c, 0, sizeof(*c));
	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_store_key_file: cannot open \"%s\": %s.", path, strerror(errno));
		return MOSQ_ERR_INVAL;
	}
	while(fgets(line, sizeof(line), f)){
		lineno++;
		for(s = line; isspace((unsigned char)*s); s++);
		if(*s == '\0' || *s == '#') continue;
		if(c->n == IM_MAX_KEYS || parse_line(s, &c->keys[c->n]) != 0){
			mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_store_key_file: \"%s\" line %d: expected \"<id 1..65535> <64 hex digits>\" (at most %d keys).",
					path, lineno, IM_MAX_KEYS);
			fclose(f);
			im_crypt__free(c);
			return MOSQ_ERR_INVAL;
		}
		c->n++;
	}
	fclose(f);
	if(c->n == 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "im: plugin_opt_store_key_file: \"%s\" holds no key.", path);
		return MOSQ_ERR_INVAL;
	}
	c->ctx = EVP_CIPHER_CTX_new();
	if(c->ctx == NULL){
		im_crypt__free(c);
		return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}

int im_crypt__clone(struct im__crypt *dst, const struct im__crypt *src)
{
	memset(dst, 0, sizeof(*dst));
	memcpy(dst->keys, src->keys, sizeof(dst->keys));
	dst->n = src->n;
	dst->ctx = EVP_CIPHER_CTX_new();
	if(dst->ctx == NULL){
		im_crypt__free(dst);
		return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_crypt__free(struct im__crypt *c)
{
	if(c->ctx) EVP_CIPHER_CTX_free(c->ctx);
	im_buf__free(&c->buf);
	OPENSSL_cleanse(c->keys, sizeof(c->keys));
	memset(c, 0, sizeof(*c));
}

/* Associated data: "<timeline>\0" and the seq, big-endian. */
static size_t make_aad(uint8_t *aad, const char *tl, uint64_t seq)
{
	size_t n = strlen(tl), i;

	memcpy(aad, tl, n + 1);
	for(i = 0; i < 8; i++) aad[n + 1 + i] = (uint8_t)(seq >> (56 - 8 * i));
	return n + 9;
}

int im_crypt__seal(struct im__crypt *c, const char *tl, uint64_t seq, const void *in, size_t len,
		const void **out, size_t *out_len, uint16_t *key_id)
{
	const struct im__key *k = &c->keys[c->n - 1];
	uint8_t aad[IM_TL_MAX + 10], *o;
	size_t alen = make_aad(aad, tl, seq);
	int n, ok;

	if(len > INT32_MAX - NONCE - TAG || im_buf__reserve(&c->buf, len + NONCE + TAG) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_NOMEM;
	}
	o = c->buf.data;
	ok = RAND_bytes(o, NONCE) == 1
		&& EVP_EncryptInit_ex(c->ctx, EVP_aes_256_gcm(), NULL, k->key, o) == 1
		&& EVP_EncryptUpdate(c->ctx, NULL, &n, aad, (int)alen) == 1
		&& EVP_EncryptUpdate(c->ctx, o + NONCE, &n, in, (int)len) == 1
		&& EVP_EncryptFinal_ex(c->ctx, o + NONCE + n, &n) == 1
		&& EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_GET_TAG, TAG, o + NONCE + len) == 1;
	if(!ok) return MOSQ_ERR_UNKNOWN;
	*out = o;
	*out_len = len + NONCE + TAG;
	*key_id = k->id;
	return MOSQ_ERR_SUCCESS;
}

int im_crypt__open(struct im__crypt *c, uint16_t key_id, const char *tl, uint64_t seq,
		const void *in, size_t len, const void **out, size_t *out_len)
{
	const struct im__key *k = NULL;
	const uint8_t *b = in;
	uint8_t aad[IM_TL_MAX + 10];
	size_t alen, plen, i;
	int n, ok;

	for(i = 0; i < c->n; i++){
		if(c->keys[i].id == key_id) k = &c->keys[i];
	}
	if(k == NULL || len < NONCE + TAG || c->ctx == NULL) return MOSQ_ERR_UNKNOWN;
	plen = len - NONCE - TAG;
	if(im_buf__reserve(&c->buf, plen + 1) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_NOMEM;
	alen = make_aad(aad, tl, seq);
	ok = EVP_DecryptInit_ex(c->ctx, EVP_aes_256_gcm(), NULL, k->key, b) == 1
		&& EVP_DecryptUpdate(c->ctx, NULL, &n, aad, (int)alen) == 1
		&& EVP_DecryptUpdate(c->ctx, c->buf.data, &n, b + NONCE, (int)plen) == 1
		&& EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_SET_TAG, TAG, (void *)(b + NONCE + plen)) == 1
		&& EVP_DecryptFinal_ex(c->ctx, c->buf.data + n, &n) == 1;
	if(!ok) return MOSQ_ERR_UNKNOWN;
	*out = c->buf.data;
	*out_len = plen;
	return MOSQ_ERR_SUCCESS;
}
