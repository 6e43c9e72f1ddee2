// Mask-based fused GEMM: one block per tile of output rows walks the pair mask.
//
// The block ORs the pair-mask words of its rows, then for every offset active
// in the tile gathers the input rows through the neighbour table (zero where a
// row lacks the offset), multiplies with W[k] and accumulates in registers.
// Every output row is written once: no atomics, deterministic, bias fused.
// An output element that is not finite is recomputed from its row's own pairs
// (csc_exact.cuh), so a non-finite W[k] reaches only the rows paired at k.
// Run on the reverse table with W transposed it gives the input gradient.
//
// mask_gemm:      SIMT, float32 / float64 (and 16-bit inputs with float accumulation)
// mask_gemm_wmma: tensor cores (WMMA 16x16x16), float accumulation, defined in
//                 csc_mask_wmma.cuh: __half here (sm_70 and newer); __nv_bfloat16 in
//                 mask_gemm_bf16.cu, since its WMMA fragment exists only from sm_80
//
// csc-instantiate: mask_gemm<float>
// csc-instantiate: mask_gemm<double>
// csc-instantiate: mask_gemm<__half>
// csc-instantiate: mask_gemm<__nv_bfloat16>
// csc-instantiate: mask_gemm_wmma<__half>
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_tile.cuh"
#include "csc_exact.cuh"
#include "csc_mask_wmma.cuh"

// CSC_MASK_TILE and CSC_MASK_THREADS come from cusparseconv/_kernels.py, passed as -D.
#if !defined(CSC_MASK_TILE) || !defined(CSC_MASK_THREADS)
#error "compile with cusparseconv._kernels.NVRTC_OPTIONS (CSC_MASK_TILE, CSC_MASK_THREADS)"
#endif
static_assert(CSC_MASK_TILE == 4 * 16 && CSC_MASK_THREADS == 16 * 16,
              "16 x 16 threads, 4 x 4 outputs each");
#define CSC_MASK_TILE_K 16

// Blocks per SM the register allocation must allow (256 threads each). Without a
// bound, ptxas took more registers than needed once the epilogue learnt to repair
// non-finite elements (sm_90: 47 -> 56, one block less), or spilled (sm_120). With
// float accumulators: 6 blocks (75 % on sm_80) where an SM holds 1536 threads or
// more, 5 (62 %) from sm_90 on; double: 4 and 3. sm_75 and the architectures whose
// SMs hold fewer threads keep ptxas's choice.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900 || __CUDA_ARCH__ == 1000 || \
                               __CUDA_ARCH__ == 1030 || __CUDA_ARCH__ >= 1100)
#define CSC_MASK_MIN_BLOCKS(ACC_BYTES) ((ACC_BYTES) == 8 ? 3 : 5)
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && __CUDA_ARCH__ < 900
#define CSC_MASK_MIN_BLOCKS(ACC_BYTES) ((ACC_BYTES) == 8 ? 4 : 6)
#endif

template <typename T>
#ifdef CSC_MASK_MIN_BLOCKS
__global__ void __launch_bounds__(CSC_MASK_THREADS,
                                  CSC_MASK_MIN_BLOCKS(sizeof(typename csc_acc<T>::type)))
#else
__global__ void __launch_bounds__(CSC_MASK_THREADS)
#endif
mask_gemm(const T* __restrict__ feats, const T* __restrict__ weight,
          const int* __restrict__ neighbour, const unsigned int* __restrict__ mask,
          int n_words, long long n_rows, int kernel_volume, int groups, int group_in,
          int group_out, const T* __restrict__ bias, int has_bias, T* __restrict__ out) {
    typedef typename csc_acc<T>::type ACC;
    __shared__ ACC a_tile[CSC_MASK_TILE_K][CSC_MASK_TILE];
    __shared__ ACC w_tile[CSC_MASK_TILE_K][CSC_MASK_TILE];
    __shared__ unsigned int tile_mask[CSC_MAX_MASK_WORDS];
    __shared__ int rows[CSC_MASK_TILE];
    const long long r0 = (long long)blockIdx.x * CSC_MASK_TILE;
    const int n0 = blockIdx.y * CSC_MASK_TILE;
    const int group = blockIdx.z;
    const int c_in = groups * group_in, c_out = groups * group_out;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

    csc_tile_mask_union(tile_mask, mask, r0, n_rows, n_words, CSC_MASK_TILE);

    ACC acc[4][4];
    csc_tile_zero(acc);

    for (int word = 0; word < n_words; ++word) {
        unsigned int bits = tile_mask[word];  // uniform across the block
        while (bits) {
            const int k = word * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            if (threadIdx.x < CSC_MASK_TILE) {
                long long row = r0 + threadIdx.x;
                rows[threadIdx.x] = row < n_rows ? neighbour[row * kernel_volume + k] : -1;
            }
            __syncthreads();
            const T* w_k = weight + ((long long)k * groups + group) * group_in * group_out;
            for (int c0 = 0; c0 < group_in; c0 += CSC_MASK_TILE_K) {
                for (int index = threadIdx.x; index < CSC_MASK_TILE * CSC_MASK_TILE_K;
                     index += CSC_MASK_THREADS) {
                    int m = index / CSC_MASK_TILE_K, kk = index % CSC_MASK_TILE_K;
                    int source = rows[m];
                    ACC value = (ACC)0;
                    if (source >= 0 && c0 + kk < group_in)
                        value = csc_load(feats[(long long)source * c_in + group * group_in + c0 + kk]);
                    a_tile[kk][m] = value;
                }
                csc_load_weight_tile(w_tile, w_k, c0, n0, group_in, group_out);
                __syncthreads();
                csc_tile_multiply(a_tile, w_tile, acc, tx, ty);
                __syncthreads();
            }
        }
    }
    // Elements that are not finite are recomputed from their row's pairs only
    // (csc_exact.cuh: a missing slot must not contribute 0 * W[k] when W[k] is not
    // finite); bit i * 4 + j of `repair` marks acc[i][j].
    unsigned int repair = 0u;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
            if (!csc_is_finite(acc[i][j])) repair |= 1u << (i * 4 + j);
    for (int i = 0; i < 4; ++i) {
        long long row = r0 + ty + 16 * i;
        if (row >= n_rows) continue;
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (n >= group_out) continue;
            ACC value = acc[i][j];
            if (has_bias) value += csc_load(bias[group * group_out + n]);
            out[row * c_out + group * group_out + n] = csc_store<T>(value);
        }
    }
#pragma unroll 1
    for (; repair; repair &= repair - 1) {
        const int e = __ffs(repair) - 1;
        const long long row = r0 + ty + 16 * (e >> 2);
        const int n = n0 + tx + 16 * (e & 3);
        if (row >= n_rows || n >= group_out) continue;  // padding of the tile
        ACC value = csc_exact_pair_sum<T, ACC>(
            feats + group * group_in, c_in, weight + (long long)group * group_in * group_out + n,
            (long long)groups * group_in * group_out, group_out, group_in, neighbour, mask, row,
            kernel_volume, n_words);
        if (has_bias) value += csc_load(bias[group * group_out + n]);
        out[row * c_out + group * group_out + n] = csc_store<T>(value);
    }
}
