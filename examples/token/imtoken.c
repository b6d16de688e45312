/*
 * imtoken: mints an HS256 token for mosquitto-im's token login, for tests
 * and for trying it out. A real deployment mints tokens in its app backend
 * with any JWT library; the claims are the same.
 *
 *   imtoken -s secret.key -u alice            # valid for 1 hour
 *   imtoken -s secret.key -u alice -t 60      # valid for 60 seconds
 *   mosquitto_pub -u alice -P "$(imtoken -s secret.key -u alice)" ...
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jwt.h>

int main(int argc, char **argv)
{
	const char *secret_path = NULL, *user = NULL;
	long ttl = 3600, nbf_in = 0;
	unsigned char key[4096];
	size_t n;
	FILE *f;
	jwt_t *jwt;
	char *tok;
	int ch;
	time_t now = time(NULL);

	while((ch = getopt(argc, argv, "s:u:t:n:")) != -1){
		switch(ch){
			case 's': secret_path = optarg; break;
			case 'u': user = optarg; break;
			case 't': ttl = atol(optarg); break;
			case 'n': nbf_in = atol(optarg); break;
			default: goto usage;
		}
	}
	if(!secret_path || !user) goto usage;
	if(!(f = fopen(secret_path, "rb"))){
		perror(secret_path);
		return 1;
	}
	n = fread(key, 1, sizeof(key), f);
	fclose(f);
	while(n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r')) n--;
	if(jwt_new(&jwt) || jwt_add_grant(jwt, "sub", user) || jwt_add_grant_int(jwt, "iat", now)
			|| jwt_add_grant_int(jwt, "exp", now + ttl)
			|| (nbf_in && jwt_add_grant_int(jwt, "nbf", now + nbf_in))
			|| jwt_set_alg(jwt, JWT_ALG_HS256, key, (int)n) || !(tok = jwt_encode_str(jwt))){
		fprintf(stderr, "imtoken: cannot mint a token (secret of %zu bytes?)\n", n);
		return 1;
	}
	puts(tok);
	free(tok);
	jwt_free(jwt);
	return 0;
usage:
	fprintf(stderr, "usage: imtoken -s secret_file -u user [-t ttl_seconds] [-n nbf_offset_seconds]\n");
	return 2;
}
