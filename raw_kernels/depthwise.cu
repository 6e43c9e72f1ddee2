// Depthwise convolution (groups == C_in == C_out, weight (K, C)): no GEMM.
//
// depthwise_forward walks the output-major neighbour table: each output
// element is a K-term dot product, written once (deterministic). Run on the
// reverse table it is the input gradient. The weight gradient
// (depthwise_wgrad_split + depthwise_wgrad_reduce) cuts the pairs of each offset
// into chunks (any number of blocks), each block writes its chunk's sums, and a
// second kernel adds an offset's chunks in chunk order (deterministic, no atomics;
// launched by backends/_tensor_core.py).
//
// csc-instantiate: depthwise_forward<float>
// csc-instantiate: depthwise_forward<double>
// csc-instantiate: depthwise_forward<__half>
// csc-instantiate: depthwise_forward<__nv_bfloat16>
// csc-instantiate: depthwise_wgrad_split<float>
// csc-instantiate: depthwise_wgrad_split<double>
// csc-instantiate: depthwise_wgrad_split<__half>
// csc-instantiate: depthwise_wgrad_split<__nv_bfloat16>
// csc-instantiate: depthwise_wgrad_reduce<float>
// csc-instantiate: depthwise_wgrad_reduce<double>
// csc-instantiate: depthwise_wgrad_reduce<__half>
// csc-instantiate: depthwise_wgrad_reduce<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_convert.cuh"

template <typename T>
__global__ void depthwise_forward(const T* __restrict__ feats, const T* __restrict__ weight,
                                  const int* __restrict__ neighbour, long long n_rows,
                                  int kernel_volume, int channels, const T* __restrict__ bias,
                                  int has_bias, T* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, n_rows * channels) {
        long long row = index / channels;
        int c = (int)(index - row * channels);
        ACC sum = has_bias ? (ACC)csc_load(bias[c]) : (ACC)0;
        for (int k = 0; k < kernel_volume; ++k) {
            int source = neighbour[row * kernel_volume + k];
            if (source >= 0)
                sum += (ACC)csc_load(feats[(long long)source * channels + c]) *
                       (ACC)csc_load(weight[(long long)k * channels + c]);
        }
        out[index] = csc_store<T>(sum);
    }
}

// grid (n_chunks, ceil(C / 32)); block 256 = 32 channels x 8 pair lanes. Block
// (chunk, y) sums feats[in_rows[p], c] * grad_out[out_rows[p], c] over the pairs p of
// [chunk_begin[chunk], chunk_end[chunk]) for its 32 channels c, the 8 pair lanes
// combined in a fixed order, into partial[chunk, c].
template <typename T>
__global__ void __launch_bounds__(256)
depthwise_wgrad_split(const T* __restrict__ feats, const T* __restrict__ grad_out,
                      const int* __restrict__ in_rows, const int* __restrict__ out_rows,
                      const long long* __restrict__ chunk_begin,
                      const long long* __restrict__ chunk_end, int channels,
                      typename csc_acc<T>::type* __restrict__ partial) {
    typedef typename csc_acc<T>::type ACC;
    __shared__ ACC lanes[8][32];
    const long long chunk = blockIdx.x;
    const int lane = threadIdx.x % 32, pair_lane = threadIdx.x / 32;
    const int c = blockIdx.y * 32 + lane;
    ACC sum = (ACC)0;
    if (c < channels) {
        const long long end = chunk_end[chunk];
        for (long long p = chunk_begin[chunk] + pair_lane; p < end; p += 8)
            sum += (ACC)csc_load(feats[(long long)in_rows[p] * channels + c]) *
                   (ACC)csc_load(grad_out[(long long)out_rows[p] * channels + c]);
    }
    lanes[pair_lane][lane] = sum;
    __syncthreads();
    if (pair_lane == 0 && c < channels) {
        ACC total = (ACC)0;
        for (int i = 0; i < 8; ++i) total += lanes[i][lane];
        partial[chunk * channels + c] = total;
    }
}

// grad_weight[k, c] = sum of partial[chunk, c] over offset k's chunks
// [chunk_start[k], chunk_start[k + 1]) in chunk order (0 without pairs), cast to T.
template <typename T>
__global__ void depthwise_wgrad_reduce(const typename csc_acc<T>::type* __restrict__ partial,
                                       const long long* __restrict__ chunk_start,
                                       int kernel_volume, int channels, T* __restrict__ grad_weight) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, (long long)kernel_volume * channels) {
        const long long k = index / channels;
        const int c = (int)(index - k * channels);
        ACC sum = (ACC)0;
        for (long long chunk = chunk_start[k]; chunk < chunk_start[k + 1]; ++chunk)
            sum += partial[chunk * channels + c];
        grad_weight[index] = csc_store<T>(sum);
    }
}
