/*
 * Text shared by the command-line tools (imcat, imchat): how a message
 * says what it changed, or what became of it.
 */
#ifndef IM_PRINT_H
#define IM_PRINT_H

#include <inttypes.h>
#include <stdio.h>

#include <mosquitto-im/client.h>

/* " (edit of #3)", " (recall of #3)", " (edited)", " (recalled)"; with
 * ref_seq 0 (not known: the conversation list) " (edit)", " (recall)". */
static inline void im_fprint_change(FILE *out, uint32_t flags, uint64_t ref_seq)
{
	const char *what = flags & MIM_FLAG_EDIT ? "edit" : flags & MIM_FLAG_RECALL ? "recall" : NULL;

	if(what && ref_seq) fprintf(out, " (%s of #%" PRIu64 ")", what, ref_seq);
	else if(what) fprintf(out, " (%s)", what);
	if(flags & MIM_FLAG_EDITED) fputs(" (edited)", out);
	if(flags & MIM_FLAG_RECALLED) fputs(" (recalled)", out);
}

static inline void im_print_change(uint32_t flags, uint64_t ref_seq)
{
	im_fprint_change(stdout, flags, ref_seq);
}

#endif
