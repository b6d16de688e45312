/*
 * A test plugin that allows every ACL check, loaded before mosquitto-im to
 * play "another plugin decided first": the IM plugin's own checks on the
 * publish path must still hold (issue #11, finding 11).
 */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *pid;

static int allow(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	return MOSQ_ERR_SUCCESS;
}

__attribute__((visibility("default"))) int mosquitto_plugin_version(int n, const int *versions)
{
	int i;

	for(i = 0; i < n; i++){
		if(versions[i] == 5) return 5;
	}
	return -1;
}

__attribute__((visibility("default"))) int mosquitto_plugin_init(mosquitto_plugin_id_t *id, void **ud,
		struct mosquitto_opt *opts, int n)
{
	(void)ud;
	(void)opts;
	(void)n;
	pid = id;
	return mosquitto_callback_register(id, MOSQ_EVT_ACL_CHECK, allow, NULL, NULL);
}

__attribute__((visibility("default"))) int mosquitto_plugin_cleanup(void *ud, struct mosquitto_opt *opts, int n)
{
	(void)ud;
	(void)opts;
	(void)n;
	return mosquitto_callback_unregister(pid, MOSQ_EVT_ACL_CHECK, allow, NULL);
}
