/*
 * The broker's configuration file as the plugin reads it (conffile.c):
 * reload re-reads our plugin_opt_* lines from it, and the non-IM "allow"
 * fallback is registered only if nothing else in it decides ACLs.
 */
#ifndef IM_CONFFILE_H
#define IM_CONFFILE_H

#include <stdbool.h>

struct im__plugin;

/* One setting: key and value as written, ours = inside the block of a
 * `plugin` (or `auth_plugin`) line naming this very .so (that line itself
 * included). */
typedef void (*im_conffile__line_cb)(const char *key, const char *value, bool ours, void *ud);

/* Calls line() for every setting of the file at path and of the
 * include_dir files it names, in the order the broker reads them.
 * MOSQ_ERR_SUCCESS, or an error if path (or this .so's own path) cannot
 * be read. */
int im_conffile__walk(const char *path, im_conffile__line_cb line, void *ud);

/* plugin_opt_nonim_acl allow: registers the fallback ACL callback that
 * allows what every other check deferred, if and only if nothing else in
 * the configuration decides ACLs (no acl_file, no auth_plugin, no other
 * plugin; under per_listener_settings true, in the listener block of this
 * plugin's line, the only listener it serves); otherwise makes sure it is
 * not registered and says so loudly. Run at init and at every reload
 * (acl_file may come or go). */
void im_conffile__apply_nonim(struct im__plugin *p);

#endif
