#ifndef HERALD_CSPAWN_H
#define HERALD_CSPAWN_H

#include <spawn.h>

// glibc (2.34+; Debian 12 has 2.36) declares this only with _GNU_SOURCE, which Swift's Glibc module is not
// built with, and defining it here would give the C headers' types a second, conflicting shape. So the
// function is declared as glibc defines it, and called from C, as swift-nio does for its own gaps.
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *actions, int lowest);

// Closes every descriptor from `lowest` up in the spawned process.
static inline int cspawn_addclosefrom(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}

#endif
