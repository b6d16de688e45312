/*
 * Fuzz target: the topic and name rules (plugin/codec/route.c, plugin/base/name.c):
 * im_name__valid, im_route__parse_topic, im_route__parse_timeline,
 * im_route__in_namespace, im_route__timeline.
 *
 * Invariants, checked against an independent reference here:
 *  - a valid name is 1..64 bytes, never contains '/', '+', '#', '$', NUL or
 *    a control character, and is valid UTF-8 (no overlong forms, no
 *    surrogates, nothing above U+10FFFF);
 *  - a parsed topic or timeline names a kind 'u' or 'g' and a valid name
 *    that points inside the input, and im_route__timeline writes back
 *    exactly "<kind>/<name>";
 *  - a topic accepted by parse_topic is in the namespace and is exactly
 *    "<prefix>/<timeline>".
 */
#include <string.h>

#include <mosquitto.h>

#include "base/config.h"
#include "base/limits.h"
#include "base/name.h"
#include "codec/route.h"
#include "fuzz_common.h"

/* Reference UTF-8 check (RFC 3629), written independently of route.c. */
static int ref_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while(i < n){
		unsigned c = s[i];
		size_t k;
		uint32_t cp, min;

		if(c < 0x80){ i++; continue; }
		if(c >= 0xC2 && c <= 0xDF){ k = 1; cp = c & 0x1F; min = 0x80; }
		else if(c >= 0xE0 && c <= 0xEF){ k = 2; cp = c & 0x0F; min = 0x800; }
		else if(c >= 0xF0 && c <= 0xF4){ k = 3; cp = c & 0x07; min = 0x10000; }
		else return 0;
		if(i + k >= n) return 0;  /* needs bytes i..i+k */
		for(size_t j = 1; j <= k; j++){
			if((s[i + j] & 0xC0) != 0x80) return 0;
			cp = (cp << 6) | (s[i + j] & 0x3F);
		}
		if(cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
		i += k + 1;
	}
	return 1;
}

static void check_valid_name(const char *name, size_t len)
{
	size_t i;

	FUZZ_ASSERT(len >= 1 && len <= IM_NAME_MAX);
	for(i = 0; i < len; i++){
		unsigned char c = (unsigned char)name[i];
		FUZZ_ASSERT(c != '/' && c != '+' && c != '#' && c != '$' && c != '\0');
		FUZZ_ASSERT(c >= 0x20 && c != 0x7F);
	}
	FUZZ_ASSERT(ref_utf8((const unsigned char *)name, len));
}

static void check_route(const char *in, size_t in_len, const struct im__route *r)
{
	char tl[IM_TL_MAX + 1];
	size_t n;

	FUZZ_ASSERT(r->kind == 'u' || r->kind == 'g');
	FUZZ_ASSERT(r->name >= in && r->name + r->name_len <= in + in_len);
	check_valid_name(r->name, r->name_len);
	n = im_route__timeline(r, tl, sizeof(tl));
	FUZZ_ASSERT(n == r->name_len + 2);
	FUZZ_ASSERT(tl[0] == r->kind && tl[1] == '/' && tl[n] == '\0');
	FUZZ_ASSERT(memcmp(tl + 2, r->name, r->name_len) == 0);
	/* Too small a buffer is refused, never overrun. */
	FUZZ_ASSERT(im_route__timeline(r, tl, r->name_len + 2) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct im__config cfg;
	struct im__route r;
	char *s;
	bool valid, ref;
	size_t i, slen;

	/* 1. The raw bytes as a name (NULs included). */
	valid = im_name__valid((const char *)data, size);
	ref = size >= 1 && size <= IM_NAME_MAX && ref_utf8(data, size);
	for(i = 0; ref && i < size; i++){
		if(data[i] < 0x20 || data[i] == 0x7F || strchr("/+#$", data[i])) ref = false;
	}
	FUZZ_ASSERT(valid == ref);
	if(valid) check_valid_name((const char *)data, size);

	/* 2. The bytes as a C string (up to the first NUL), as the broker
	 * hands topics and protobuf-c hands request strings. */
	s = malloc(size + 1);
	FUZZ_ASSERT(s != NULL);
	memcpy(s, data, size);
	s[size] = '\0';
	slen = strlen(s);

	if(im_route__parse_timeline(s, &r) == MOSQ_ERR_SUCCESS){
		check_route(s, slen, &r);
		FUZZ_ASSERT(r.name == s + 2 && r.name_len == slen - 2);
	}

	memset(&cfg, 0, sizeof(cfg));
	cfg.prefix = "im";
	cfg.prefix_len = 2;
	if(im_route__parse_topic(&cfg, s, &r) == MOSQ_ERR_SUCCESS){
		check_route(s, slen, &r);
		FUZZ_ASSERT(im_route__in_namespace(&cfg, s));
		FUZZ_ASSERT(!strncmp(s, "im/", 3) && r.name == s + 5 && r.name_len == slen - 5);
		FUZZ_ASSERT(!strpbrk(s + 3, "+#$"));
	}
	/* A topic outside the namespace is never parsed as a timeline. */
	if(!im_route__in_namespace(&cfg, s)) FUZZ_ASSERT(im_route__parse_topic(&cfg, s, &r) != MOSQ_ERR_SUCCESS);
	free(s);
	return 0;
}
