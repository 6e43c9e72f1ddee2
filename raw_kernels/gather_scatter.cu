// Gather / scatter helpers of the explicit algorithm and the final casts.
//
// The explicit forward gathers every offset's input rows into one padded
// (K, max_count, C_in) buffer (in the accumulation type), multiplies the stack
// with W by one batched cuBLAS GEMM, then scatters the (K, max_count, C_out)
// products into the output rows, either with atomics (scatter_add_pairs) or
// deterministically through the output-major position table (scatter_sorted).
//
// csc-instantiate: gather_padded<float, float>
// csc-instantiate: gather_padded<double, double>
// csc-instantiate: gather_padded<__half, float>
// csc-instantiate: gather_padded<__nv_bfloat16, float>
// csc-instantiate: scatter_add_pairs<float>
// csc-instantiate: scatter_add_pairs<double>
// csc-instantiate: scatter_sorted<float>
// csc-instantiate: scatter_sorted<double>
// csc-instantiate: finish_rows<float>
// csc-instantiate: finish_rows<double>
// csc-instantiate: finish_rows<__half>
// csc-instantiate: finish_rows<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_convert.cuh"

// out[k, p, c] = src[rows[pair_offsets[k] + p], column_offset + c] for p < count_k, else 0.
template <typename T, typename ACC>
__global__ void gather_padded(const T* __restrict__ src, int src_columns, int column_offset,
                              int channels, const int* __restrict__ rows,
                              const long long* __restrict__ pair_offsets, int kernel_volume,
                              long long max_count, ACC* __restrict__ out) {
    CSC_GRID_LOOP(index, (long long)kernel_volume * max_count * channels) {
        long long per_offset = max_count * channels;
        int k = (int)(index / per_offset);
        long long rest = index - k * per_offset;
        long long p = rest / channels;
        int c = (int)(rest - p * channels);
        long long start = pair_offsets[k];
        ACC value = (ACC)0;
        if (start + p < pair_offsets[k + 1]) {
            value = (ACC)csc_load(src[(long long)rows[start + p] * src_columns + column_offset + c]);
        }
        out[index] = value;
    }
}

// out[out_rows[pair], column_offset + c] += products[k, p, c] (atomic).
template <typename ACC>
__global__ void scatter_add_pairs(const ACC* __restrict__ products, const int* __restrict__ out_rows,
                                  const long long* __restrict__ pair_offsets, int kernel_volume,
                                  long long max_count, int channels, int out_columns,
                                  int column_offset, ACC* __restrict__ out) {
    CSC_GRID_LOOP(index, (long long)kernel_volume * max_count * channels) {
        long long per_offset = max_count * channels;
        int k = (int)(index / per_offset);
        long long rest = index - k * per_offset;
        long long p = rest / channels;
        int c = (int)(rest - p * channels);
        long long start = pair_offsets[k];
        if (start + p < pair_offsets[k + 1]) {
            atomicAdd(&out[(long long)out_rows[start + p] * out_columns + column_offset + c],
                      products[index]);
        }
    }
}

// Deterministic scatter: out[row, column_offset + c] = sum over k (in order) of
// products[k, position[row, k], c]; each output element is written once.
template <typename ACC>
__global__ void scatter_sorted(const ACC* __restrict__ products, const int* __restrict__ position,
                               long long n_rows, int kernel_volume, long long max_count,
                               int channels, int out_columns, int column_offset,
                               ACC* __restrict__ out) {
    CSC_GRID_LOOP(index, n_rows * channels) {
        long long row = index / channels;
        int c = (int)(index - row * channels);
        ACC sum = (ACC)0;
        for (int k = 0; k < kernel_volume; ++k) {
            int p = position[row * kernel_volume + k];
            if (p >= 0) sum += products[((long long)k * max_count + p) * channels + c];
        }
        out[row * out_columns + column_offset + c] = sum;
    }
}

// out = T(acc + bias): the last step of every algorithm that accumulates in ACC.
template <typename T>
__global__ void finish_rows(const typename csc_acc<T>::type* __restrict__ acc, long long n_rows,
                            int channels, const T* __restrict__ bias, int has_bias,
                            T* __restrict__ out) {
    CSC_GRID_LOOP(index, n_rows * channels) {
        typename csc_acc<T>::type value = acc[index];
        if (has_bias) value += csc_load(bias[index % channels]);
        out[index] = csc_store<T>(value);
    }
}
