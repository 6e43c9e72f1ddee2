// tc_wgrad.cu: the weight gradient on tensor cores, split over pairs, reduced
// deterministically.
//
//   grad_weight[k] = sum over the pairs (i, o) of offset k of feats[i]^T grad_out[o]
//
// Per offset this is a (C_in x C_out) GEMM whose reduction dimension is the
// offset's pairs. The pairs of each offset are cut into chunks (a fixed number of
// pairs, chosen by the host from the map alone); tc_wgrad_partial computes one
// chunk's 64 x 64 tile of that GEMM per block and writes it, in fp32, to its own
// slice of `partial`; tc_wgrad_reduce then sums each offset's chunks in chunk
// order. No float atomics anywhere: the result is bit-identical run to run.
//
// tc_wgrad_partial, per block (4 warps, a 2 x 2 grid of 32 x 32 warp tiles):
//   * per step, BP pairs (64 bytes' worth: 32 16-bit or 16 float pairs): the rows
//     feats[in_rows[p]] (channels m0 .. m0 + 64) and grad_out[out_rows[p]] (channels
//     n0 .. n0 + 64) gathered with 16-byte cp.async into k-major tiles X[p][c] and
//     G[p][o] (the pair indices are loaded one step ahead);
//   * 4-stage pipeline, cp.async.wait_group 2 + one barrier per step;
//   * A = X^T through ldmatrix.x4.trans, B = G through ldmatrix.x4.trans (tf32:
//     32-bit shared loads on a conflict-free stride), fp32 accumulators.
// VEC16 = 0: element-wise copies for channel counts that are not multiples of 16 bytes.
//
// csc-min-arch: sm_80
// csc-instantiate: tc_wgrad_partial<__half, 1>
// csc-instantiate: tc_wgrad_partial<__half, 0>
// csc-instantiate: tc_wgrad_partial<__nv_bfloat16, 1>
// csc-instantiate: tc_wgrad_partial<__nv_bfloat16, 0>
// csc-instantiate: tc_wgrad_partial<float, 1>
// csc-instantiate: tc_wgrad_partial<float, 0>
// csc-instantiate: tc_wgrad_reduce<__half>
// csc-instantiate: tc_wgrad_reduce<__nv_bfloat16>
// csc-instantiate: tc_wgrad_reduce<float>
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_mma.cuh"
#include "csc_tc.cuh"

#define CSC_TCW_THREADS 128
#define CSC_TCW_TILE 64
#define CSC_TCW_STAGES 4

template <typename T>
struct csc_tc_wgrad_shape {
    static constexpr int VEC = csc_tc<T>::VEC;
    static constexpr int BP = 64 / sizeof(T);                        // pairs per step
    static constexpr int LDX = CSC_TCW_TILE + csc_tc<T>::PAD_KMAJOR;  // X tile [BP][LDX]
    static constexpr int X_STAGE = BP * LDX;                         // G tile: the same
    static constexpr int LDO = CSC_TCW_TILE + 4;                     // fp32 staging [64][LDO]
    static constexpr int PIPE_BYTES = CSC_TCW_STAGES * 2 * X_STAGE * (int)sizeof(T);
    static constexpr int OUT_BYTES = CSC_TCW_TILE * LDO * 4;
    static constexpr int SMEM_BYTES = PIPE_BYTES > OUT_BYTES ? PIPE_BYTES : OUT_BYTES;
    static constexpr int CHUNKS_PER_ROW = CSC_TCW_TILE / VEC;
    static constexpr int PASSES = BP * CHUNKS_PER_ROW / CSC_TCW_THREADS;  // pairs per thread
    static_assert(PASSES * CSC_TCW_THREADS == BP * CHUNKS_PER_ROW, "tile / thread mismatch");
    static_assert(CSC_TCW_THREADS % CHUNKS_PER_ROW == 0, "a thread keeps its column chunk");
};

