// Intentionally empty: the header's inline function is all there is; SwiftPM needs a source file.
#include "COSThreads.h"
