/*
 * Reading MQTT v5 properties of a publish.
 *
 * Which broker provides mosquitto_property_read_*() differs: Debian's
 * 2.0.11 and 2.1 export them to plugins, upstream 2.0.x release builds do
 * not (src/linker.syms lists only the mosquitto_property_add_* family). So
 * the plugin links libmosquitto, which defines them too; the dynamic linker
 * binds the broker's own where the broker exports them, libmosquitto's
 * where it does not.
 *
 * The two allocate the strings they hand out differently: the broker's
 * through its counted allocator (released with mosquitto_free, or the
 * broker's heap statistics drift), libmosquitto's with plain malloc. Which
 * one was bound is asked once, at init, with dladdr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mqtt_protocol.h>

#include "broker/props.h"

static bool from_libmosquitto;

void im_props__init(void)
{
	Dl_info info;

	from_libmosquitto = dladdr((void *)mosquitto_property_read_string_pair, &info) != 0
		&& info.dli_fname != NULL && strstr(info.dli_fname, "libmosquitto") != NULL;
	mosquitto_log_printf(MOSQ_LOG_DEBUG, "im: MQTT v5 properties are read with %s.",
			from_libmosquitto ? "libmosquitto (the broker does not export the readers)" : "the broker's own readers");
}

/* 2.1 hands out NULL, not "", for an empty name or value of a user
 * property (2.0 allocates an empty string); an empty pair is legal MQTT,
 * so every caller would have to test both. The readers below substitute
 * this shared empty string, which im_props__free() knows not to free. */
static char empty_str[1];

void im_props__free(void *ptr)
{
	if(ptr == empty_str) return;
	if(from_libmosquitto) free(ptr);
	else mosquitto_free(ptr);
}

const mosquitto_property *im_props__user(const mosquitto_property *it, char **key, char **value, bool skip_first)
{
	const mosquitto_property *p;

	*key = *value = NULL;
	if(it == NULL) return NULL;
	p = mosquitto_property_read_string_pair(it, MQTT_PROP_USER_PROPERTY, key, value, skip_first);
	if(p != NULL){
		if(*key == NULL) *key = empty_str;
		if(*value == NULL) *value = empty_str;
	}
	return p;
}

char *im_props__string(const mosquitto_property *props, int identifier)
{
	char *s = NULL;

	if(props) mosquitto_property_read_string(props, identifier, &s, false);
	return s;
}

bool im_props__has(const mosquitto_property *props, int identifier)
{
	char *s = im_props__string(props, identifier);

	im_props__free(s);
	return s != NULL;
}

void *im_props__binary(const mosquitto_property *props, int identifier, uint16_t *len)
{
	void *b = NULL;

	*len = 0;
	if(props) mosquitto_property_read_binary(props, identifier, &b, len, false);
	return b;
}
