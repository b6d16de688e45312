/*
 * Waking the broker thread when the worker has completions.
 *
 * Mosquitto runs plugin code only from its own loop: 2.0 waits up to
 * 100 ms in epoll_wait when idle and ticks once per pass; 2.1 may wait
 * much longer. Handing completions over at the next tick alone would add
 * that wait to every delivery. A signal sent to the broker thread makes
 * epoll_wait return EINTR, which both releases treat as an ordinary wake
 * (src/mux_epoll.c); the loop then runs the tick, which drains.
 *
 * The signal is a real-time one nobody else handles (SIGRTMIN+4 or the
 * next free one), with a handler that does nothing and SA_RESTART, so
 * every other system call of the broker thread carries on as if nothing
 * happened. A signal that arrives just before epoll_wait is entered is
 * not lost for long: the worker sends it again while its completions stay
 * undrained (worker.c, REPOKE_US).
 */
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "base/wake.h"

static pthread_t broker_thread;
static bool inited;
static int wake_sig = -1;

static void nothing(int sig)
{
	(void)sig;
}

bool im_wake__init(void)
{
	struct sigaction sa, old;
	sigset_t set;
	int s;

	broker_thread = pthread_self();
	inited = true;
	for(s = SIGRTMIN + 4; s <= SIGRTMAX && wake_sig < 0; s++){
		if(sigaction(s, NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = nothing;
		sigemptyset(&sa.sa_mask);
		sa.sa_flags = SA_RESTART;
		if(sigaction(s, &sa, NULL) == 0) wake_sig = s;
	}
	if(wake_sig < 0) return false;
	sigemptyset(&set);
	sigaddset(&set, wake_sig);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	return true;
}

void im_wake__poke(void)
{
	if(wake_sig >= 0) pthread_kill(broker_thread, wake_sig);
}

bool im_wake__on_broker_thread(void)
{
	return !inited || pthread_equal(pthread_self(), broker_thread);
}

void im_wake__cleanup(void)
{
	struct sigaction sa;

	/* After the worker stopped: nothing sends it any more. Ignored rather
	 * than the default (which would end the process) in case one is still
	 * pending when the plugin's code goes away. */
	if(wake_sig >= 0){
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = SIG_IGN;
		sigaction(wake_sig, &sa, NULL);
		wake_sig = -1;
	}
	inited = false;
}
