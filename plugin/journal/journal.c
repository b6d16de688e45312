/*
 * The journal: where a message is durable before the broker acknowledges
 * it. One writev(2) per message on the broker thread, in the page cache
 * (synchronous normal: survives kill -9, as a SQLite WAL commit with
 * synchronous NORMAL does) or on disk (synchronous full: fdatasync before
 * the acknowledgement). The worker applies records to the store in batches
 * and records the last applied LSN in the same transaction; segments whose
 * records are all applied are deleted. At start every record after the
 * store's applied LSN is replayed before the first publish is accepted, so
 * a crash anywhere applies each record exactly once.
 *
 * Segments: <dir>/<first LSN as 16 hex digits>.log, so name order is LSN
 * order. Record: u32 length | u32 crc32(lsn, payload) | u64 lsn | payload.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <zlib.h>

#include "base/util.h"
#include "journal/journal.h"

#define HDR 16
#define ROTATE_BYTES (8u << 20)
#define RECORD_MAX (512u << 20)

static void le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint32_t crc_of(const uint8_t *lsn8, const void *payload, size_t len)
{
	uLong c = crc32(0L, lsn8, 8);

	return (uint32_t)crc32(c, payload, (uInt)len);
}

static int is_segment(const struct dirent *d)
{
	size_t n = strlen(d->d_name), i;

	if(n != 20 || strcmp(d->d_name + 16, ".log")) return 0;
	for(i = 0; i < 16; i++){
		if(!((d->d_name[i] >= '0' && d->d_name[i] <= '9') || (d->d_name[i] >= 'a' && d->d_name[i] <= 'f'))) return 0;
	}
	return 1;
}

static uint64_t seg_lsn(const char *name)
{
	return strtoull(name, NULL, 16);
}

/* Segment names in LSN order; *n of them (0 and NULL if none). -1 on error. */
static int list(const char *dir, struct dirent ***names)
{
	return scandir(dir, names, is_segment, alphasort);
}

static void list_free(struct dirent **names, int n)
{
	int i;

	for(i = 0; i < n; i++) free(names[i]);
	free(names);
}

static int open_segment(struct im__journal *j, uint64_t first)
{
	char name[32];
	struct stat sb;
	int fd;

	snprintf(name, sizeof(name), "%016" PRIx64 ".log", first);
	fd = openat(j->dir_fd, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if(fd < 0) return -1;
	if(fstat(fd, &sb) != 0){
		close(fd);
		return -1;
	}
	if(j->fsync) fsync(j->dir_fd); /* the new name must survive a power loss too */
	if(j->fd >= 0) close(j->fd);
	j->fd = fd;
	j->seg_first = first;
	j->seg_bytes = (uint64_t)sb.st_size;
	j->seg_opened_ms = im_mono_ms();
	return 0;
}

static int read_all(int dir_fd, const char *name, uint8_t **buf, size_t *len)
{
	struct stat sb;
	ssize_t n;
	size_t got = 0;
	int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);

	*buf = NULL;
	*len = 0;
	if(fd < 0) return -1;
	if(fstat(fd, &sb) != 0 || (*buf = malloc((size_t)sb.st_size + 1)) == NULL){
		close(fd);
		return -1;
	}
	while(got < (size_t)sb.st_size && (n = read(fd, *buf + got, (size_t)sb.st_size - got)) > 0) got += (size_t)n;
	close(fd);
	*len = got;
	return got == (size_t)sb.st_size ? 0 : -1;
}

/* Replays one segment. *expect is the LSN the next record must carry.
 * Returns 0, or the offset (+1) of the first bad record, or -1 if fn
 * failed or the file could not be read. */
static long replay_segment(struct im__journal *j, const char *name, uint64_t applied, uint64_t *expect,
		im_journal__replay_fn fn, void *ctx)
{
	uint8_t *buf;
	size_t len, off = 0;
	uint32_t rlen;
	uint64_t lsn;
	long bad = 0;

	if(read_all(j->dir_fd, name, &buf, &len) != 0){
		im_log(MOSQ_LOG_ERR, "im: journal: cannot read %s/%s: %s.", j->dir, name, strerror(errno));
		free(buf);
		return -1;
	}
	while(off < len){
		if(len - off < HDR){
			bad = (long)off + 1;
			break;
		}
		rlen = get32(buf + off);
		lsn = 0;
		for(int i = 7; i >= 0; i--) lsn = (lsn << 8) | buf[off + 8 + i];
		if(rlen > RECORD_MAX || rlen > len - off - HDR || lsn != *expect
				|| crc_of(buf + off + 8, buf + off + HDR, rlen) != get32(buf + off + 4)){
			bad = (long)off + 1;
			break;
		}
		if(lsn > applied && fn(ctx, lsn, buf + off + HDR, rlen) != 0){
			free(buf);
			return -1;
		}
		(*expect)++;
		off += HDR + rlen;
	}
	free(buf);
	return bad;
}

