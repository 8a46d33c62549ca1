#ifndef COSTHREADS_H
#define COSTHREADS_H

#include <sys/prctl.h>

// prctl(2) is variadic, which Swift cannot call; these fix the uses OSThreads (and its tests) have for it.
// Sets the calling thread's timer slack: how late the kernel may end its sleeps to group wake-ups.
// Returns 0, or -1 with errno set.
static inline int costhreads_set_timer_slack(unsigned long nanoseconds) {
    return prctl(PR_SET_TIMERSLACK, nanoseconds, 0UL, 0UL, 0UL);
}

// The calling thread's timer slack in nanoseconds, or -1 with errno set.
static inline long costhreads_timer_slack(void) {
    return prctl(PR_GET_TIMERSLACK, 0UL, 0UL, 0UL, 0UL);
}

#endif
