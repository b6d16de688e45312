/*
 * The default persistence: one small text file, replaced atomically.
 *
 *   u/bob 42                 a timeline and the last seq delivered
 *   g/team 7
 *   client bob-c-1f2e...     the client id the library made (absent when the app names it)
 *   send <cmid> <kind> <ref_seq> <expiry_s> <timeline> <content type hex|-> <body hex|->
 *   store 0123456789abcdef   the store the seqs count in: last
 *
 * The reference client's state files (imrecv, imchat listen: timeline
 * lines and "store") are read as they are.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct filestore {
	char *path;
	char *tmp;
	bool do_fsync;
};

static int hexval(int ch)
{
	if(ch >= '0' && ch <= '9') return ch - '0';
	if(ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
	if(ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
	return -1;
}

/* "-" or hex -> bytes (NUL-terminated too); *len; NULL on a bad field */
static uint8_t *unhex(const char *s, size_t *len)
{
	size_t n = strlen(s), i;
	uint8_t *out;

	if(!strcmp(s, "-")){
		*len = 0;
		return calloc(1, 1);
	}
	if(n % 2) return NULL;
	out = malloc(n / 2 + 1);
	if(out == NULL) return NULL;
	for(i = 0; i < n / 2; i++){
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);

		if(hi < 0 || lo < 0){
			free(out);
			return NULL;
		}
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	out[n / 2] = 0;
	*len = n / 2;
	return out;
}

static void put_hex(FILE *f, const uint8_t *b, size_t n)
{
	size_t i;

	if(b == NULL || n == 0){
		fputc('-', f);
		return;
	}
	for(i = 0; i < n; i++) fprintf(f, "%02x", b[i]);
}

static int load_send(struct mim_loader *l, char *line)
{
	char *tok[8], *save = NULL, *p;
	int n = 0, rc = MIM_ERR_STORE;
	struct mim_pending pd = {0};
	uint8_t *ct = NULL, *body = NULL;
	size_t ctlen = 0;

	for(p = strtok_r(line, " \n", &save); p && n < 8; p = strtok_r(NULL, " \n", &save)) tok[n++] = p;
	if(n != 8) return MIM_ERR_STORE;
	pd.cmid = tok[1];
	pd.kind = atoi(tok[2]);
	pd.ref_seq = strtoull(tok[3], NULL, 10);
	pd.expiry_s = strtoll(tok[4], NULL, 10);
	pd.timeline = tok[5];
	ct = unhex(tok[6], &ctlen);
	body = unhex(tok[7], &pd.len);
	if(ct && body){
		pd.content_type = ctlen ? (const char *)ct : NULL;
		pd.body = body;
		rc = mim_loader_pending(l, &pd);
	}
	free(ct);
	free(body);
	return rc;
}

static int file_load(void *ctx, struct mim_loader *l)
{
	struct filestore *fs = ctx;
	FILE *f = fopen(fs->path, "r");
	char *line = NULL, *end;
	size_t cap = 0;
	ssize_t n;
	int rc = 0;

	if(f == NULL) return errno == ENOENT ? 0 : MIM_ERR_STORE;
	while(rc == 0 && (n = getline(&line, &cap, f)) > 0){
		if(line[n - 1] == '\n') line[--n] = '\0';
		if(!strncmp(line, "store ", 6)){
			unsigned long long id = strtoull(line + 6, &end, 16);

			if(end > line + 6 && *end == '\0') rc = mim_loader_store_id(l, id);
		}else if(!strncmp(line, "client ", 7)){
			rc = mim_loader_client_id(l, line + 7);
		}else if(!strncmp(line, "send ", 5)){
			rc = load_send(l, line);
		}else if((line[0] == 'u' || line[0] == 'g') && line[1] == '/'){
			char *sp = strrchr(line, ' ');
			unsigned long long last;

			if(sp == NULL) continue;
			*sp = '\0';
			last = strtoull(sp + 1, &end, 10);
			if(end > sp + 1 && *end == '\0' && mim__valid_timeline(line)) rc = mim_loader_cursor(l, line, last);
		}
	}
	free(line);
	fclose(f);
	return rc;
}

static int file_save(void *ctx, const struct mim_saved *s)
{
	struct filestore *fs = ctx;
	FILE *f = fopen(fs->tmp, "w");
	size_t i;
	int ok;

	if(f == NULL) return MIM_ERR_STORE;
	for(i = 0; i < s->n_cursors; i++){
		fprintf(f, "%s %llu\n", s->cursors[i].timeline, (unsigned long long)s->cursors[i].last);
	}
	if(s->client_id) fprintf(f, "client %s\n", s->client_id);
	for(i = 0; i < s->n_pending; i++){
		const struct mim_pending *p = &s->pending[i];

		fprintf(f, "send %s %d %llu %lld %s ", p->cmid, p->kind, (unsigned long long)p->ref_seq,
				(long long)p->expiry_s, p->timeline);
		put_hex(f, (const uint8_t *)p->content_type, p->content_type ? strlen(p->content_type) : 0);
		fputc(' ', f);
		put_hex(f, p->body, p->len);
		fputc('\n', f);
	}
	/* Last: a reader of the reference client's files has read the
	 * timelines when it meets this line. */
	if(s->store_id) fprintf(f, "store %016llx\n", (unsigned long long)s->store_id);
	ok = fflush(f) == 0 && !ferror(f);
	if(ok && fs->do_fsync) ok = fsync(fileno(f)) == 0;
	if(fclose(f) != 0) ok = 0;
	if(!ok || rename(fs->tmp, fs->path) != 0){
		unlink(fs->tmp);
		return MIM_ERR_STORE;
	}
	if(fs->do_fsync){
		/* the rename itself: sync the folder */
		char *dir = strdup(fs->path), *slash;
		int fd;

		if(dir){
			slash = strrchr(dir, '/');
			if(slash) *(slash == dir ? slash + 1 : slash) = '\0';
			fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY);
			if(fd >= 0){
				fsync(fd);
				close(fd);
			}
			free(dir);
		}
	}
	return 0;
}

static void file_close(void *ctx)
{
	struct filestore *fs = ctx;

	free(fs->path);
	free(fs->tmp);
	free(fs);
}

void mim_persist_init(struct mim_persist *p)
{
	memset(p, 0, sizeof(*p));
	p->size = sizeof(*p);
}

int mim_persist_file(struct mim_persist *p, const char *path, bool do_fsync)
{
	struct filestore *fs;

	if(p == NULL || path == NULL || !*path) return MIM_ERR_INVAL;
	fs = calloc(1, sizeof(*fs));
	if(fs == NULL) return MIM_ERR_NOMEM;
	fs->path = strdup(path);
	fs->tmp = malloc(strlen(path) + 5);
	if(fs->path == NULL || fs->tmp == NULL){
		file_close(fs);
		return MIM_ERR_NOMEM;
	}
	sprintf(fs->tmp, "%s.tmp", path);
	fs->do_fsync = do_fsync;
	mim_persist_init(p);
	p->ctx = fs;
	p->load = file_load;
	p->save = file_save;
	p->close = file_close;
	return 0;
}
