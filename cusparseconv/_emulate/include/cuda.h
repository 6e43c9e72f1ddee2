// Emulator stand-in for <cuda.h>: shim.h (force-included) already provides
// what our kernels use from it.
#pragma once
