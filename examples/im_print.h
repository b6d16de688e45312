/*
 * Text shared by the command-line tools (imcat, imchat): how a message
 * says what it changed, or what became of it.
 */
#ifndef IM_PRINT_H
#define IM_PRINT_H

#include <inttypes.h>
#include <stdio.h>

#include "im.pb-c.h"

/* " (edit of #3)", " (recall of #3)", " (edited)", " (recalled)"; with
 * ref_seq 0 (not known: the conversation list) " (edit)", " (recall)". */
static inline void im_print_change(uint32_t flags, uint64_t ref_seq)
{
	const char *what = flags & IM__V1__HEADER_FLAG__FLAG_EDIT ? "edit"
		: flags & IM__V1__HEADER_FLAG__FLAG_RECALL ? "recall" : NULL;

	if(what && ref_seq) printf(" (%s of #%" PRIu64 ")", what, ref_seq);
	else if(what) printf(" (%s)", what);
	if(flags & IM__V1__HEADER_FLAG__FLAG_EDITED) fputs(" (edited)", stdout);
	if(flags & IM__V1__HEADER_FLAG__FLAG_RECALLED) fputs(" (recalled)", stdout);
}

#endif
