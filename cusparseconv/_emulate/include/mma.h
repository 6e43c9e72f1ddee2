// Emulator stand-in for <mma.h>: shim.h (force-included) already provides
// what our kernels use from it.
#pragma once
