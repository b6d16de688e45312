/* Token checks: what is accepted and every way a token is refused. */
#include <jwt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <mosquitto.h>

#include "base/config.h"
#include "broker/auth.h"
#include "tap.h"

static const char secret[] = "0123456789abcdef0123456789abcdef-test";

static char *mint(const char *sub, long exp_in, long nbf_in, jwt_alg_t alg, const char *key)
{
	jwt_t *j;
	char *t;
	time_t now = time(NULL);

	jwt_new(&j);
	if(sub) jwt_add_grant(j, "sub", sub);
	if(exp_in) jwt_add_grant_int(j, "exp", now + exp_in);
	if(nbf_in) jwt_add_grant_int(j, "nbf", now + nbf_in);
	jwt_set_alg(j, alg, alg == JWT_ALG_NONE ? NULL : (const unsigned char *)key,
			alg == JWT_ALG_NONE ? 0 : (int)strlen(key));
	t = jwt_encode_str(j);
	jwt_free(j);
	return t;
}

/* A token with exactly the claims of a JSON object, for claims of the
 * wrong type that mint() cannot make. */
static char *mint_json(const char *claims, const char *key)
{
	jwt_t *j;
	char *t;

	jwt_new(&j);
	if(jwt_add_grants_json(j, claims) != 0){
		jwt_free(j);
		return NULL;
	}
	jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)key, (int)strlen(key));
	t = jwt_encode_str(j);
	jwt_free(j);
	return t;
}

/* The verdict on a token with these claims at now. */
static const char *check_json(const struct im__config *cfg, const char *claims, time_t now)
{
	static char why[128];
	const char *r;
	char *t = mint_json(claims, cfg->jwt_secret);

	if(t == NULL) return "(could not mint)";
	r = im_auth__check_jwt(cfg, t, "alice", now);
	snprintf(why, sizeof(why), "%s", r ? r : "(accepted)");
	free(t);
	return why;
}

static char json[512];
#define CLAIMS(...) (snprintf(json, sizeof(json), __VA_ARGS__), json)

int main(void)
{
	struct im__config cfg = {0};
	time_t now = time(NULL);
	char *t;

	cfg.jwt_secret = (char *)secret;
	cfg.jwt_secret_len = strlen(secret);

	t = mint("alice", 60, 0, JWT_ALG_HS256, secret);
	CHECK(im_auth__check_jwt(&cfg, t, "alice", now) == NULL);
	CHECK_STR(im_auth__check_jwt(&cfg, t, "bob", now), "sub does not match the username");
	CHECK_STR(im_auth__check_jwt(&cfg, t, "alice", now + 61), "expired");
	free(t);

	t = mint("alice", -10, 0, JWT_ALG_HS256, secret);
	CHECK_STR(im_auth__check_jwt(&cfg, t, "alice", now), "expired");
	cfg.jwt_leeway = 30; /* clock skew allowance */
	CHECK(im_auth__check_jwt(&cfg, t, "alice", now) == NULL);
	cfg.jwt_leeway = 0;
	free(t);

	t = mint("alice", 60, 30, JWT_ALG_HS256, secret);
	CHECK_STR(im_auth__check_jwt(&cfg, t, "alice", now), "not valid yet (nbf)");
	CHECK(im_auth__check_jwt(&cfg, t, "alice", now + 31) == NULL);
	free(t);

	t = mint("alice", 0, 0, JWT_ALG_HS256, secret);
	CHECK_STR(im_auth__check_jwt(&cfg, t, "alice", now), "no exp claim");
	free(t);

	t = mint(NULL, 60, 0, JWT_ALG_HS256, secret);
	CHECK_STR(im_auth__check_jwt(&cfg, t, "alice", now), "sub does not match the username");
	free(t);

	t = mint("alice", 60, 0, JWT_ALG_HS256, "another-secret-another-secret-123");
	CHECK(im_auth__check_jwt(&cfg, t, "alice", now) != NULL);
	free(t);

	t = mint("alice", 60, 0, JWT_ALG_HS512, secret);
	CHECK(im_auth__check_jwt(&cfg, t, "alice", now) != NULL);
	free(t);

	t = mint("alice", 60, 0, JWT_ALG_NONE, NULL);
	CHECK(t == NULL || im_auth__check_jwt(&cfg, t, "alice", now) != NULL);
	free(t);

	/* Time claims must be integers: any other JSON value refuses the
	 * token (libjwt reads it as -1 with errno EINVAL). A string nbf was
	 * once taken as "no nbf" and the token accepted before its time. */
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":\"%ld\"}", (long)now + 60, (long)now + 600), now),
			"nbf is not an integer");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":\"%ld\"}", (long)now + 60, (long)now - 600), now),
			"nbf is not an integer");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":\"%ld\"}", (long)now + 60), now),
			"exp is not an integer");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld.5}", (long)now + 60), now),
			"exp is not an integer");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":%ld.5}", (long)now + 60, (long)now - 600), now),
			"nbf is not an integer");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":null}"), now),
			"exp is not an integer");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":true}", (long)now + 60), now),
			"nbf is not an integer");
	/* The integer forms of the same: fine, and not yet valid. */
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":%ld}", (long)now + 60, (long)now - 600), now),
			"(accepted)");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":%ld}", (long)now + 60, (long)now + 600), now),
			"not valid yet (nbf)");
	/* Extreme integers, with a leeway: compared without overflow (UBSan
	 * checks the arithmetic in the sanitizer build). */
	cfg.jwt_leeway = 3600;
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":%ld}", LONG_MAX, LONG_MIN), now), "(accepted)");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld}", LONG_MIN), now), "expired");
	CHECK_STR(check_json(&cfg, CLAIMS("{\"sub\":\"alice\",\"exp\":%ld,\"nbf\":%ld}", LONG_MAX, LONG_MAX), now),
			"not valid yet (nbf)");
	cfg.jwt_leeway = 0;

	CHECK(im_auth__check_jwt(&cfg, "not.a.jwt", "alice", now) != NULL);
	CHECK(im_auth__check_jwt(&cfg, "", "alice", now) != NULL);
	CHECK(im_auth__check_jwt(&cfg, "a.b.c", NULL, now) != NULL);
	return TAP_DONE();
}
