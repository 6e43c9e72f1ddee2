// Pooling over the output-major neighbour table, its gradient, and per-segment
// reductions (global pooling).
//
// csc-instantiate: pool_max<float>
// csc-instantiate: pool_max<double>
// csc-instantiate: pool_max<__half>
// csc-instantiate: pool_max<__nv_bfloat16>
// csc-instantiate: pool_sum<float>
// csc-instantiate: pool_sum<double>
// csc-instantiate: pool_sum<__half>
// csc-instantiate: pool_sum<__nv_bfloat16>
// csc-instantiate: scatter_by_index<float>
// csc-instantiate: scatter_by_index<double>
// csc-instantiate: scatter_by_index<__half>
// csc-instantiate: scatter_by_index<__nv_bfloat16>
// csc-instantiate: segment_reduce<float>
// csc-instantiate: segment_reduce<double>
// csc-instantiate: segment_reduce<__half>
// csc-instantiate: segment_reduce<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_convert.cuh"

// Max over active offsets; argmax = winning input row (first offset wins ties), -1 if none.
// NaN propagates as in NumPy and PyTorch: a NaN input beats every number, and the
// first NaN (in kernel order) is the winner, so the gradient goes to it.
template <typename T>
__global__ void pool_max(const T* __restrict__ feats, const int* __restrict__ neighbour,
                         long long n_rows, int kernel_volume, int channels, T* __restrict__ out,
                         long long* __restrict__ argmax) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, n_rows * channels) {
        long long row = index / channels;
        int c = (int)(index - row * channels);
        ACC best = (ACC)0;
        long long winner = -1;
        for (int k = 0; k < kernel_volume; ++k) {
            int source = neighbour[row * kernel_volume + k];
            if (source < 0) continue;
            ACC value = csc_load(feats[(long long)source * channels + c]);
            bool value_nan = value != value, best_nan = best != best;
            if (winner < 0 || value > best || (value_nan && !best_nan)) {
                best = value;
                winner = source;
            }
        }
        out[index] = csc_store<T>(winner >= 0 ? best : (ACC)0);
        argmax[index] = winner;
    }
}

// Sum (or mean over the active offsets when average != 0).
template <typename T>
__global__ void pool_sum(const T* __restrict__ feats, const int* __restrict__ neighbour,
                         long long n_rows, int kernel_volume, int channels, int average,
                         T* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, n_rows * channels) {
        long long row = index / channels;
        int c = (int)(index - row * channels);
        ACC sum = (ACC)0;
        int count = 0;
        for (int k = 0; k < kernel_volume; ++k) {
            int source = neighbour[row * kernel_volume + k];
            if (source < 0) continue;
            sum += csc_load(feats[(long long)source * channels + c]);
            ++count;
        }
        if (average && count > 0) sum /= (ACC)count;
        out[index] = csc_store<T>(sum);
    }
}

// grad_in[argmax[r, c], c] += grad_out[r, c] (atomic, accumulation type).
template <typename T>
__global__ void scatter_by_index(const T* __restrict__ grad_out, const long long* __restrict__ argmax,
                                 long long n_rows, int channels,
                                 typename csc_acc<T>::type* __restrict__ grad_in) {
    CSC_GRID_LOOP(index, n_rows * channels) {
        long long target = argmax[index];
        if (target >= 0) {
            int c = (int)(index % channels);
            atomicAdd(&grad_in[target * channels + c], csc_load(grad_out[index]));
        }
    }
}

// Rows grouped by segment: segment s owns order[starts[s]:starts[s + 1]].
// mode 0: sum, 1: mean, 2: max. One thread per (segment, channel); deterministic.
template <typename T>
__global__ void segment_reduce(const T* __restrict__ feats, const long long* __restrict__ order,
                               const long long* __restrict__ starts, long long n_segments,
                               int channels, int mode, T* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, n_segments * channels) {
        long long segment = index / channels;
        int c = (int)(index - segment * channels);
        long long first = starts[segment], last = starts[segment + 1];
        ACC value = (ACC)0;
        for (long long i = first; i < last; ++i) {
            ACC x = csc_load(feats[order[i] * channels + c]);
            if (mode == 2) value = (i == first || x > value) ? x : value;
            else value += x;
        }
        if (mode == 1 && last > first) value /= (ACC)(last - first);
        out[index] = csc_store<T>(value);
    }
}
