// csc_exact.cuh: the exact per-pair sum of one output element, used by the tiled
// GEMMs (mask_gemm.cu, csc_mask_wmma.cuh, tc_gemm.cu) to repair elements whose fast
// result is not finite.
//
// Why: a tile of those kernels runs over the union of its rows' offsets and
// zero-fills the rows that lack an offset, so a row without a pair at offset k still
// computes 0 * W[k]: exact zeros while W[k] is finite, but NaN (0 * inf, 0 * NaN) when
// W[k] holds a non-finite value. Results must not depend on the algorithm (SPEC: the
// same non-finite pattern as a pair-by-pair product), so:
//   * the fast path is unchanged; in its epilogue each thread tests its accumulators
//     (one compare per element, no extra memory traffic, no extra launch, no host
//     synchronisation);
//   * an element that is not finite is recomputed here from the row's own pairs only:
//     offsets ascending (through the pair-mask bits), input channels ascending, in the
//     accumulation type: deterministic, whatever the tile shape or row order.
// A fast result that is finite is already the pair-by-pair result (the padding terms
// were exact zeros), and a pair-by-pair result that is not finite makes the fast
// result non-finite too (the fast path adds the same pair terms), so after the repair
// the non-finite pattern is that of the pair-by-pair product.
#pragma once
#include "csc_common.cuh"
#include "csc_convert.cuh"

// True for finite values (exponent bits not all ones): NaN and +-inf are not.
__device__ __forceinline__ bool csc_is_finite(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool csc_is_finite(double v) {
    return ((unsigned long long)__double_as_longlong(v) & 0x7ff0000000000000ull) !=
           0x7ff0000000000000ull;
}

// sum over the offsets k set in the row's pair mask (ascending) of
//     sum_{c < depth} src[neighbour[row, k] * src_stride + c] * weight[k * weight_k_stride
//                                                                 + c * weight_stride]
// `src` and `weight` point at the first channel / the output column of the slice.
template <typename T, typename ACC>
__device__ __forceinline__ ACC csc_exact_pair_sum(const T* __restrict__ src, long long src_stride,
                                               const T* __restrict__ weight,
                                               long long weight_k_stride, int weight_stride,
                                               int depth, const int* __restrict__ neighbour,
                                               const unsigned int* __restrict__ mask,
                                               long long row, int kernel_volume, int n_words) {
    ACC sum = (ACC)0;
    for (int word = 0; word < n_words; ++word) {
        unsigned int bits = mask[row * n_words + word];
        while (bits) {
            const int k = word * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            const int partner = neighbour[row * kernel_volume + k];
            if (partner < 0) continue;
            const T* x = src + (long long)partner * src_stride;
            const T* w = weight + (long long)k * weight_k_stride;
#pragma unroll 1  // a cold path: small code
            for (int c = 0; c < depth; ++c)
                sum += (ACC)csc_load(x[c]) * (ACC)csc_load(w[(long long)c * weight_stride]);
        }
    }
    return sum;
}