template <typename T, int VEC16>
__global__ void __launch_bounds__(CSC_TCW_THREADS)
tc_wgrad_partial(const T* __restrict__ feats, const T* __restrict__ grad_out,
                 const int* __restrict__ in_rows, const int* __restrict__ out_rows,
                 const long long* __restrict__ chunk_begin, const long long* __restrict__ chunk_end,
                 int c_in, int c_out, float* __restrict__ partial) {
    typedef csc_tc_wgrad_shape<T> S;
    constexpr int BP = S::BP, VEC = S::VEC, KSTEP = csc_tc<T>::KSTEP, STAGES = CSC_TCW_STAGES;
    __shared__ __align__(128) unsigned char smem[S::SMEM_BYTES];
    T* x_tiles = reinterpret_cast<T*>(smem);              // [STAGES][BP][LDX]: feats rows
    T* g_tiles = x_tiles + STAGES * S::X_STAGE;           // [STAGES][BP][LDX]: grad rows

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp >> 1, warp_n = warp & 1;
    const long long chunk = blockIdx.x;
    const int m0 = blockIdx.y * CSC_TCW_TILE, n0 = blockIdx.z * CSC_TCW_TILE;
    const long long begin = chunk_begin[chunk], end = chunk_end[chunk];
    const int steps = (int)((end - begin + BP - 1) / BP);

    // thread tid copies column chunk tid % CHUNKS_PER_ROW of pairs tid / CHUNKS_PER_ROW + ...
    const int col = (tid % S::CHUNKS_PER_ROW) * VEC;
    int pair_local[S::PASSES];
    for (int p = 0; p < S::PASSES; ++p)
        pair_local[p] = (tid + p * CSC_TCW_THREADS) / S::CHUNKS_PER_ROW;
    int in_next[S::PASSES], out_next[S::PASSES];  // rows of the next step's pairs
    auto fetch_rows = [&](int step) {
        for (int p = 0; p < S::PASSES; ++p) {
            const long long pair = begin + (long long)step * BP + pair_local[p];
            const bool valid = step < steps && pair < end;
            in_next[p] = valid ? in_rows[pair] : -1;
            out_next[p] = valid ? out_rows[pair] : -1;
        }
    };
    fetch_rows(0);
    int copy_step = 0;
    auto issue_copies = [&](int stage) {
        int in_row[S::PASSES], out_row[S::PASSES];
        for (int p = 0; p < S::PASSES; ++p) {
            in_row[p] = in_next[p];
            out_row[p] = out_next[p];
        }
        fetch_rows(copy_step + 1);
        T* x_tile = x_tiles + stage * S::X_STAGE;
        T* g_tile = g_tiles + stage * S::X_STAGE;
        for (int p = 0; p < S::PASSES; ++p) {
            const int r = pair_local[p];
            csc_tc_copy_chunk<T, VEC16 != 0>(x_tile + r * S::LDX + col,
                                             feats + (long long)in_row[p] * c_in + m0 + col,
                                             in_row[p] >= 0 && m0 + col < c_in, c_in - m0 - col);
            csc_tc_copy_chunk<T, VEC16 != 0>(g_tile + r * S::LDX + col,
                                             grad_out + (long long)out_row[p] * c_out + n0 + col,
                                             out_row[p] >= 0 && n0 + col < c_out,
                                             c_out - n0 - col);
        }
        ++copy_step;
    };

    float acc[2][4][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) issue_copies(s);
        csc_cp_async_commit();
    }
    for (int step = 0; step < steps; ++step) {
        csc_cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (step + STAGES - 1 < steps) issue_copies((step + STAGES - 1) % STAGES);
        csc_cp_async_commit();
        const T* x_tile = x_tiles + (step % STAGES) * S::X_STAGE;
        const T* g_tile = g_tiles + (step % STAGES) * S::X_STAGE;
#pragma unroll
        for (int k0 = 0; k0 < BP; k0 += KSTEP) {
            unsigned a_frag[2][4], b_frag[4][2];
            for (int i = 0; i < 2; ++i)
                csc_tc_load_a_kmajor<T>(a_frag[i], x_tile, S::LDX, warp_m * 32 + i * 16, k0, lane);
            for (int j = 0; j < 4; j += 2) {
                unsigned pair[2][2];
                csc_tc_load_b_pair<T>(pair, g_tile, S::LDX, k0, warp_n * 32 + j * 8, lane);
                for (int q = 0; q < 2; ++q) {
                    b_frag[j][q] = pair[0][q];
                    b_frag[j + 1][q] = pair[1][q];
                }
            }
            for (int i = 0; i < 2; ++i)
                for (int j = 0; j < 4; ++j) csc_tc_mma<T>(acc[i][j], a_frag[i], b_frag[j]);
        }
    }
    csc_cp_async_wait<0>();
    __syncthreads();

    // the chunk's tile, staged (ISA accumulator layout) then written row by row
    float* out_tile = reinterpret_cast<float*>(smem);  // [64][LDO]
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 4; ++e)
                out_tile[(warp_m * 32 + i * 16 + g + 8 * (e >> 1)) * S::LDO + warp_n * 32 + j * 8 +
                         2 * t + (e & 1)] = acc[i][j][e];
    __syncthreads();
    float* dst = partial + chunk * c_in * c_out;
    for (int index = tid; index < CSC_TCW_TILE * CSC_TCW_TILE; index += CSC_TCW_THREADS) {
        const int m = index / CSC_TCW_TILE, n = index % CSC_TCW_TILE;
        if (m0 + m < c_in && n0 + n < c_out)
            dst[(long long)(m0 + m) * c_out + n0 + n] = out_tile[m * S::LDO + n];
    }
}

// out[k, e] = sum of partial[c, e] over offset k's chunks c in [chunk_start[k],
// chunk_start[k + 1]), in chunk order (0 for an offset without pairs), cast to T.
template <typename T>
__global__ void tc_wgrad_reduce(const float* __restrict__ partial,
                                const long long* __restrict__ chunk_start, int kernel_volume,
                                long long per_offset, T* __restrict__ out) {
    CSC_GRID_LOOP(index, (long long)kernel_volume * per_offset) {
        const long long k = index / per_offset, e = index - k * per_offset;
        float sum = 0.0f;
        for (long long c = chunk_start[k]; c < chunk_start[k + 1]; ++c)
            sum += partial[c * per_offset + e];
        out[index] = csc_store<T>(sum);
    }
}
