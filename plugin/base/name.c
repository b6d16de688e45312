/*
 * Names are what a person would type: UTF-8, 1..64 bytes, none of the
 * characters MQTT gives a meaning to. The options (admins), the topics
 * and the requests all check them here.
 */
#include <stdint.h>
#include <string.h>

#include "base/defs.h"
#include "base/name.h"

/* Validates one UTF-8 sequence starting at s (n bytes left); returns its
 * length or 0. Overlong forms, surrogates and values above U+10FFFF are
 * refused, as MQTT requires of topic names. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	uint32_t cp;
	size_t len, i;

	if(s[0] < 0x80) return 1;
	if((s[0] & 0xE0) == 0xC0){ len = 2; cp = s[0] & 0x1F; }
	else if((s[0] & 0xF0) == 0xE0){ len = 3; cp = s[0] & 0x0F; }
	else if((s[0] & 0xF8) == 0xF0){ len = 4; cp = s[0] & 0x07; }
	else return 0;
	if(len > n) return 0;
	for(i = 1; i < len; i++){
		if((s[i] & 0xC0) != 0x80) return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)){
		return 0;
	}
	if(cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
	return len;
}

bool im_name__valid(const char *name, size_t len)
{
	const unsigned char *s = (const unsigned char *)name;
	size_t i = 0, n;

	if(len == 0 || len > IM_NAME_MAX) return false;
	while(i < len){
		if(s[i] < 0x20 || s[i] == 0x7F || s[i] == '/' || s[i] == '+'
				|| s[i] == '#' || s[i] == '$'){
			return false;
		}
		n = utf8_len(s + i, len - i);
		if(n == 0) return false;
		i += n;
	}
	return true;
}

bool im_name__utf8_valid(const void *buf, size_t len)
{
	const unsigned char *s = buf;
	size_t i = 0, n;

	while(i < len){
		if(s[i] == 0) return false;
		n = utf8_len(s + i, len - i);
		if(n == 0) return false;
		i += n;
	}
	return true;
}

static const char *const group_ops[] = {"create", "add", "remove", "leave", "set"};

const char *im_name__group_op(enum im_group_op op)
{
	return (unsigned)op < sizeof(group_ops) / sizeof(group_ops[0]) ? group_ops[op] : "?";
}

bool im_name__group_op_parse(const char *s, size_t len, enum im_group_op *op)
{
	size_t i;

	for(i = 0; i < sizeof(group_ops) / sizeof(group_ops[0]); i++){
		if(strlen(group_ops[i]) == len && !memcmp(s, group_ops[i], len)){
			*op = (enum im_group_op)i;
			return true;
		}
	}
	return false;
}
