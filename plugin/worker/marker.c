/*
 * The applied marker [W]: <journal>/applied holds the highest LSN the worker saw committed. The
 * database holds its own applied LSN, in the same transaction as the
 * records. If the database is ever behind the marker, it lost committed
 * transactions (a deleted or damaged WAL, a restored backup): the journal
 * may still hold the records and roll it forward, but group changes and
 * cursors of that time are gone, and history may differ from what clients
 * saw. The store then takes a new id so that clients start over. The marker
 * is written after the commit, never ahead of it, so a crash cannot make
 * it claim more than the database has. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>

#include "worker/internal.h"

uint64_t im_work__marker_read(int fd)
{
	uint8_t b[8];
	uint64_t v = 0;
	int i;

	if(fd < 0 || pread(fd, b, 8, 0) != 8) return 0;
	for(i = 7; i >= 0; i--) v = (v << 8) | b[i];
	return v;
}

void im_work__marker_write(struct im__worker *w, uint64_t lsn)
{
	uint8_t b[8];
	int i;

	for(i = 0; i < 8; i++) b[i] = (uint8_t)(lsn >> (8 * i));
	if(w->marker_fd >= 0 && pwrite(w->marker_fd, b, 8, 0) != 8){
		im_log(MOSQ_LOG_WARNING, "im: journal: cannot update %s/applied: %s.", w->journal_dir, strerror(errno));
	}
}
