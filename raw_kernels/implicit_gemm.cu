// Fused implicit GEMM (SIMT): gather, multiply and scatter in one kernel.
//
// Work is cut into tiles of BM pairs of one offset (tile_starts[k] is the
// first tile of offset k) times BN output channels; blockIdx.z is the group.
// Each block stages BM gathered input rows and a BK x BN slice of W[k] in
// shared memory, accumulates a BM x BN tile in registers (4 x 4 per thread)
// and adds it to the output rows with atomics (rows repeat across offsets).
//
// wgrad_splitk computes dW[k] = A[in]^T dY[out] over chunks of pairs of one
// offset (split-K) and adds the partial tiles to dW with atomics.
//
// csc-instantiate: implicit_gemm<float>
// csc-instantiate: implicit_gemm<double>
// csc-instantiate: implicit_gemm<__half>
// csc-instantiate: implicit_gemm<__nv_bfloat16>
// csc-instantiate: wgrad_splitk<float>
// csc-instantiate: wgrad_splitk<double>
// csc-instantiate: wgrad_splitk<__half>
// csc-instantiate: wgrad_splitk<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_tile.cuh"

// CSC_TILE (BM = BN: pairs x output channels), CSC_THREADS (16 x 16 threads, 4 x 4
// outputs each) and CSC_CHUNK come from cusparseconv/_kernels.py, passed as -D.
#if !defined(CSC_TILE) || !defined(CSC_THREADS) || !defined(CSC_CHUNK)
#error "compile with cusparseconv._kernels.NVRTC_OPTIONS (CSC_TILE, CSC_THREADS, CSC_CHUNK)"
#endif
static_assert(CSC_TILE == 4 * 16 && CSC_THREADS == 16 * 16, "16 x 16 threads, 4 x 4 outputs each");
#define CSC_TILE_K 16    // BK (input channels per stage)

__device__ __forceinline__ int csc_find_offset(const long long* __restrict__ starts,
                                               int kernel_volume, long long tile) {
    // largest k with starts[k] <= tile (starts has kernel_volume + 1 entries)
    int low = 0, high = kernel_volume;
    while (high - low > 1) {
        int mid = (low + high) / 2;
        if (starts[mid] <= tile) low = mid; else high = mid;
    }
    return low;
}

template <typename T>
__global__ void __launch_bounds__(CSC_THREADS)
implicit_gemm(const T* __restrict__ feats, const T* __restrict__ weight,
              const int* __restrict__ in_rows, const int* __restrict__ out_rows,
              const long long* __restrict__ pair_offsets,
              const long long* __restrict__ tile_starts, int kernel_volume, int groups,
              int group_in, int group_out, typename csc_acc<T>::type* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    __shared__ ACC a_tile[CSC_TILE_K][CSC_TILE];
    __shared__ ACC w_tile[CSC_TILE_K][CSC_TILE];
    const long long tile = blockIdx.x;
    const int k = csc_find_offset(tile_starts, kernel_volume, tile);
    const long long first = pair_offsets[k] + (tile - tile_starts[k]) * CSC_TILE;
    const long long last = min(first + CSC_TILE, pair_offsets[k + 1]);
    const int group = blockIdx.z;
    const int n0 = blockIdx.y * CSC_TILE;
    const int c_in = groups * group_in, c_out = groups * group_out;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const T* w_k = weight + ((long long)k * groups + group) * group_in * group_out;

    ACC acc[4][4];
    csc_tile_zero(acc);

    for (int c0 = 0; c0 < group_in; c0 += CSC_TILE_K) {
        for (int index = threadIdx.x; index < CSC_TILE * CSC_TILE_K; index += CSC_THREADS) {
            int m = index / CSC_TILE_K, kk = index % CSC_TILE_K;
            ACC value = (ACC)0;
            if (first + m < last && c0 + kk < group_in)
                value = csc_load(feats[(long long)in_rows[first + m] * c_in +
                                       group * group_in + c0 + kk]);
            a_tile[kk][m] = value;
        }
        csc_load_weight_tile(w_tile, w_k, c0, n0, group_in, group_out);
        __syncthreads();
        csc_tile_multiply(a_tile, w_tile, acc, tx, ty);
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        long long pair = first + ty + 16 * i;
        if (pair >= last) continue;
        long long row = out_rows[pair];
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (n < group_out) atomicAdd(&out[row * c_out + group * group_out + n], acc[i][j]);
        }
    }
}

// grid.x: chunks of at most CSC_CHUNK pairs of one offset (chunk_starts like tile_starts);
// grid.y: (input-channel tile) * n_out_tiles + (output-channel tile); grid.z: group.

template <typename T>
__global__ void __launch_bounds__(CSC_THREADS)
wgrad_splitk(const T* __restrict__ feats, const T* __restrict__ grad_out,
             const int* __restrict__ in_rows, const int* __restrict__ out_rows,
             const long long* __restrict__ pair_offsets,
             const long long* __restrict__ chunk_starts, int kernel_volume, int groups,
             int group_in, int group_out, typename csc_acc<T>::type* __restrict__ grad_weight) {
    typedef typename csc_acc<T>::type ACC;
    __shared__ ACC a_tile[CSC_TILE_K][CSC_TILE];
    __shared__ ACC d_tile[CSC_TILE_K][CSC_TILE];
    const long long chunk = blockIdx.x;
    const int k = csc_find_offset(chunk_starts, kernel_volume, chunk);
    const long long first = pair_offsets[k] + (chunk - chunk_starts[k]) * CSC_CHUNK;
    const long long last = min(first + CSC_CHUNK, pair_offsets[k + 1]);
    const int out_tiles = (group_out + CSC_TILE - 1) / CSC_TILE;
    const int i0 = (blockIdx.y / out_tiles) * CSC_TILE;
    const int o0 = (blockIdx.y % out_tiles) * CSC_TILE;
    const int group = blockIdx.z;
    const int c_in = groups * group_in, c_out = groups * group_out;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

    ACC acc[4][4];
    csc_tile_zero(acc);

    for (long long p0 = first; p0 < last; p0 += CSC_TILE_K) {
        for (int index = threadIdx.x; index < CSC_TILE_K * CSC_TILE; index += CSC_THREADS) {
            int pp = index / CSC_TILE, i = index % CSC_TILE;
            ACC a = (ACC)0, d = (ACC)0;
            if (p0 + pp < last) {
                if (i0 + i < group_in)
                    a = csc_load(feats[(long long)in_rows[p0 + pp] * c_in + group * group_in + i0 + i]);
                if (o0 + i < group_out)
                    d = csc_load(grad_out[(long long)out_rows[p0 + pp] * c_out + group * group_out + o0 + i]);
            }
            a_tile[pp][i] = a;
            d_tile[pp][i] = d;
        }
        __syncthreads();
        csc_tile_multiply(a_tile, d_tile, acc, tx, ty);
        __syncthreads();
    }
    ACC* dw = grad_weight + ((long long)k * groups + group) * group_in * group_out;
    for (int i = 0; i < 4; ++i) {
        int row = i0 + ty + 16 * i;
        if (row >= group_in) continue;
        for (int j = 0; j < 4; ++j) {
            int col = o0 + tx + 16 * j;
            if (col < group_out) atomicAdd(&dw[(long long)row * group_out + col], acc[i][j]);
        }
    }
}
