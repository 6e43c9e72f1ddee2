// tc_gemm.cu: the forward product (and, on the reverse table with W transposed,
// the input gradient) as a tensor-core implicit GEMM over the output-major map.
//
//   out[r, n] = bias[n] + sum over offsets k with neighbour[r, k] >= 0 of
//               sum_c src[neighbour[r, k], c] * weight[k, c, n]
//
// One block of 4 warps computes a BM x BN tile of `out` (BM output rows, BN output
// channels). Its reduction runs over the offsets active in any of its rows (the OR of
// their pair-mask words: reordering the rows by mask, see row_order, keeps that union
// small) times the input channels in steps of BK (64 bytes of channels):
//   * A (BM x BK): the tile's rows gathered through the neighbour table, one 16-byte
//     cp.async per chunk (zero fill where a row has no pair for the offset);
//   * B (BK x BN): the offset's weight slice, 16-byte cp.async;
//   * STAGES-deep pipeline: the copies of step s + STAGES - 1 are issued before the
//     math of step s, whose data is waited for with cp.async.wait_group STAGES - 2
//     (so STAGES - 2 groups stay in flight during the math) and one __syncthreads
//     (which also frees the stage the new copies overwrite);
//   * math: each warp owns a (BM / 2) x (BN / 2) sub-tile as 16 x 8 mma tiles;
//     A fragments through ldmatrix.x4, B through ldmatrix.x4.trans (tf32: 32-bit
//     shared loads), fp32 accumulators in registers;
//   * epilogue: + bias, cast to T, staged through shared memory and written as
//     16-byte rows: every output row is written once, by one block (no atomics,
//     deterministic). An element that is not finite (a non-finite weight reached rows
//     without that offset's pair as 0 * inf) is recomputed from the row's own pairs
//     (csc_exact.cuh): the same non-finite pattern as a pair-by-pair product.
// VEC16 = 0 is the scalar fallback for channel counts that are not a multiple of
// 16 bytes (or misaligned arrays): element loads and stores, same pipeline.
//
// Grouped convolutions are not handled here (the grouped kernels keep the SIMT /
// WMMA products of mask_gemm.cu).
//
// csc-min-arch: sm_80
// csc-instantiate: tc_implicit_gemm<__half, 128, 64, 3, 1>
// csc-instantiate: tc_implicit_gemm<__half, 64, 64, 4, 1>
// csc-instantiate: tc_implicit_gemm<__half, 64, 32, 4, 1>
// csc-instantiate: tc_implicit_gemm<__half, 64, 64, 3, 0>
// csc-instantiate: tc_implicit_gemm<__nv_bfloat16, 128, 64, 3, 1>
// csc-instantiate: tc_implicit_gemm<__nv_bfloat16, 64, 64, 4, 1>
// csc-instantiate: tc_implicit_gemm<__nv_bfloat16, 64, 32, 4, 1>
// csc-instantiate: tc_implicit_gemm<__nv_bfloat16, 64, 64, 3, 0>
// csc-instantiate: tc_implicit_gemm<float, 128, 64, 3, 1>
// csc-instantiate: tc_implicit_gemm<float, 64, 64, 4, 1>
// csc-instantiate: tc_implicit_gemm<float, 64, 32, 4, 1>
// csc-instantiate: tc_implicit_gemm<float, 64, 64, 3, 0>
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_mma.cuh"
#include "csc_tc.cuh"
#include "csc_exact.cuh"

#define CSC_TC_THREADS 128
// Launch bounds of tc_implicit_gemm. ptxas for sm_100 and newer, left to itself, fits
// the m64n64s4 variant into 72 registers with an 8-byte stack frame and 4-byte spills;
// a minimum of one block per SM lifts that cap there (about 107 registers, no spills).
// sm_80 / sm_90 keep the compiler's own choice (fewer registers, no spills either).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000
#define CSC_TC_LAUNCH_BOUNDS __launch_bounds__(CSC_TC_THREADS, 1)
#else
#define CSC_TC_LAUNCH_BOUNDS __launch_bounds__(CSC_TC_THREADS)
#endif
#define CSC_TC_MAX_WORDS 16  // pair-mask words per row: |K| <= 512

