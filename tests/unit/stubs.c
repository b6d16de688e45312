/* The few broker functions the store and config code call, for unit tests
 * that run without a broker. Allocation goes to libc; logs to stderr. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

void *mosquitto_malloc(size_t n) { return malloc(n); }
void *mosquitto_calloc(size_t a, size_t b) { return calloc(a, b); }
void *mosquitto_realloc(void *p, size_t n) { return realloc(p, n); }
void mosquitto_free(void *p) { free(p); }
char *mosquitto_strdup(const char *s) { return strdup(s); }

int stub_log_count;
char stub_last_log[1024];
/* Tests that run the store on several threads log from each of them (the
 * plugin's own log sink is not set up here). */
static pthread_mutex_t stub_log_mu = PTHREAD_MUTEX_INITIALIZER;

void mosquitto_log_printf(int level, const char *fmt, ...)
{
	va_list ap;

	(void)level;
	pthread_mutex_lock(&stub_log_mu);
	va_start(ap, fmt);
	vsnprintf(stub_last_log, sizeof(stub_last_log), fmt, ap);
	va_end(ap);
	stub_log_count++;
	if(getenv("STUB_LOG")) fprintf(stderr, "log: %s\n", stub_last_log);
	pthread_mutex_unlock(&stub_log_mu);
}

/* Whether the last line logged contains needle (for tests on threads). */
int stub_log_has(const char *needle)
{
	int found;

	pthread_mutex_lock(&stub_log_mu);
	found = strstr(stub_last_log, needle) != NULL;
	pthread_mutex_unlock(&stub_log_mu);
	return found;
}

const char *mosquitto_client_address(const struct mosquitto *client)
{
	(void)client;
	return "127.0.0.1";
}

const char *mosquitto_client_id(const struct mosquitto *client)
{
	(void)client;
	return "unit";
}

const char *mosquitto_client_username(const struct mosquitto *client)
{
	(void)client;
	return "unit";
}

int mosquitto_broker_publish_copy(const char *clientid, const char *topic, int payloadlen, const void *payload,
		int qos, bool retain, mosquitto_property *properties)
{
	(void)clientid; (void)topic; (void)payloadlen; (void)payload; (void)qos; (void)retain; (void)properties;
	return MOSQ_ERR_SUCCESS;
}
