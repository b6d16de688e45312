/*
 * Completions [W]: what a job hands back to the broker thread. They wait
 * in the open batch and are published only after its commit, so nothing
 * is said of what a rollback may take back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "worker/internal.h"

void im_work__emit(struct im__worker *w, struct im__done *d)
{
	if(d == NULL) return;
	/* Replaying at start nobody here is connected yet; but other brokers
	 * of a cluster may have devices waiting for what was journaled here
	 * before a crash: kept to be shipped after the commit (run_batch). */
	if(w->replaying && !(w->hooks.committed && (d->kind == IM_DONE_FRAME || d->kind == IM_DONE_MEMBERS))){
		free(d);
		return;
	}
	d->next = NULL;
	*w->btail = d;
	w->btail = &d->next;
}

void im_work__reply(struct im__worker *w, const struct im__job *j, const ProtobufCMessage *msg, bool sync_reply)
{
	im_work__emit(w, im_job__reply(j, msg, sync_reply));
}
