/*
 * Token login: password = a JWT signed HS256 with the shared secret in
 * plugin_opt_auth_jwt_secret_file, the way an app backend issues chat
 * tokens. Verified: the signature, alg == HS256 (never "none"), exp
 * (required), nbf (if present), and sub == the MQTT username. exp and
 * nbf must be integers (seconds since the epoch): any other JSON value
 * refuses the token, it is never read as "absent".
 *
 * A password that is not shaped like a JWT is not ours: we defer, so
 * password_file or dynamic security still decide. A JWT that fails any
 * check is refused outright, never passed on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jwt.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "base/config.h"
#include "base/map.h"
#include "broker/auth.h"
#include "broker/clients.h"
#include "broker/plugin.h"
#include "codec/route.h"

/* header.payload.signature, base64url only. */
static bool looks_like_jwt(const char *s)
{
	int dots = 0;

	for(; *s; s++){
		if(*s == '.') dots++;
		else if(!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')
					|| *s == '-' || *s == '_' || *s == '=')){
			return false;
		}
	}
	return dots == 2;
}

/* A time claim: 1 and *v if it is a JSON integer, 0 if absent, -1 if it
 * is any other JSON value (a string, a fraction, null, ...). Read from
 * the claim's JSON text: Debian's libjwt 1.10 reads a non-integer as 0
 * with errno unset (later versions set EINVAL), and a string "nbf" read
 * as 0 let a token in before its time. Integers print as digits only. */
static int time_claim(jwt_t *jwt, const char *name, long *v)
{
	char *json = jwt_get_grants_json(jwt, name);
	const char *d;
	int rc;

	if(json == NULL) return 0;
	d = json + (json[0] == '-');
	rc = (*d && strspn(d, "0123456789") == strlen(d)) ? 1 : -1;
	free(json);
	if(rc == 1) *v = jwt_get_grant_int(jwt, name);
	return rc;
}

/* Returns NULL if the token is good for username, else why not. */
const char *im_auth__check_jwt(const struct im__config *cfg, const char *token, const char *username, time_t now)
{
	jwt_t *jwt = NULL;
	const char *why = NULL, *sub;
	long exp, nbf;
	int has_exp, has_nbf;

	if(jwt_decode(&jwt, token, (const unsigned char *)cfg->jwt_secret, (int)cfg->jwt_secret_len) != 0 || jwt == NULL){
		return "bad signature or malformed token";
	}
	if(jwt_get_alg(jwt) != JWT_ALG_HS256){
		why = "algorithm is not HS256";
	}else if((sub = jwt_get_grant(jwt, "sub")) == NULL || username == NULL || strcmp(sub, username)){
		why = "sub does not match the username";
	}else if((has_exp = time_claim(jwt, "exp", &exp)) == 0){
		why = "no exp claim";
	}else if(has_exp < 0){
		why = "exp is not an integer";
	}else if((has_nbf = time_claim(jwt, "nbf", &nbf)) < 0){
		why = "nbf is not an integer";
	/* now and the leeway are small: no sum with a claim, which may be
	 * anything up to LONG_MAX, can overflow. */
	}else if((long)now - cfg->jwt_leeway >= exp){
		why = "expired";
	}else if(has_nbf && (long)now + cfg->jwt_leeway < nbf){
		why = "not valid yet (nbf)";
	}
	jwt_free(jwt);
	return why;
}

/* The last login that passed the guard. Mosquitto takes over the session
 * of the same client id only after every login check passed, from the
 * same call: it ends the old session as a clean one (whatever it was),
 * and the DISCONNECT of that one comes before any other login. Kept for
 * the process (logins come one at a time, on the broker thread). */
static struct {
	const struct mosquitto *client;         /* compared, never followed */
	uint32_t id_hash;
	size_t id_len;
} last_login;

bool im_auth__replaced(const struct mosquitto *client, const char *id)
{
	size_t len = strlen(id);

	if(last_login.client == NULL || client == last_login.client || len != last_login.id_len
			|| im_map__hash(id, len) != last_login.id_hash){
		return false;
	}
	last_login.client = NULL;
	return true;
}

/* client_id_guard: a client id belongs to the first user seen with it (at
 * its first subscription or publish on an IM topic, or a token login),
 * for as long as the broker runs, connected or not. Someone else
 * connecting with it would take over that session: disconnect its owner
 * and, with a persistent session, destroy the owner's queued messages.
 * Refused here, at the login: Mosquitto takes a session over only after. */
static bool guard_ok(struct im__plugin *p, const struct mosquitto_evt_basic_auth *ed)
{
	const char *id = mosquitto_client_id(ed->client);
	const struct im__client *c;

	if(!p->cfg.client_id_guard || id == NULL) return true;
	if((c = im_map__get(&p->clients, id, strlen(id))) != NULL && c->owner[0]
			&& !(ed->username && !strcmp(c->owner, ed->username))){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: refused login of \"%s\" from %s: client id \"%s\" belongs to another user (plugin_opt_client_id_guard).",
				ed->username ? ed->username : "", mosquitto_client_address(ed->client), id);
		return false;
	}
	/* It may take the id's session over, if the login succeeds. */
	last_login.client = ed->client;
	last_login.id_len = strlen(id);
	last_login.id_hash = im_map__hash(id, last_login.id_len);
	return true;
}

int im_auth__basic_cb(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct im__plugin *p = userdata;
	struct im__client *c;
	const char *why;

	(void)event;
	if(!guard_ok(p, ed)) return MOSQ_ERR_AUTH;
	if(ed->password == NULL || !looks_like_jwt(ed->password)) return MOSQ_ERR_PLUGIN_DEFER;
	why = im_auth__check_jwt(&p->cfg, ed->password, ed->username, time(NULL));
	if(why){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "im: refused token login of \"%s\" from %s: %s.",
				ed->username ? ed->username : "", mosquitto_client_address(ed->client), why);
		last_login.client = NULL;
		return MOSQ_ERR_AUTH;
	}
	if(p->cfg.client_id_guard && ed->username && im_name__valid(ed->username, strlen(ed->username))
			&& (c = im_clients__get(p, mosquitto_client_id(ed->client))) != NULL && c->owner[0] == '\0'){
		snprintf(c->owner, sizeof(c->owner), "%s", ed->username);
	}
	return MOSQ_ERR_SUCCESS;
}
