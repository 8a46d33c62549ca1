// Intentionally empty: the header declares what libFuzzer's runtime defines.
#include "CHeraldFuzz.h"
