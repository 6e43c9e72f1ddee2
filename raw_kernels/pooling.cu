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
// csc-instantiate: segment_reduce_split<float>
// csc-instantiate: segment_reduce_split<double>
// csc-instantiate: segment_reduce_split<__half>
// csc-instantiate: segment_reduce_split<__nv_bfloat16>
// csc-instantiate: segment_reduce_finish<float>
// csc-instantiate: segment_reduce_finish<double>
// csc-instantiate: segment_reduce_finish<__half>
// csc-instantiate: segment_reduce_finish<__nv_bfloat16>
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

// Rows reduced by segment (global pooling), the rows of each segment split into
// chunks, so that a few long segments (one per batch item) still spread over many
// blocks. Launched by backends/_tensor_core.py. Deterministic: fixed chunks, fixed combining order.
//
// Max propagates NaN (SPEC: a NaN among the inputs gives NaN).
template <typename ACC>
__device__ __forceinline__ ACC csc_max_nan(ACC best, ACC x) {
    return (x != x || x > best) ? x : best;
}

// grid (n_chunks, ceil(C / 32)); block 256 = 32 channels x 8 row lanes. Chunk
// `chunk` covers sorted positions [chunk_begin, chunk_end) (never empty, within one
// segment); partial[chunk, c] = sum (mode 0, 1) or max (mode 2) of feats[order[i], c].
template <typename T>
__global__ void __launch_bounds__(256)
segment_reduce_split(const T* __restrict__ feats, const long long* __restrict__ order,
                     const long long* __restrict__ chunk_begin,
                     const long long* __restrict__ chunk_end, int channels, int mode,
                     typename csc_acc<T>::type* __restrict__ partial) {
    typedef typename csc_acc<T>::type ACC;
    __shared__ ACC lanes[8][32];
    __shared__ int lane_used[8];
    const long long chunk = blockIdx.x;
    const int lane = threadIdx.x % 32, row_lane = threadIdx.x / 32;
    const int c = blockIdx.y * 32 + lane;
    const long long begin = chunk_begin[chunk], end = chunk_end[chunk];
    ACC value = (ACC)0;
    if (c < channels) {
        for (long long i = begin + row_lane; i < end; i += 8) {
            const ACC x = csc_load(feats[order[i] * channels + c]);
            if (mode == 2) value = i == begin + row_lane ? x : csc_max_nan(value, x);
            else value += x;
        }
    }
    lanes[row_lane][lane] = value;
    if (lane == 0) lane_used[row_lane] = begin + row_lane < end;
    __syncthreads();
    if (row_lane == 0 && c < channels) {
        ACC total = lanes[0][lane];  // lane 0 always has a row: chunks are not empty
        for (int i = 1; i < 8; ++i) {
            if (mode == 2) total = lane_used[i] ? csc_max_nan(total, lanes[i][lane]) : total;
            else total += lanes[i][lane];
        }
        partial[chunk * channels + c] = total;
    }
}

// out[s, c] = the chunks [chunk_start[s], chunk_start[s + 1]) of segment s combined in
// order (sum, mean = sum / rows of the segment, max); 0 for an empty segment.
template <typename T>
__global__ void segment_reduce_finish(const typename csc_acc<T>::type* __restrict__ partial,
                                      const long long* __restrict__ chunk_start,
                                      const long long* __restrict__ starts, long long n_segments,
                                      int channels, int mode, T* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    CSC_GRID_LOOP(index, n_segments * channels) {
        const long long segment = index / channels;
        const int c = (int)(index - segment * channels);
        const long long first = chunk_start[segment], last = chunk_start[segment + 1];
        ACC value = first < last ? partial[first * channels + c] : (ACC)0;
        for (long long chunk = first + 1; chunk < last; ++chunk) {
            const ACC x = partial[chunk * channels + c];
            value = mode == 2 ? csc_max_nan(value, x) : value + x;
        }
        const long long rows = starts[segment + 1] - starts[segment];
        if (mode == 1 && rows > 0) value /= (ACC)rows;
        out[index] = csc_store<T>(value);
    }
}
