#ifndef HERALD_CZEROMQ_SHIM_H
#define HERALD_CZEROMQ_SHIM_H

// zmq.h lives in /usr/include on Debian. We include it directly instead of asking pkg-config, whose
// output for libzmq carries `-isystem /usr/include/mit-krb5`, a flag SwiftPM rejects.
#include <zmq.h>
#include <sys/eventfd.h>

// libzmq's own error numbers are macros built on ZMQ_HAUSNUMERO, which the Swift importer does not
// evaluate; these expose their values.
static inline int czmq_eterm(void) { return ETERM; }
static inline int czmq_efsm(void) { return EFSM; }
static inline int czmq_emthread(void) { return EMTHREAD; }
static inline int czmq_enocompatproto(void) { return ENOCOMPATPROTO; }

// A draft context option (declared by zmq.h only with ZMQ_BUILD_DRAFT_API) that Debian's libzmq 4.3.4 honours:
// whether received messages share libzmq's read buffers.
static inline int czmq_zero_copy_recv(void) { return 10; }

// Swift's Glibc module does not include sys/eventfd.h; the async socket bridge wakes its polling thread
// through an eventfd, which zmq_poll can watch beside sockets.
static inline int czmq_wake_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

#endif
