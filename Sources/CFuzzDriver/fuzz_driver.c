// Declarations only (include/fuzz_driver.h): libFuzzer itself is linked by scripts/fuzz.sh.
#include "fuzz_driver.h"
