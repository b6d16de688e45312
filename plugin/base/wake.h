/*
 * Waking the broker thread from another thread.
 */
#ifndef IM_BASE_WAKE_H
#define IM_BASE_WAKE_H

#include <stdbool.h>

/* [B, at init] Installs a no-op handler for a free real-time signal.
 * False if none is free: completions then wait for the next tick. */
bool im_wake__init(void);
/* [any] Interrupts the broker's epoll_wait (EINTR) so its loop runs the
 * tick, which drains completions. */
void im_wake__poke(void);
bool im_wake__on_broker_thread(void);
void im_wake__cleanup(void);

#endif
