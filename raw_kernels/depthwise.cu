// Depthwise convolution (groups == C_in == C_out, weight (K, C)): no GEMM.
//
// depthwise_forward walks the output-major neighbour table: each output
// element is a K-term dot product, written once (deterministic). Run on the
// reverse table it is the input gradient. depthwise_wgrad reduces each
// (offset, channel) over that offset's pairs inside one block (deterministic).
//
// csc-instantiate: depthwise_forward<float>
// csc-instantiate: depthwise_forward<double>
// csc-instantiate: depthwise_forward<__half>
// csc-instantiate: depthwise_forward<__nv_bfloat16>
// csc-instantiate: depthwise_wgrad<float>
// csc-instantiate: depthwise_wgrad<double>
// csc-instantiate: depthwise_wgrad<__half>
// csc-instantiate: depthwise_wgrad<__nv_bfloat16>
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

// grid (K, ceil(C / 32)); block 256 = 32 channels x 8 pair lanes.
template <typename T>
__global__ void __launch_bounds__(256)
depthwise_wgrad(const T* __restrict__ feats, const T* __restrict__ grad_out,
                const int* __restrict__ in_rows, const int* __restrict__ out_rows,
                const long long* __restrict__ pair_offsets, int channels,
                typename csc_acc<T>::type* __restrict__ grad_weight) {
    typedef typename csc_acc<T>::type ACC;
    __shared__ ACC partial[8][32];
    const int k = blockIdx.x;
    const int lane = threadIdx.x % 32, pair_lane = threadIdx.x / 32;
    const int c = blockIdx.y * 32 + lane;
    ACC sum = (ACC)0;
    if (c < channels) {
        for (long long p = pair_offsets[k] + pair_lane; p < pair_offsets[k + 1]; p += 8)
            sum += (ACC)csc_load(feats[(long long)in_rows[p] * channels + c]) *
                   (ACC)csc_load(grad_out[(long long)out_rows[p] * channels + c]);
    }
    partial[pair_lane][lane] = sum;
    __syncthreads();
    if (pair_lane == 0 && c < channels) {
        ACC total = (ACC)0;
        for (int i = 0; i < 8; ++i) total += partial[i][lane];
        grad_weight[(long long)k * channels + c] = total;
    }
}
