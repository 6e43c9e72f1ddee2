"""Feature dtypes: which ones the library takes and what it accumulates them in.

Features, weights, biases and gradients are float16, bfloat16 (through
``ml_dtypes`` or DLPack), float32 or float64 (docs/SPEC.md section 1). Every
sum over pairs, offsets or rows accumulates in float32, or in float64 for
float64 inputs, and the result is cast back to the input dtype.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLOAT_DTYPE_NAMES", "accumulate_dtype"]

#: Feature dtypes the products accept.
FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


def accumulate_dtype(dtype) -> np.dtype:
    """float64 stays float64; every other float type accumulates in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
