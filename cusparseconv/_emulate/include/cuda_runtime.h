// Emulator stand-in for <cuda_runtime.h>: shim.h (force-included) already provides
// what our kernels use from it.
#pragma once
