/* Shared by the libFuzzer targets: the entry point's prototype and a CHECK that stops the run
 * with a crash the fuzzer reports (assert() may be compiled out). */
#pragma once
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
        do {                                                                                       \
                if (!(x))                                                                          \
                        __builtin_trap();                                                          \
        } while (0)