template <typename T, int BM, int BN, int STAGES>
struct csc_tc_gemm_shape {
    static constexpr int VEC = csc_tc<T>::VEC;
    static constexpr int BK = 64 / sizeof(T);               // 64 bytes of channels per step
    static constexpr int LDA = BK + csc_tc<T>::PAD_ROWS;        // A tile [BM][LDA]
    static constexpr int LDB = BN + csc_tc<T>::PAD_KMAJOR;        // B tile [BK][LDB]
    static constexpr int LDC = BN + 16 / sizeof(T);         // output staging [BM][LDC]
    static constexpr int A_STAGE = BM * LDA;
    static constexpr int B_STAGE = BK * LDB;
    static constexpr int PIPE_BYTES = STAGES * (A_STAGE + B_STAGE) * (int)sizeof(T);
    static constexpr int OUT_BYTES = BM * LDC * (int)sizeof(T);
    static constexpr int SMEM_BYTES = PIPE_BYTES > OUT_BYTES ? PIPE_BYTES : OUT_BYTES;
    static constexpr int CHUNKS_PER_ROW = BK / VEC;          // 4
    static constexpr int ROWS_PER_PASS = CSC_TC_THREADS / CHUNKS_PER_ROW;  // 32
    static constexpr int A_PASSES = BM / ROWS_PER_PASS;
    static constexpr int B_CHUNKS_PER_ROW = BN / VEC;
    static constexpr int B_PASSES = BK * B_CHUNKS_PER_ROW / CSC_TC_THREADS;
    static constexpr int WM = BM / 2, WN = BN / 2;           // 2 x 2 warps
    static constexpr int MI = WM / 16, NI = WN / 8;          // mma tiles per warp
    static_assert(STAGES >= 3, "the main loop keeps STAGES - 2 >= 1 copy groups in flight");
    static_assert(BM % ROWS_PER_PASS == 0 && B_PASSES >= 1 &&
                  BK * B_CHUNKS_PER_ROW % CSC_TC_THREADS == 0, "tile / thread mismatch");
    static_assert(NI % 2 == 0, "B fragments are loaded two n8 tiles at a time");
    static_assert(MI * NI * 4 <= 64, "the epilogue marks non-finite accumulators in 64 bits");
};

