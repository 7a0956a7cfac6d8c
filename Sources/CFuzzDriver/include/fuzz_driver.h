#ifndef TANDEM_FUZZ_DRIVER_H
#define TANDEM_FUZZ_DRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver, in clang's libclang_rt.fuzzer_no_main (linked only into the fuzz build by scripts/fuzz.sh):
// parses libFuzzer's flags from argv and calls `callback` once per input.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
