// Gather and scatter of the grouped explicit algorithm (the cuBLAS baseline,
// cusparseconv/backends/_explicit.py).
//
// The offsets of a kernel map are grouped by pair count (offsets with similar
// counts together, a bounded padding waste); a group of n offsets is gathered into
// an (n, padded, C) stack in the input's own type (16-bit stays 16-bit), multiplied
// by one batched cuBLAS GEMM with fp32 compute, and the products are added into the
// output rows: with atomics (scatter_add_grouped, one launch per group) or
// deterministically through the output-major position table, all groups at once
// (scatter_sorted_grouped: offsets in ascending order, each element written once).
//
// csc-instantiate: gather_grouped<float>
// csc-instantiate: gather_grouped<double>
// csc-instantiate: gather_grouped<__half>
// csc-instantiate: gather_grouped<__nv_bfloat16>
// csc-instantiate: scatter_add_grouped<float>
// csc-instantiate: scatter_add_grouped<double>
// csc-instantiate: scatter_add_grouped<__half>
// csc-instantiate: scatter_add_grouped<__nv_bfloat16>
// csc-instantiate: scatter_sorted_grouped<float>
// csc-instantiate: scatter_sorted_grouped<double>
// csc-instantiate: scatter_sorted_grouped<__half>
// csc-instantiate: scatter_sorted_grouped<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_convert.cuh"

// out[j, q, c] = src[rows[pair_offsets[k] + q], c] for q < count(k), else 0, where
// k = group[j]: the rows of the group's offsets, each padded to `padded` rows.
template <typename T>
__global__ void gather_grouped(const T* __restrict__ src, int channels,
                               const int* __restrict__ rows,
                               const long long* __restrict__ pair_offsets,
                               const int* __restrict__ group, int n_group, long long padded,
                               T* __restrict__ out) {
    const T zero = csc_store<T>((typename csc_acc<T>::type)0);
    CSC_GRID_LOOP(index, (long long)n_group * padded * channels) {
        const long long per_offset = padded * channels;
        const int j = (int)(index / per_offset);
        const long long rest = index - j * per_offset;
        const long long q = rest / channels;
        const int c = (int)(rest - q * channels);
        const int k = group[j];
        const long long start = pair_offsets[k];
        out[index] = start + q < pair_offsets[k + 1]
            ? src[(long long)rows[start + q] * channels + c] : zero;
    }
}

// out[out_rows[pair], c] += products[j, q, c] for the pairs of the group's offsets
// (atomic, in the accumulation type).
template <typename T>
__global__ void scatter_add_grouped(const T* __restrict__ products,
                                    const int* __restrict__ out_rows,
                                    const long long* __restrict__ pair_offsets,
                                    const int* __restrict__ group, int n_group,
                                    long long padded, int channels,
                                    typename csc_acc<T>::type* __restrict__ out) {
    CSC_GRID_LOOP(index, (long long)n_group * padded * channels) {
        const long long per_offset = padded * channels;
        const int j = (int)(index / per_offset);
        const long long rest = index - j * per_offset;
        const long long q = rest / channels;
        const int c = (int)(rest - q * channels);
        const int k = group[j];
        const long long start = pair_offsets[k];
        if (start + q < pair_offsets[k + 1])
            atomicAdd(&out[(long long)out_rows[start + q] * channels + c],
                      csc_load(products[index]));
    }
}

// Deterministic scatter: out[row, c] = sum over offsets k in ascending order with
// position[row, k] >= 0 of products[base[k] + position[row, k] * channels + c], where
// base[k] is the first element of offset k's products in the flat buffer of all
// groups. Each output element is written once, by one thread.
template <typename T>
__global__ void scatter_sorted_grouped(const T* __restrict__ products,
                                       const long long* __restrict__ base,
                                       const int* __restrict__ position, long long n_rows,
                                       int kernel_volume, int channels,
                                       typename csc_acc<T>::type* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, n_rows * channels) {
        const long long row = index / channels;
        const int c = (int)(index - row * channels);
        ACC sum = (ACC)0;
        for (int k = 0; k < kernel_volume; ++k) {
            const int p = position[row * kernel_volume + k];
            if (p >= 0) sum += csc_load(products[base[k] + (long long)p * channels + c]);
        }
        out[index] = sum;
    }
}
