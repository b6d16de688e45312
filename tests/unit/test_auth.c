/* Token checks: what is accepted and every way a token is refused. */
#include <jwt.h>
#include <stdlib.h>
#include <time.h>

#include <mosquitto.h>

#include "im.h"
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

	CHECK(im_auth__check_jwt(&cfg, "not.a.jwt", "alice", now) != NULL);
	CHECK(im_auth__check_jwt(&cfg, "", "alice", now) != NULL);
	CHECK(im_auth__check_jwt(&cfg, "a.b.c", NULL, now) != NULL);
	return TAP_DONE();
}
