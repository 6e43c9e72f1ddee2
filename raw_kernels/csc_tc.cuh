// csc_tc.cuh: what the tensor-core GEMMs (tc_gemm.cu, tc_wgrad.cu) share: the
// per-type constants and the warp-level fragment loads from padded shared tiles.
//
// Types: __half and __nv_bfloat16 run mma.sync m16n8k16 (fp32 accumulation);
// float runs m16n8k8 on tf32 operands (rounded to nearest by csc_to_tf32), which
// the library uses only when the user allows TF32.
//
// Shared tiles are row-major with a padded leading dimension `ld` (elements):
//   * "row-major A" tiles [m][k] (k contiguous) are read with ldmatrix (x4), whose
//     8 row addresses per matrix must fall in distinct 16-byte bank groups: rows of
//     64 bytes padded by 16 bytes (a stride of 5 chunks) are conflict-free;
//   * "k-major" tiles [k][n] (n contiguous) are read with ldmatrix.trans for 16-bit
//     types (padding of 16 bytes: an odd number of chunks per row, conflict-free)
//     and with 32-bit shared loads for tf32, where lane (g, t) reads element
//     [t (+4)][g]: a stride of 8 (mod 32) words puts the 32 lanes in 32 banks.
#pragma once
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_mma.cuh"

template <typename T>
struct csc_tc;

template <>
struct csc_tc<__half> {
    static constexpr int VEC = 8;      // elements per 16-byte chunk
    static constexpr int KSTEP = 16;   // k of one mma (m16n8k16)
    static constexpr int PAD_ROWS = 8;    // padding of [m][k] tiles (ldmatrix): 16 bytes
    static constexpr int PAD_KMAJOR = 8;  // padding of [k][n] tiles (ldmatrix.trans): 16 bytes
};
template <>
struct csc_tc<__nv_bfloat16> {
    static constexpr int VEC = 8;
    static constexpr int KSTEP = 16;
    static constexpr int PAD_ROWS = 8;
    static constexpr int PAD_KMAJOR = 8;
};
template <>
struct csc_tc<float> {
    static constexpr int VEC = 4;
    static constexpr int KSTEP = 8;    // m16n8k8.tf32
    static constexpr int PAD_ROWS = 4;    // 16 bytes (ldmatrix)
    static constexpr int PAD_KMAJOR = 8;  // 32 bytes: 32-bit loads of [t][g] hit 32 banks
};

// A fragment (16 x KSTEP) of rows [row0, row0 + 16) and columns [k0, k0 + KSTEP) of a
// row-major [m][k] tile. 16-bit: one ldmatrix.x4 whose matrices are (rows 0-7 | 8-15)
// x (k 0-7 | 8-15), lane l pointing at row l % 16, column 8 (l / 16): registers
// a0a1, a2a3, a4a5, a6a7 of the ISA layout. tf32: the same with 4-float columns,
// registers a0..a3, then rounded to tf32.
template <typename T>
__device__ __forceinline__ void csc_tc_load_a_rows(unsigned (&a)[4], const T* tile, int ld,
                                                   int row0, int k0, int lane) {
    csc_ldmatrix_x4(a, tile + (row0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}
template <>
__device__ __forceinline__ void csc_tc_load_a_rows<float>(unsigned (&a)[4], const float* tile,
                                                          int ld, int row0, int k0, int lane) {
    csc_ldmatrix_x4(a, tile + (row0 + (lane & 15)) * ld + k0 + (lane >> 4) * 4);
    for (int q = 0; q < 4; ++q) a[q] = csc_to_tf32(__uint_as_float(a[q]));
}

// A fragment read from a k-major [k][m] tile (the weight gradient's gathered rows,
// A = X^T). 16-bit: ldmatrix.x4.trans, lane l pointing at k row (l % 8) + 8 (l / 16),
// column m0 + 8 ((l / 8) % 2): matrix j = (k 0-7 | 8-15) x (m 0-7 | 8-15) in the order
// a0a1 (m 0-7, k 0-7), a2a3 (m 8-15, k 0-7), a4a5 (m 0-7, k 8-15), a6a7 (m 8-15, k 8-15).
// tf32: a_q = A[g + 8 (q & 1)][t + 4 (q >> 1)] = tile[t + 4 (q >> 1)][g + 8 (q & 1)].
template <typename T>
__device__ __forceinline__ void csc_tc_load_a_kmajor(unsigned (&a)[4], const T* tile, int ld,
                                                     int m0, int k0, int lane) {
    csc_ldmatrix_x4_trans(a, tile + (k0 + (lane & 7) + 8 * (lane >> 4)) * ld + m0 +
                                 8 * ((lane >> 3) & 1));
}
template <>
__device__ __forceinline__ void csc_tc_load_a_kmajor<float>(unsigned (&a)[4], const float* tile,
                                                            int ld, int m0, int k0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int q = 0; q < 4; ++q)
        a[q] = csc_to_tf32(tile[(k0 + t + 4 * (q >> 1)) * ld + m0 + g + 8 * (q & 1)]);
}

// B fragments of two n8 tiles, columns [n0, n0 + 16), rows [k0, k0 + KSTEP) of a
// k-major [k][n] tile. 16-bit: one ldmatrix.x4.trans, lane l pointing at k row l % 16,
// column n0 + 8 (l / 16): matrices (k 0-7, n 0-7) = b0b1 and (k 8-15, n 0-7) = b2b3 of
// the first tile, then the same for the second. tf32: b_q = tile[k0 + t + 4 q][n + g].
template <typename T>
__device__ __forceinline__ void csc_tc_load_b_pair(unsigned (&b)[2][2], const T* tile, int ld,
                                                   int k0, int n0, int lane) {
    unsigned r[4];
    csc_ldmatrix_x4_trans(r, tile + (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8);
    b[0][0] = r[0];
    b[0][1] = r[1];
    b[1][0] = r[2];
    b[1][1] = r[3];
}
template <>
__device__ __forceinline__ void csc_tc_load_b_pair<float>(unsigned (&b)[2][2], const float* tile,
                                                          int ld, int k0, int n0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int j = 0; j < 2; ++j)
        for (int q = 0; q < 2; ++q)
            b[j][q] = csc_to_tf32(tile[(k0 + t + 4 * q) * ld + n0 + 8 * j + g]);
}

// acc += A B for one 16 x 8 tile.
template <typename T>
__device__ __forceinline__ void csc_tc_mma(float (&acc)[4], const unsigned (&a)[4],
                                           const unsigned (&b)[2]) {
    csc_mma_m16n8k16<T>(acc, a, b);
}
template <>
__device__ __forceinline__ void csc_tc_mma<float>(float (&acc)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2]) {
    csc_mma_m16n8k8_tf32(acc, a, b);
}

// One 16-byte chunk (or, when VEC16 is false, its elements one by one with bounds)
// of a global row into shared memory. `valid` false: zeros. `count`: how many of the
// chunk's elements exist (the scalar path reads only those).
template <typename T, bool VEC16>
__device__ __forceinline__ void csc_tc_copy_chunk(T* dst, const T* src, bool valid, int count) {
    if constexpr (VEC16) {
        csc_cp_async<16>(dst, src, valid);
    } else {
        for (int e = 0; e < csc_tc<T>::VEC; ++e)
            dst[e] = (valid && e < count) ? src[e] : csc_store<T>(0.0f);
    }
}
