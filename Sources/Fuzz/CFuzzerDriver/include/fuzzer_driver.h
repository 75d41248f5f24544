#ifndef CAPSTAN_FUZZER_DRIVER_H
#define CAPSTAN_FUZZER_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry point for a program that has its own main (compiler-rt, FuzzerDriver.cpp).
/// Only a build with -sanitize=fuzzer links it; scripts/fuzz.sh makes that build.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
