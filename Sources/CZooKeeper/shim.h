#ifndef HERALD_CZOOKEEPER_SHIM_H
#define HERALD_CZOOKEEPER_SHIM_H

// The multi-threaded client hides its threaded behaviour (and zookeeper_interest-free operation)
// unless THREADED is defined before the header; libzookeeper-mt-dev ships no pkg-config file to do it.
#ifndef THREADED
#define THREADED
#endif
#include <zookeeper/zookeeper.h>

#endif
