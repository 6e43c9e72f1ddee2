// The register-tiled inner product shared by the SIMT GEMM kernels.
//
// 256 threads as 16 x 16; thread (tx, ty) owns the 4 x 4 outputs at rows
// ty + 16 i and columns tx + 16 j of a 64 x 64 tile. Both operands are staged
// in shared memory as [depth][64] so that every read is a broadcast or a
// contiguous run.
#pragma once
#include "csc_common.cuh"

template <typename ACC, int DEPTH, int TILE>
__device__ __forceinline__ void csc_tile_multiply(const ACC (&left)[DEPTH][TILE],
                                                  const ACC (&right)[DEPTH][TILE],
                                                  ACC (&acc)[4][4], int tx, int ty) {
    for (int d = 0; d < DEPTH; ++d) {
        ACC a[4], b[4];
        for (int i = 0; i < 4; ++i) a[i] = left[d][ty + 16 * i];
        for (int j = 0; j < 4; ++j) b[j] = right[d][tx + 16 * j];
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
}

template <typename ACC>
__device__ __forceinline__ void csc_tile_zero(ACC (&acc)[4][4]) {
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = (ACC)0;
}
