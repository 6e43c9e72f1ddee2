// ptx_selftest.cu: small kernels that exercise the sm_80 instruction wrappers of
// csc_mma.cuh (mma.sync, ldmatrix, cp.async). tests/test_emulator.py runs them
// under the host emulator and checks every fragment layout element by element
// against the PTX ISA's tables (written out independently in the test), the
// cp.async group semantics, and that a pipelined tensor-core GEMM with a missing
// cp.async.wait_group or barrier fails. Not used by the library.
//
// csc-min-arch: sm_80
// csc-instantiate: mma_fragments<0>
// csc-instantiate: mma_fragments<1>
// csc-instantiate: mma_fragments<2>
// csc-instantiate: ldmatrix_probe<1, 0>
// csc-instantiate: ldmatrix_probe<2, 0>
// csc-instantiate: ldmatrix_probe<4, 0>
// csc-instantiate: ldmatrix_probe<1, 1>
// csc-instantiate: ldmatrix_probe<2, 1>
// csc-instantiate: ldmatrix_probe<4, 1>
// csc-instantiate: cp_async_probe
// csc-instantiate: pipelined_gemm<__half>
// csc-instantiate: pipelined_gemm<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_mma.cuh"

// One warp. Lane l passes registers a[l][0..3], b[l][0..1] and accumulators
// c[l][0..3] to one mma and writes d[l][0..3]. KIND: 0 m16n8k16 f16, 1 m16n8k16 bf16,
// 2 m16n8k8 tf32 (a and b are tf32 bit patterns).
template <int KIND>
__global__ void __launch_bounds__(32)
mma_fragments(const unsigned* __restrict__ a, const unsigned* __restrict__ b,
              const float* __restrict__ c, float* __restrict__ d) {
    const int lane = threadIdx.x;
    unsigned ra[4], rb[2];
    float acc[4];
    for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i];
    for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
    for (int i = 0; i < 4; ++i) acc[i] = c[lane * 4 + i];
    if constexpr (KIND == 0) csc_mma_m16n8k16<__half>(acc, ra, rb);
    else if constexpr (KIND == 1) csc_mma_m16n8k16<__nv_bfloat16>(acc, ra, rb);
    else csc_mma_m16n8k8_tf32(acc, ra, rb);
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// One warp. Shared memory holds 32 rows of 8 16-bit values (src, row-major);
// lane l gives the address of row rows[l]; out[l * 4 + j] = register j of
// ldmatrix.x{NUM}[.trans] (unused registers are left as they are).
template <int NUM, int TRANS>
__global__ void __launch_bounds__(32)
ldmatrix_probe(const unsigned short* __restrict__ src, const int* __restrict__ rows,
               unsigned* __restrict__ out) {
    __shared__ __align__(16) unsigned short tile[32 * 8];
    const int lane = threadIdx.x;
    for (int i = 0; i < 8; ++i) tile[lane * 8 + i] = src[lane * 8 + i];
    __syncwarp();
    const void* row = tile + rows[lane] * 8;
    unsigned r[NUM];
    if constexpr (NUM == 1) {
        unsigned (&r1)[1] = *reinterpret_cast<unsigned (*)[1]>(r);
        if (TRANS) csc_ldmatrix_x1_trans(r1, row); else csc_ldmatrix_x1(r1, row);
    } else if constexpr (NUM == 2) {
        unsigned (&r2)[2] = *reinterpret_cast<unsigned (*)[2]>(r);
        if (TRANS) csc_ldmatrix_x2_trans(r2, row); else csc_ldmatrix_x2(r2, row);
    } else {
        unsigned (&r4)[4] = *reinterpret_cast<unsigned (*)[4]>(r);
        if (TRANS) csc_ldmatrix_x4_trans(r4, row); else csc_ldmatrix_x4(r4, row);
    }
    for (int j = 0; j < NUM; ++j) out[lane * 4 + j] = r[j];
}

