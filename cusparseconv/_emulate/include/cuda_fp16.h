// Emulator stand-in for <cuda_fp16.h>: shim.h (force-included) already provides
// what our kernels use from it.
#pragma once