template <typename T, int BM, int BN, int STAGES, int VEC16>
__global__ void CSC_TC_LAUNCH_BOUNDS
tc_implicit_gemm(const T* __restrict__ src, const T* __restrict__ weight,
                 const int* __restrict__ neighbour, const unsigned int* __restrict__ mask,
                 const int* __restrict__ row_order, int has_order, int n_words, int n_rows,
                 int kernel_volume, int c_src, int c_dst, const T* __restrict__ bias,
                 int has_bias, T* __restrict__ out) {
    typedef csc_tc_gemm_shape<T, BM, BN, STAGES> S;
    constexpr int BK = S::BK, VEC = S::VEC, KSTEP = csc_tc<T>::KSTEP;
    __shared__ __align__(128) unsigned char smem[S::SMEM_BYTES];
    __shared__ int tile_rows[BM];                      // output row of each tile row, -1: none
    __shared__ unsigned int tile_words[CSC_TC_MAX_WORDS];
    __shared__ int active[32 * CSC_TC_MAX_WORDS];      // offsets active in the tile, ascending
    __shared__ int n_active_shared;
    T* a_tiles = reinterpret_cast<T*>(smem);                     // [STAGES][BM][LDA]
    T* b_tiles = a_tiles + STAGES * S::A_STAGE;                  // [STAGES][BK][LDB]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp >> 1, warp_n = warp & 1;
    const int r0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    // ---- the tile's rows and the union of their pair masks
    for (int m = tid; m < BM; m += CSC_TC_THREADS) {
        int row = r0 + m;
        tile_rows[m] = row < n_rows ? (has_order ? row_order[row] : row) : -1;
    }
    if (tid < n_words) tile_words[tid] = 0u;
    __syncthreads();
    for (int index = tid; index < BM * n_words; index += CSC_TC_THREADS) {
        const int m = index / n_words, word = index - m * n_words;
        const int row = tile_rows[m];
        if (row >= 0) atomicOr(&tile_words[word], mask[(long long)row * n_words + word]);
    }
    __syncthreads();
    if (warp == 0) {  // list the active offsets: a prefix sum of the words' popcounts
        const unsigned bits = lane < n_words ? tile_words[lane] : 0u;
        const int count = __popc(bits);
        int before = count;
        for (int delta = 1; delta < 32; delta <<= 1) {
            const int other = __shfl_up_sync(CSC_FULL_MASK, before, delta);
            if (lane >= delta) before += other;
        }
        before -= count;
        for (unsigned rest = bits; rest; rest &= rest - 1) active[before++] = lane * 32 + __ffs(rest) - 1;
        if (lane == 31) n_active_shared = before;  // lane 31 holds no word: its prefix is the total
    }
    __syncthreads();
    const int n_active = n_active_shared;
    const int n_chunks = (c_src + BK - 1) / BK;
    const int steps = n_active * n_chunks;

    // ---- copies: thread tid moves chunk (tid % 4) of tile rows tid / 4 + 32 p
    const int a_chunk = tid % S::CHUNKS_PER_ROW, a_row = tid / S::CHUNKS_PER_ROW;
    int my_rows[S::A_PASSES];
    for (int p = 0; p < S::A_PASSES; ++p) my_rows[p] = tile_rows[a_row + p * S::ROWS_PER_PASS];
    int source[S::A_PASSES];       // input rows of the offset being copied
    int source_next[S::A_PASSES];  // ... of the next active offset (loaded one offset ahead)
    auto fetch_sources = [&](int slot) {
        const int k = slot < n_active ? active[slot] : 0;
        for (int p = 0; p < S::A_PASSES; ++p)
            source_next[p] = (slot < n_active && my_rows[p] >= 0)
                ? neighbour[(long long)my_rows[p] * kernel_volume + k] : -1;
    };
    fetch_sources(0);
    int copy_slot = 0, copy_chunk = 0;  // the (offset, channel chunk) of the next copy

    auto issue_copies = [&](int stage) {
        if (copy_chunk == 0) {
            for (int p = 0; p < S::A_PASSES; ++p) source[p] = source_next[p];
            fetch_sources(copy_slot + 1);
        }
        const int k = active[copy_slot];
        const int c0 = copy_chunk * BK;
        T* a_tile = a_tiles + stage * S::A_STAGE;
        T* b_tile = b_tiles + stage * S::B_STAGE;
        const int c = c0 + a_chunk * VEC;
        for (int p = 0; p < S::A_PASSES; ++p) {
            const int m = a_row + p * S::ROWS_PER_PASS;
            const bool valid = source[p] >= 0 && c < c_src;
            csc_tc_copy_chunk<T, VEC16 != 0>(a_tile + m * S::LDA + a_chunk * VEC,
                                             src + (long long)source[p] * c_src + c, valid,
                                             c_src - c);
        }
        const T* w_k = weight + (long long)k * c_src * c_dst;
        for (int p = 0; p < S::B_PASSES; ++p) {
            const int index = tid + p * CSC_TC_THREADS;
            const int kk = index / S::B_CHUNKS_PER_ROW, nc = index % S::B_CHUNKS_PER_ROW;
            const int n = n0 + nc * VEC;
            const bool valid = c0 + kk < c_src && n < c_dst;
            csc_tc_copy_chunk<T, VEC16 != 0>(b_tile + kk * S::LDB + nc * VEC,
                                             w_k + (long long)(c0 + kk) * c_dst + n, valid,
                                             c_dst - n);
        }
        if (++copy_chunk == n_chunks) {
            copy_chunk = 0;
            ++copy_slot;
        }
    };

    float acc[S::MI][S::NI][4];
    for (int i = 0; i < S::MI; ++i)
        for (int j = 0; j < S::NI; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // ---- the pipeline
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) issue_copies(s);
        csc_cp_async_commit();
    }
    for (int step = 0; step < steps; ++step) {
        csc_cp_async_wait<STAGES - 2>();  // this thread's copies of `step` have landed
        __syncthreads();                  // everyone's have; stage step - 1 is free
        if (step + STAGES - 1 < steps) issue_copies((step + STAGES - 1) % STAGES);
        csc_cp_async_commit();
        const T* a_tile = a_tiles + (step % STAGES) * S::A_STAGE;
        const T* b_tile = b_tiles + (step % STAGES) * S::B_STAGE;
#pragma unroll
        for (int k0 = 0; k0 < BK; k0 += KSTEP) {
            unsigned a_frag[S::MI][4], b_frag[S::NI][2];
            for (int i = 0; i < S::MI; ++i)
                csc_tc_load_a_rows<T>(a_frag[i], a_tile, S::LDA, warp_m * S::WM + i * 16, k0,
                                      lane);
            for (int j = 0; j < S::NI; j += 2) {
                unsigned pair[2][2];
                csc_tc_load_b_pair<T>(pair, b_tile, S::LDB, k0, warp_n * S::WN + j * 8, lane);
                for (int q = 0; q < 2; ++q) {
                    b_frag[j][q] = pair[0][q];
                    b_frag[j + 1][q] = pair[1][q];
                }
            }
            for (int i = 0; i < S::MI; ++i)
                for (int j = 0; j < S::NI; ++j) csc_tc_mma<T>(acc[i][j], a_frag[i], b_frag[j]);
        }
    }
    csc_cp_async_wait<0>();
    __syncthreads();  // the pipeline's shared memory becomes the output staging tile

    // ---- epilogue: bias + cast into shared memory (ISA accumulator layout: c_e of lane
    // (g, t) is row g + 8 (e / 2), column 2 t + e % 2 of its 16 x 8 tile), then rows out
    T* out_tile = reinterpret_cast<T*>(smem);  // [BM][LDC]
    const int g = lane >> 2, t = lane & 3;
    // bit (j * MI + i) * 4 + e: acc[i][j][e] is not finite (see below)
    unsigned long long repair = 0ull;
    for (int j = 0; j < S::NI; ++j) {
        float bias_pair[2];
        for (int h = 0; h < 2; ++h) {
            const int n = n0 + warp_n * S::WN + j * 8 + 2 * t + h;
            bias_pair[h] = (has_bias && n < c_dst) ? csc_load(bias[n]) : 0.0f;
        }
        for (int i = 0; i < S::MI; ++i)
            for (int e = 0; e < 4; ++e) {
                const int m = warp_m * S::WM + i * 16 + g + 8 * (e >> 1);
                const int n = warp_n * S::WN + j * 8 + 2 * t + (e & 1);
                if (!csc_is_finite(acc[i][j][e]))
                    repair |= 1ull << ((j * S::MI + i) * 4 + e);
                out_tile[m * S::LDC + n] = csc_store<T>(acc[i][j][e] + bias_pair[e & 1]);
            }
    }
    // A row that lacks offset k multiplied zeros by W[k]: NaN where W[k] is not finite.
    // Such elements (rare: a non-finite weight or input) are recomputed from the row's
    // own pairs (csc_exact.cuh), so the non-finite pattern is the pair-by-pair one.
