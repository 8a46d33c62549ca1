// Intentionally empty: the header's inline functions are all there is; SwiftPM needs a source file.
#include "COSThreads.h"
