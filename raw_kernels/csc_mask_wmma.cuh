// csc_mask_wmma.cuh: the tensor-core mask-based fused GEMM (see mask_gemm.cu).
// One template, instantiated in two sources because the architectures differ:
// mask_gemm.cu (__half, every architecture) and mask_gemm_bf16.cu
// (__nv_bfloat16, whose WMMA fragments exist only from sm_80).
#ifndef CSC_MASK_WMMA_CUH
#define CSC_MASK_WMMA_CUH

#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_tile.cuh"
#include "csc_exact.cuh"

// CSC_MAX_MASK_WORDS (|K| <= 32 * CSC_MAX_MASK_WORDS), CSC_WMMA_TILE and
// CSC_WMMA_THREADS come from cusparseconv/_kernels.py, passed as -D.
#if !defined(CSC_MAX_MASK_WORDS) || !defined(CSC_WMMA_TILE) || !defined(CSC_WMMA_THREADS)
#error "compile with cusparseconv._kernels.NVRTC_OPTIONS (CSC_MAX_MASK_WORDS, CSC_WMMA_*)"
#endif

// Tensor-core variant: 4 warps, a 32-row x 32-channel output tile, each warp
// owning one 16 x 16 accumulator; the input channels advance 16 at a time.
static_assert(CSC_WMMA_TILE == 2 * 16 && CSC_WMMA_THREADS == 4 * 32,
              "4 warps, one 16 x 16 accumulator each");
#define CSC_WMMA_K 16

template <typename T>
__global__ void __launch_bounds__(CSC_WMMA_THREADS)
mask_gemm_wmma(const T* __restrict__ feats, const T* __restrict__ weight,
               const int* __restrict__ neighbour, const unsigned int* __restrict__ mask,
               int n_words, long long n_rows, int kernel_volume, int groups, int group_in,
               int group_out, const T* __restrict__ bias, int has_bias, T* __restrict__ out) {
    using namespace nvcuda;
    __shared__ __align__(32) T a_tile[CSC_WMMA_TILE * CSC_WMMA_K];   // row-major, ld 16
    __shared__ __align__(32) T w_tile[CSC_WMMA_K * CSC_WMMA_TILE];   // row-major, ld 32
    __shared__ __align__(32) float c_tile[CSC_WMMA_TILE * CSC_WMMA_TILE];
    __shared__ unsigned int tile_mask[CSC_MAX_MASK_WORDS];
    __shared__ int rows[CSC_WMMA_TILE];
    const long long r0 = (long long)blockIdx.x * CSC_WMMA_TILE;
    const int n0 = blockIdx.y * CSC_WMMA_TILE;
    const int group = blockIdx.z;
    const int c_in = groups * group_in, c_out = groups * group_out;
    const int warp = threadIdx.x / 32;
    const int warp_row = warp / 2, warp_col = warp % 2;
    const T zero = csc_store<T>(0.0f);

    csc_tile_mask_union(tile_mask, mask, r0, n_rows, n_words, CSC_WMMA_TILE);

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b_frag;

    for (int word = 0; word < n_words; ++word) {
        unsigned int bits = tile_mask[word];
        while (bits) {
            const int k = word * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            if (threadIdx.x < CSC_WMMA_TILE) {
                long long row = r0 + threadIdx.x;
                rows[threadIdx.x] = row < n_rows ? neighbour[row * kernel_volume + k] : -1;
            }
            __syncthreads();
            const T* w_k = weight + ((long long)k * groups + group) * group_in * group_out;
            for (int c0 = 0; c0 < group_in; c0 += CSC_WMMA_K) {
                for (int index = threadIdx.x; index < CSC_WMMA_TILE * CSC_WMMA_K;
                     index += CSC_WMMA_THREADS) {
                    int m = index / CSC_WMMA_K, kk = index % CSC_WMMA_K;
                    int source = rows[m];
                    a_tile[index] = (source >= 0 && c0 + kk < group_in)
                        ? feats[(long long)source * c_in + group * group_in + c0 + kk] : zero;
                }
                for (int index = threadIdx.x; index < CSC_WMMA_K * CSC_WMMA_TILE;
                     index += CSC_WMMA_THREADS) {
                    int kk = index / CSC_WMMA_TILE, n = index % CSC_WMMA_TILE;
                    w_tile[index] = (c0 + kk < group_in && n0 + n < group_out)
                        ? w_k[(long long)(c0 + kk) * group_out + n0 + n] : zero;
                }
                __syncthreads();
                wmma::load_matrix_sync(a_frag, a_tile + warp_row * 16 * CSC_WMMA_K, CSC_WMMA_K);
                wmma::load_matrix_sync(b_frag, w_tile + warp_col * 16, CSC_WMMA_TILE);
                wmma::mma_sync(acc, a_frag, b_frag, acc);
                __syncthreads();
            }
        }
    }
    wmma::store_matrix_sync(c_tile + warp_row * 16 * CSC_WMMA_TILE + warp_col * 16, acc,
                            CSC_WMMA_TILE, wmma::mem_row_major);
    __syncthreads();
    for (int index = threadIdx.x; index < CSC_WMMA_TILE * CSC_WMMA_TILE;
         index += CSC_WMMA_THREADS) {
        int m = index / CSC_WMMA_TILE, n = index % CSC_WMMA_TILE;
        long long row = r0 + m;
        if (row >= n_rows || n0 + n >= group_out) continue;
        float value = c_tile[index];
        if (!csc_is_finite(value))  // rows lacking an offset computed 0 * W[k]: see csc_exact.cuh
            value = csc_exact_pair_sum<T, float>(
                feats + group * group_in, c_in,
                weight + (long long)group * group_in * group_out + n0 + n,
                (long long)groups * group_in * group_out, group_out, group_in, neighbour, mask,
                row, kernel_volume, n_words);
        if (has_bias) value += csc_load(bias[group * group_out + n0 + n]);
        out[row * c_out + group * group_out + n0 + n] = csc_store<T>(value);
    }
}

#endif  // CSC_MASK_WMMA_CUH
