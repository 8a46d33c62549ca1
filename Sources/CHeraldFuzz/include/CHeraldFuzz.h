#ifndef HERALD_CHERALDFUZZ_H
#define HERALD_CHERALDFUZZ_H

#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry point for programs that keep their own main (SwiftPM names an executable's entry point
// after its module). Defined by libFuzzer's runtime, linked only when building with -sanitize=fuzzer.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
