// The declaration in include/fuzzer_driver.h is all this module provides; libFuzzer itself comes
// from the toolchain's compiler-rt when the fuzz targets are built with -sanitize=fuzzer.
#include "fuzzer_driver.h"
