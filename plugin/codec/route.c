/*
 * Topic -> timeline. The IM namespace is "<prefix>/u/<user>" (an inbox)
 * and "<prefix>/g/<group>" (a group); requests name timelines as
 * "u/<user>" and "g/<group>". Names are what a person would type: UTF-8,
 * 1..64 bytes, none of the characters MQTT gives a meaning to
 * (base/name.c).
 */
#include <string.h>

#include <mosquitto.h>

#include "base/config.h"
#include "base/defs.h"
#include "base/name.h"
#include "codec/route.h"

int im_route__parse_event_topic(const struct im__config *cfg, const char *topic, struct im__route *r)
{
	const char *t = topic + cfg->prefix_len;

	if(!im_route__in_namespace(cfg, topic) || t[0] != '/' || t[1] != 'e' || t[2] != '/') return MOSQ_ERR_INVAL;
	return im_route__parse_timeline(t + 3, r);
}

int im_route__in_namespace(const struct im__config *cfg, const char *topic)
{
	return strncmp(topic, cfg->prefix, cfg->prefix_len) == 0
		&& (topic[cfg->prefix_len] == '/' || topic[cfg->prefix_len] == '\0');
}

int im_route__parse_timeline(const char *tl, struct im__route *r)
{
	if((tl[0] != 'u' && tl[0] != 'g') || tl[1] != '/') return MOSQ_ERR_INVAL;
	r->kind = tl[0];
	r->name = tl + 2;
	r->name_len = strlen(r->name);
	return im_name__valid(r->name, r->name_len) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_INVAL;
}

int im_route__parse_topic(const struct im__config *cfg, const char *topic, struct im__route *r)
{
	if(!im_route__in_namespace(cfg, topic) || topic[cfg->prefix_len] != '/'){
		return MOSQ_ERR_INVAL;
	}
	return im_route__parse_timeline(topic + cfg->prefix_len + 1, r);
}

size_t im_route__timeline(const struct im__route *r, char *out, size_t cap)
{
	if(cap < r->name_len + 3) return 0;
	out[0] = r->kind;
	out[1] = '/';
	memcpy(out + 2, r->name, r->name_len);
	out[2 + r->name_len] = '\0';
	return 2 + r->name_len;
}

bool im_route__has_nul(const void *payload, size_t len)
{
	const uint8_t *b = payload, *end = b + len;
	uint64_t key, n;
	int shift;

	/* Requests are flat: every length-delimited field is a string. protobuf-c
	 * hands strings over as C strings, so "zz\0evil" would arrive as "zz":
	 * refuse it here, where the length is still known. Anything that does
	 * not parse is left to the unpacker to refuse. */
	while(b < end){
		for(key = 0, shift = 0; b < end && shift < 64; shift += 7){
			key |= (uint64_t)(*b & 0x7F) << shift;
			if(!(*b++ & 0x80)) break;
		}
		switch(key & 7){
			case 0:
				while(b < end && (*b++ & 0x80));
				break;
			case 1: b += 8; break;
			case 5: b += 4; break;
			case 2:
				for(n = 0, shift = 0; b < end && shift < 64; shift += 7){
					n |= (uint64_t)(*b & 0x7F) << shift;
					if(!(*b++ & 0x80)) break;
				}
				if(n > (uint64_t)(end - b)) return false;
				if(memchr(b, 0, (size_t)n)) return true;
				b += n;
				break;
			default:
				return false;
		}
	}
	return false;
}
