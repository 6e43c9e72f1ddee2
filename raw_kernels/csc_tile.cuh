// The register-tiled inner product shared by the SIMT GEMM kernels.
//
// 256 threads as 16 x 16; thread (tx, ty) owns the 4 x 4 outputs at rows
// ty + 16 i and columns tx + 16 j of a 64 x 64 tile. Both operands are staged
// in shared memory as [depth][64] so that every read is a broadcast or a
// contiguous run.
#pragma once
#include "csc_common.cuh"
#include "csc_convert.cuh"

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

// Stage rows [c0, c0 + DEPTH) x columns [n0, n0 + TILE) of one offset's weight
// slice (group_in x group_out, row-major) as tile[depth][column], zero-padded.
template <typename T, typename ACC, int DEPTH, int TILE>
__device__ __forceinline__ void csc_load_weight_tile(ACC (&tile)[DEPTH][TILE],
                                                     const T* __restrict__ weight_k, int c0,
                                                     int n0, int group_in, int group_out) {
    for (int index = threadIdx.x; index < DEPTH * TILE; index += blockDim.x) {
        int d = index / TILE, n = index % TILE;
        ACC value = (ACC)0;
        if (c0 + d < group_in && n0 + n < group_out)
            value = csc_load(weight_k[(long long)(c0 + d) * group_out + n0 + n]);
        tile[d][n] = value;
    }
}

// OR of the pair-mask words of rows [r0, r0 + tile_rows) into tile_mask (shared,
// at least n_words words). Every thread of the block must call it.
__device__ __forceinline__ void csc_tile_mask_union(unsigned int* tile_mask,
                                                    const unsigned int* __restrict__ mask,
                                                    long long r0, long long n_rows,
                                                    int n_words, int tile_rows) {
    for (int word = threadIdx.x; word < n_words; word += blockDim.x) tile_mask[word] = 0u;
    __syncthreads();
    for (int index = threadIdx.x; index < tile_rows * n_words; index += blockDim.x) {
        int m = index / n_words, word = index % n_words;
        if (r0 + m < n_rows) atomicOr(&tile_mask[word], mask[(r0 + m) * n_words + word]);
    }
    __syncthreads();
}