// cp.async group semantics, one warp. Thread t copies, from src[t * 8 ..]:
//   group 0: 4 bytes  (word 0)      -> slot[t][0]
//   group 1: 8 bytes  (words 2, 3)  -> slot[t][2..3]
//   group 2: 16 bytes (words 4..7)  -> slot[t][4..7], and a 16-byte zero fill -> slot[t][8..11]
// and snapshots its 12 slot words into out[((t * 5) + s) * 12 ..] at five points:
//   s = 0 after issuing everything (group 2 not yet committed), 1 after
//   wait_group 2, 2 after wait_group 1, 3 after wait_group 0, 4 after a further
//   4-byte copy of word 1 -> slot[t][1] and wait_all.
__global__ void __launch_bounds__(32) cp_async_probe(const unsigned* __restrict__ src,
                                                     unsigned* __restrict__ out) {
    __shared__ __align__(16) unsigned slot[32][12];
    const int t = threadIdx.x;
    for (int i = 0; i < 12; ++i) slot[t][i] = 0x5a5a5a5au;  // overwritten by the copies
    csc_cp_async<4>(&slot[t][0], src + t * 8, true);
    csc_cp_async_commit();
    csc_cp_async<8>(&slot[t][2], src + t * 8 + 2, true);
    csc_cp_async_commit();
    csc_cp_async<16>(&slot[t][4], src + t * 8 + 4, true);
    csc_cp_async_cg16(&slot[t][8], src, false);
    unsigned* o = out + t * 5 * 12;
    for (int i = 0; i < 12; ++i) o[i] = slot[t][i];
    csc_cp_async_commit();
    csc_cp_async_wait<2>();
    for (int i = 0; i < 12; ++i) o[12 + i] = slot[t][i];
    csc_cp_async_wait<1>();
    for (int i = 0; i < 12; ++i) o[24 + i] = slot[t][i];
    csc_cp_async_wait<0>();
    for (int i = 0; i < 12; ++i) o[36 + i] = slot[t][i];
    csc_cp_async<4>(&slot[t][1], src + t * 8 + 1, true);
    csc_cp_async_wait_all();
    for (int i = 0; i < 12; ++i) o[48 + i] = slot[t][i];
}

// D (M x N, float) = A (M x K) B (K x N), both row-major 16-bit, M and N multiples
// of 32, K a multiple of 16: a 3-stage cp.async pipeline feeding ldmatrix + mma.sync,
// the structure of the library's tensor-core GEMMs at the smallest size. One block of
// 4 warps per 32 x 32 tile of D; warp w owns rows 16 (w / 2) .. + 16 and columns
// 16 (w % 2) .. + 16 (two n8 tiles). Threads 0-63 copy the A tile (32 rows x 2
// chunks of 16 bytes), threads 64-127 the B tile (16 rows x 4 chunks), so every warp
// reads data copied by other warps.
#define CSC_PG_STAGES 3
#define CSC_PG_PAD 8  // 16-bit elements of padding per shared row: conflict-free ldmatrix
template <typename T>
__global__ void __launch_bounds__(128)
pipelined_gemm(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ d, int m,
               int n, int k) {
    __shared__ __align__(16) T a_tile[CSC_PG_STAGES][32][16 + CSC_PG_PAD];
    __shared__ __align__(16) T b_tile[CSC_PG_STAGES][16][32 + CSC_PG_PAD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.x * 32, n0 = blockIdx.y * 32;
    const int steps = k / 16;

    auto load = [&](int stage, int step) {
        const int k0 = step * 16;
        if (tid < 64) {
            const int row = tid >> 1, chunk = tid & 1;
            csc_cp_async<16>(&a_tile[stage][row][chunk * 8],
                             a + (long long)(m0 + row) * k + k0 + chunk * 8, true);
        } else {
            const int row = (tid - 64) >> 2, chunk = (tid - 64) & 3;
            csc_cp_async<16>(&b_tile[stage][row][chunk * 8],
                             b + (long long)(k0 + row) * n + n0 + chunk * 8, true);
        }
    };

    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    for (int s = 0; s < CSC_PG_STAGES - 1; ++s) {
        if (s < steps) load(s, s);
        csc_cp_async_commit();
    }
    for (int step = 0; step < steps; ++step) {
        csc_cp_async_wait<CSC_PG_STAGES - 2>();  // selftest: wait
        __syncthreads();  // selftest: barrier
        const int next = step + CSC_PG_STAGES - 1;
        if (next < steps) load(next % CSC_PG_STAGES, next);
        csc_cp_async_commit();
        const int stage = step % CSC_PG_STAGES;
        unsigned fa[4], fb[4];
        // B fragments of two n8 tiles: lane l points at k row l % 16, columns 8 (l / 16) ..
        // (B first: its rows come from warps 2-3, so the cooperative emulator's first
        // reader sees another warp's copies under both the forward and reverse schedules)
        csc_ldmatrix_x4_trans(fb, &b_tile[stage][lane & 15][(warp & 1) * 16 + (lane >> 4) * 8]);
        // A fragment: lane l points at row l % 16, columns 8 (l / 16) .. + 8
        csc_ldmatrix_x4(fa, &a_tile[stage][(warp >> 1) * 16 + (lane & 15)][(lane >> 4) * 8]);
        const unsigned b0[2] = {fb[0], fb[1]}, b1[2] = {fb[2], fb[3]};
        csc_mma_m16n8k16<T>(acc[0], fa, b0);
        csc_mma_m16n8k16<T>(acc[1], fa, b1);
    }
    csc_cp_async_wait<0>();
    const int g = lane >> 2, t = lane & 3;
    for (int j = 0; j < 2; ++j)
        for (int i = 0; i < 4; ++i) {
            const int row = m0 + (warp >> 1) * 16 + g + 8 * (i >> 1);
            const int col = n0 + (warp & 1) * 16 + j * 8 + 2 * t + (i & 1);
            d[(long long)row * n + col] = acc[j][i];
        }
}