#pragma unroll 1
    for (; repair; repair &= repair - 1) {
        const int bit = __ffsll((long long)repair) - 1;
        const int e = bit & 3, i = (bit >> 2) % S::MI, j = (bit >> 2) / S::MI;
        const int m = warp_m * S::WM + i * 16 + g + 8 * (e >> 1);
        const int n = warp_n * S::WN + j * 8 + 2 * t + (e & 1);
        const int row = tile_rows[m];
        if (row < 0 || n0 + n >= c_dst) continue;  // padding of the tile: never written
        float value = csc_exact_pair_sum<T, float>(src, c_src, weight + n0 + n,
                                                   (long long)c_src * c_dst, c_dst, c_src,
                                                   neighbour, mask, row, kernel_volume,
                                                   n_words);
        if (has_bias) value += csc_load(bias[n0 + n]);
        out_tile[m * S::LDC + n] = csc_store<T>(value);
    }
    __syncthreads();
    for (int index = tid; index < BM * S::B_CHUNKS_PER_ROW; index += CSC_TC_THREADS) {
        const int m = index / S::B_CHUNKS_PER_ROW, nc = index % S::B_CHUNKS_PER_ROW;
        const int row = tile_rows[m], n = n0 + nc * VEC;
        if (row < 0 || n >= c_dst) continue;
        const T* staged = out_tile + m * S::LDC + nc * VEC;
        T* dst = out + (long long)row * c_dst + n;
        if constexpr (VEC16 != 0) {
            *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(staged);
        } else {
            for (int e = 0; e < VEC && n + e < c_dst; ++e) dst[e] = staged[e];
        }
    }
}