int im_journal__open(struct im__journal *j, const char *dir, bool fsync, uint64_t applied_lsn,
		im_journal__replay_fn fn, void *ctx, bool *gap)
{
	struct dirent **names = NULL;
	uint64_t expect = 0, first = 0;
	int n, i;
	long bad;

	memset(j, 0, sizeof(*j));
	j->fd = -1;
	j->fsync = fsync;
	j->rotate_bytes = ROTATE_BYTES;
	*gap = false;
	if((j->dir = im_strdup(dir)) == NULL) return MOSQ_ERR_NOMEM;
	if(mkdir(dir, 0700) != 0 && errno != EEXIST){
		im_log(MOSQ_LOG_ERR, "im: journal: cannot create \"%s\": %s (it must be writable by the broker's user).", dir, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	j->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if(j->dir_fd < 0 || (n = list(dir, &names)) < 0){
		im_log(MOSQ_LOG_ERR, "im: journal: cannot read \"%s\": %s.", dir, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	if(n > 0){
		first = seg_lsn(names[0]->d_name);
		expect = first;
		/* Records after the store's position that the journal no longer
		 * holds: the store was rolled back (a deleted WAL, a restored
		 * backup) further than the journal reaches. */
		*gap = first > applied_lsn + 1;
	}
	for(i = 0; i < n; i++){
		if(seg_lsn(names[i]->d_name) != expect){
			im_log(MOSQ_LOG_ERR, "im: journal: %s/%s should start at record %" PRIu64 ": records are missing. Move the journal folder aside to start without it (its unstored messages are then lost).",
					dir, names[i]->d_name, expect);
			list_free(names, n);
			return MOSQ_ERR_UNKNOWN;
		}
		bad = replay_segment(j, names[i]->d_name, applied_lsn, &expect, fn, ctx);
		if(bad < 0 || (bad > 0 && i < n - 1)){
			if(bad > 0){
				im_log(MOSQ_LOG_ERR, "im: journal: %s/%s is damaged at byte %ld, before its end. Move it aside to start (the records after that point are then lost).",
						dir, names[i]->d_name, bad - 1);
			}
			list_free(names, n);
			return MOSQ_ERR_UNKNOWN;
		}
		if(bad > 0){
			/* A torn tail: a write cut short by a crash or a full disk.
			 * It was never acknowledged (the append failed or never
			 * returned), so it goes. */
			char path[4096];
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
			im_log(MOSQ_LOG_WARNING, "im: journal: dropping an incomplete record at the end of %s (byte %ld): it was never acknowledged.",
					path, bad - 1);
			if(truncate(path, bad - 1) != 0){
				im_log(MOSQ_LOG_ERR, "im: journal: cannot truncate %s: %s.", path, strerror(errno));
				list_free(names, n);
				return MOSQ_ERR_UNKNOWN;
			}
		}
	}
	list_free(names, n);
	j->next_lsn = expect > applied_lsn + 1 ? expect : applied_lsn + 1;
	if(open_segment(j, j->next_lsn) != 0){
		im_log(MOSQ_LOG_ERR, "im: journal: cannot open a segment in \"%s\": %s.", dir, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int im_journal__append(struct im__journal *j, const void *payload, size_t len, uint64_t *lsn)
{
	uint8_t hdr[HDR];
	struct iovec iov[2];
	ssize_t n;
	int saved;

	if(j->fd < 0 || len > RECORD_MAX){
		errno = EINVAL;
		return MOSQ_ERR_UNKNOWN;
	}
	le32(hdr, (uint32_t)len);
	for(int i = 0; i < 8; i++) hdr[8 + i] = (uint8_t)(j->next_lsn >> (8 * i));
	le32(hdr + 4, crc_of(hdr + 8, payload, len));
	iov[0].iov_base = hdr;
	iov[0].iov_len = HDR;
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = len;
	do{
		n = writev(j->fd, iov, 2);
	}while(n < 0 && errno == EINTR);
	if(n != (ssize_t)(HDR + len) || (j->fsync && fdatasync(j->fd) != 0)){
		/* Nothing half-written stays behind: the next record must start
		 * at a record boundary, and this one is not acknowledged. */
		saved = (n >= 0 && n != (ssize_t)(HDR + len)) ? ENOSPC : errno;
		if(ftruncate(j->fd, (off_t)j->seg_bytes) != 0){
			/* Cannot cut it back: the next start reports this segment as
			 * damaged and stops, which is what an I/O error deserves. */
			saved = errno;
		}
		errno = saved;
		return MOSQ_ERR_UNKNOWN;
	}
	*lsn = j->next_lsn++;
	j->seg_bytes += HDR + len;
	if(j->seg_bytes >= j->rotate_bytes && open_segment(j, j->next_lsn) != 0){
		/* Keep appending to the full one; rotation is retried next time. */
		j->rotate_bytes += ROTATE_BYTES;
	}
	return MOSQ_ERR_SUCCESS;
}

void im_journal__rotate_idle(struct im__journal *j, int64_t now_ms)
{
	if(j->fd < 0 || j->rotate_age_ms <= 0 || j->seg_bytes == 0 || now_ms - j->seg_opened_ms < j->rotate_age_ms) return;
	if(open_segment(j, j->next_lsn) != 0){
		j->seg_opened_ms = now_ms; /* tried again one age later */
	}
}

void im_journal__cut(const char *dir, uint64_t applied_lsn)
{
	struct dirent **names = NULL;
	char path[4096];
	int n, i;

	if((n = list(dir, &names)) <= 0){
		free(names);
		return;
	}
	/* Segment i holds [first(i), first(i+1) - 1]; the last one is being
	 * appended to (the broker thread only ever writes the newest). */
	for(i = 0; i + 1 < n; i++){
		if(seg_lsn(names[i + 1]->d_name) - 1 > applied_lsn) break;
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
		unlink(path);
	}
	list_free(names, n);
}

void im_journal__close(struct im__journal *j)
{
	if(j->fd >= 0) close(j->fd);
	if(j->dir_fd > 0) close(j->dir_fd);
	free(j->dir);
	im_buf__free(&j->buf);
	memset(j, 0, sizeof(*j));
	j->fd = -1;
}
