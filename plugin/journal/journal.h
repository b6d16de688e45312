/*
 * The journal: the acknowledgement point. The broker thread appends, the
 * worker cuts what the store holds.
 */
#ifndef IM_JOURNAL_JOURNAL_H
#define IM_JOURNAL_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/util.h"

/* An append-only log of message records in segment files
 * <dir>/<first lsn, 16 hex digits>.log. On disk each record is
 *   u32 length | u32 crc32(lsn, payload) | u64 lsn | payload
 * little-endian. LSNs are consecutive across segments. */
struct im__journal {
	char *dir;
	int fd;                 /* the active (last) segment */
	int dir_fd;
	uint64_t next_lsn;      /* [B] */
	uint64_t seg_bytes;     /* [B] size of the active segment */
	uint64_t seg_first;     /* [B] first LSN of the active segment */
	uint64_t rotate_bytes;
	int64_t seg_opened_ms;  /* [B] */
	int64_t rotate_age_ms;  /* 0 = only by size */
	bool fsync;             /* synchronous full: fdatasync before the ack */
	struct im__buf buf;     /* [B] header + payload of one write */
};

/* Called at open for every record after applied_lsn, in order. A non-zero
 * return stops the replay (and fails the open). */
typedef int (*im_journal__replay_fn)(void *ctx, uint64_t lsn, const uint8_t *payload, size_t len);

/* Opens (creating) dir, replays the records after applied_lsn through fn,
 * drops a torn record at the very end of the last segment (a write cut
 * short by a crash or a full disk: never acknowledged), and opens a segment
 * for appending. *gap is set if records between applied_lsn and the oldest
 * segment are missing (the store was rolled back further than the journal
 * reaches). Returns MOSQ_ERR_SUCCESS, or MOSQ_ERR_UNKNOWN with a log line
 * (unreadable dir, a damaged record before the end). */
int im_journal__open(struct im__journal *j, const char *dir, bool fsync, uint64_t applied_lsn,
		im_journal__replay_fn fn, void *ctx, bool *gap);
/* [B] Appends one record with one write(2) (and fdatasync if fsync).
 * Returns its LSN in *lsn. On failure (disk full, I/O error) the segment is
 * cut back to where it was: nothing half-written stays. MOSQ_ERR_SUCCESS or
 * MOSQ_ERR_UNKNOWN (errno kept for the caller's log line). */
int im_journal__append(struct im__journal *j, const void *payload, size_t len, uint64_t *lsn);
/* [B] Starts a new segment if the active one holds records and is a minute
 * old (rotate_age_ms), so that the worker's cut removes stored records (and the plaintext
 * of a recalled message) within about a minute even on a quiet broker. */
void im_journal__rotate_idle(struct im__journal *j, int64_t now_ms); /* now_ms: im_mono_ms() */
/* [W] Deletes every segment whose records are all <= applied_lsn, except
 * the active one. */
void im_journal__cut(const char *dir, uint64_t applied_lsn);
void im_journal__close(struct im__journal *j);

#endif
