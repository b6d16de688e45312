/* The worker's tests run without the broker thread's side of cluster mode
 * (cluster.c needs a broker): its hooks do nothing here, as they do in a
 * broker without plugin_opt_nats_servers. */
#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "im.h"

void im_cluster__ship(struct im__plugin *p, uint64_t store_id, const uint8_t key[16], const struct im__done *list)
{
	(void)p;
	(void)store_id;
	(void)key;
	(void)list;
}

void im_cluster__member(struct im__plugin *p, const char *group, const char *user, bool joined)
{
	(void)p;
	(void)group;
	(void)user;
	(void)joined;
}
