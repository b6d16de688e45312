/*
 * Reading MQTT v5 properties (the broker's readers or libmosquitto's).
 */
#ifndef IM_BROKER_PROPS_H
#define IM_BROKER_PROPS_H

#include <stdbool.h>
#include <stdint.h>
#include <mosquitto.h>

/* Finds out, once, which library's property readers were bound. */
void im_props__init(void);
/* Releases a string or binary returned by the functions below (or by
 * im_props__user): they were allocated by whichever library read them. */
void im_props__free(void *ptr);
/* Iterates user properties as mosquitto_property_read_string_pair does:
 * pass the list first with skip_first false, then the returned pointer
 * with skip_first true. *key and *value are the caller's (im_props__free). */
const mosquitto_property *im_props__user(const mosquitto_property *it, char **key, char **value, bool skip_first);
/* The first string property identifier of props, or NULL. Caller frees. */
char *im_props__string(const mosquitto_property *props, int identifier);
bool im_props__has(const mosquitto_property *props, int identifier);
/* The first binary property identifier of props, or NULL. Caller frees. */
void *im_props__binary(const mosquitto_property *props, int identifier, uint16_t *len);

#endif
