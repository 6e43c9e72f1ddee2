// emulator_selftest.cu: small kernels that exercise every CUDA built-in the
// host emulator supports (tests/test_emulator.py runs them on the CPU and
// compares with NumPy; tests/test_nvrtc_compile.py compiles them with NVRTC).
// They are not used by the library.
// csc-min-arch: sm_80
// (its tests use __nv_bfloat16 WMMA fragments and __reduce_add_sync, both sm_80)
#include "csc_common.cuh"

// csc-instantiate: tile_stencil<float>
// csc-instantiate: tile_stencil<double>
// csc-instantiate: dyn_reverse<float>
// csc-instantiate: dyn_reverse<long long>
// csc-instantiate: atomics_all
// csc-instantiate: atomics_16bit
// csc-instantiate: warp_ops
// csc-instantiate: index_3d
// csc-instantiate: sync_reductions
// csc-instantiate: bit_ops
// csc-instantiate: convert_16bit
// csc-instantiate: wmma_gemm<__half, 1, 1, 1>
// csc-instantiate: wmma_gemm<__half, 0, 1, 0>
// csc-instantiate: wmma_gemm<__half, 1, 0, 1>
// csc-instantiate: wmma_gemm<__half, 0, 0, 0>
// csc-instantiate: wmma_gemm<__nv_bfloat16, 1, 1, 1>
// csc-instantiate: wmma_gemm<__nv_bfloat16, 0, 0, 1>
// csc-instantiate: noop
// csc-instantiate: barrier_rounds

// out[i] = in[i - 1] + in[i] + in[i + 1] (zero outside [0, n)), through a
// shared tile with a one-element halo on each side. blockDim.x <= 256.
template <class T>
__global__ void tile_stencil(const T* __restrict__ in, T* __restrict__ out, int n) {
    __shared__ T tile[256 + 2];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    tile[t + 1] = i < n ? in[i] : T(0);
    if (t == 0) tile[0] = (i > 0 && i - 1 < n) ? in[i - 1] : T(0);
    if (t == blockDim.x - 1) tile[t + 2] = i + 1 < n ? in[i + 1] : T(0);
    __syncthreads();  // selftest: tile loaded
    if (i < n) out[i] = tile[t] + tile[t + 1] + tile[t + 2];
}

// Reverses each block's segment of `in` through dynamic shared memory.
template <class T>
__global__ void dyn_reverse(const T* __restrict__ in, T* __restrict__ out, int n) {
    CSC_DYNAMIC_SHARED(T, buf);
    const int t = threadIdx.x;
    const int start = blockIdx.x * blockDim.x;
    const int valid = min(int(blockDim.x), n - start);
    if (t < valid) buf[t] = in[start + t];
    __syncthreads();
    if (t < valid) out[start + t] = buf[valid - 1 - t];
}

// Every atomic on every type it is declared for. Thread i (of n) uses
// value v = (i * 7919) % 1000 - 500. Slots:
//   i32/u32/u64: 0 add, 1 max, 2 min, 3 CAS increment, 4 or, 5 and, 6 exch, 7 sub
//   f32: 0 add, 1 exch;  f64: 0 add;  i64: 0 max, 1 min, 2 add
// exch_old[i] receives the value atomicExch replaced; bins[v mod nbins] += 1.
__global__ void atomics_all(int n, int* i32, unsigned* u32, unsigned long long* u64, float* f32,
                            double* f64, long long* i64, int* exch_old, int* bins, int nbins) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int v = (i * 7919) % 1000 - 500;
    const unsigned uv = unsigned(v + 500);
    const unsigned long long wv = (unsigned long long)uv << 33;
    atomicAdd(&i32[0], v);
    atomicMax(&i32[1], v);
    atomicMin(&i32[2], v);
    for (int old = i32[3];;) {
        int seen = atomicCAS(&i32[3], old, old + 1);
        if (seen == old) break;
        old = seen;
    }
    atomicOr(&i32[4], 1 << (i % 31));
    atomicAnd(&i32[5], ~(1 << (i % 20)));
    exch_old[i] = atomicExch(&i32[6], i);
    atomicSub(&i32[7], v);

    atomicAdd(&u32[0], uv);
    atomicMax(&u32[1], uv);
    atomicMin(&u32[2], uv);
    for (unsigned old = u32[3];;) {
        unsigned seen = atomicCAS(&u32[3], old, old + 1u);
        if (seen == old) break;
        old = seen;
    }
    atomicOr(&u32[4], 1u << (i % 32));
    atomicAnd(&u32[5], ~(1u << (i % 21)));
    atomicExch(&u32[6], uv);
    atomicSub(&u32[7], uv);

    atomicAdd(&u64[0], wv);
    atomicMax(&u64[1], wv);
    atomicMin(&u64[2], wv);
    for (unsigned long long old = u64[3];;) {
        unsigned long long seen = atomicCAS(&u64[3], old, old + 1ull);
        if (seen == old) break;
        old = seen;
    }
    atomicOr(&u64[4], 1ull << (i % 64));
    atomicAnd(&u64[5], ~(1ull << (i % 40)));
    atomicExch(&u64[6], wv);

    atomicAdd(&f32[0], float(v) * 0.25f);
    atomicExch(&f32[1], float(v));
    atomicAdd(&f64[0], double(v) * 0.125);
    atomicMax(&i64[0], (long long)v * 1000000007LL);
    atomicMin(&i64[1], (long long)v * 1000000007LL);
    atomicAdd((unsigned long long*)&i64[2], (unsigned long long)((long long)v));
    atomicAdd(&bins[(v + 500) % nbins], 1);
}

// 16-bit atomics: counts[k] += 1 for k = i % nbins, and one atomicCAS on
// unsigned short per thread (a 16-bit counter incremented with a CAS loop).
__global__ void atomics_16bit(int n, __half* hcounts, __nv_bfloat16* bcounts, int nbins,
                              unsigned short* scount) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&hcounts[i % nbins], __float2half(1.0f));
    atomicAdd(&bcounts[i % nbins], __float2bfloat16(1.0f));
    for (unsigned short old = scount[0];;) {
        unsigned short seen = atomicCAS(scount, old, (unsigned short)(old + 1));
        if (seen == old) break;
        old = seen;
    }
}

// Warp intrinsics on 1-D, 2-D or 3-D blocks, including a partial last warp.
// Thread g (global linear id over the grid) with value v = g * 10 + 1 writes
// out[g * 16 + j] for the j below; nl = lanes in its warp.
//   0 lane, 1 warp lanes (popc of __activemask), 2 __shfl_sync from (lane*5+3) % nl,
//   3 __shfl_up_sync by 1, 4 __shfl_down_sync by 2, 5 __shfl_xor_sync 1 width 8,
//   6 __ballot_sync(v % 3 == 0), 7 __popc(ballot), 8 __ffs(ballot), 9 __any_sync(v % 7 == 0),
//   10 __all_sync(v > 0), 11 __reduce_add_sync(v), 12 shfl-down tree sum (full warps only),
//   13 float broadcast from lane 0 (as int bits), 14 64-bit __shfl_down_sync by 1 (low word),
//   15 __half broadcast from the last lane (as float bits)
__global__ void warp_ops(int* out) {
    const unsigned rank = csc_thread_rank();
    const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned g = block * nthreads + rank;
    const unsigned lane = csc_lane_id();
    const int v = int(g) * 10 + 1;
    int* o = out + size_t(g) * 16;
    const unsigned mask = __activemask();
    const int nl = __popc(mask);
    o[0] = int(lane);
    o[1] = nl;
    o[2] = __shfl_sync(mask, v, int((lane * 5 + 3) % unsigned(nl)));
    o[3] = __shfl_up_sync(mask, v, 1);
    o[4] = __shfl_down_sync(mask, v, 2);
    o[5] = __shfl_xor_sync(mask, v, 1, 8);
    const unsigned ballot = __ballot_sync(mask, v % 3 == 0);
    o[6] = int(ballot);
    o[7] = __popc(ballot);
    o[8] = __ffs(int(ballot));
    o[9] = __any_sync(mask, v % 7 == 0);
    o[10] = __all_sync(mask, v > 0);
    o[11] = __reduce_add_sync(mask, v);
    if (mask == CSC_FULL_MASK) {
        int s = v;
        for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(CSC_FULL_MASK, s, d);
        o[12] = __shfl_sync(CSC_FULL_MASK, s, 0);
    } else {
        o[12] = 0;
    }
    o[13] = __float_as_int(__shfl_sync(mask, float(v) * 0.5f, 0));
    const long long w = ((long long)v << 32) | (long long)(g + 7);
    o[14] = int(__shfl_down_sync(mask, w, 1) & 0xffffffffLL);
    const __half h = __shfl_sync(mask, __float2half(float(v % 1024)), nl - 1);
    o[15] = __float_as_int(__half2float(h));
    __syncwarp(mask);
}

// Every thread of a 3-D grid of 3-D blocks records who it is:
// ids[g * 6 + 0..5] = blockIdx.xyz, threadIdx.xyz (g: global linear id),
// dims[0..5] = gridDim.xyz, blockDim.xyz (written by thread 0 of block 0),
// hits[g] += 1.
__global__ void index_3d(int* ids, int* dims, int* hits) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned g = block * nthreads + csc_thread_rank();
    ids[g * 6 + 0] = blockIdx.x;
    ids[g * 6 + 1] = blockIdx.y;
    ids[g * 6 + 2] = blockIdx.z;
    ids[g * 6 + 3] = threadIdx.x;
    ids[g * 6 + 4] = threadIdx.y;
    ids[g * 6 + 5] = threadIdx.z;
    atomicAdd(&hits[g], 1);
    if (block == 0 && csc_thread_rank() == 0) {
        dims[0] = gridDim.x;
        dims[1] = gridDim.y;
        dims[2] = gridDim.z;
        dims[3] = blockDim.x;
        dims[4] = blockDim.y;
        dims[5] = blockDim.z;
    }
}

// Block-wide predicate reductions: out[block * 3 + 0..2] = __syncthreads_count,
// __syncthreads_and, __syncthreads_or of pred[i] != 0.
__global__ void sync_reductions(const int* pred, int* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = pred[i];
    const int c = __syncthreads_count(p);
    const int a = __syncthreads_and(p);
    const int o = __syncthreads_or(p);
    if (threadIdx.x == 0) {
        out[blockIdx.x * 3 + 0] = c;
        out[blockIdx.x * 3 + 1] = a;
        out[blockIdx.x * 3 + 2] = o;
    }
}

// Bit intrinsics. out[i * 8 + j]: 0 __popc(x), 1 __popcll(y), 2 __ffs(x), 3 __ffsll(y),
// 4 __clz(x), 5 __float_as_int(f), 6 __float_as_int(__int_as_float(x)), 7 __clzll(y).
__global__ void bit_ops(const unsigned* x, const unsigned long long* y, const float* f, int* out,
                        int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned xv = __ldg(&x[i]);
    const unsigned long long yv = __ldg(&y[i]);
    int* o = out + i * 8;
    o[0] = __popc(xv);
    o[1] = __popcll(yv);
    o[2] = __ffs(int(xv));
    o[3] = __ffsll((long long)yv);
    o[4] = __clz(int(xv));
    o[5] = __float_as_int(__ldg(&f[i]));
    o[6] = __float_as_int(__int_as_float(int(xv)));
    o[7] = __clzll((long long)yv);
}

// 16-bit conversions: hbits/bbits = bits of x rounded to __half / __nv_bfloat16;
// hf/bf = the 16-bit inputs widened to float; hsum = float(__hadd(h, h) * h).
__global__ void convert_16bit(const float* x, unsigned short* hbits, unsigned short* bbits,
                              const __half* h, const __nv_bfloat16* b, float* hf, float* bf,
                              float* hsum, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    hbits[i] = __half_as_ushort(__float2half(x[i]));
    bbits[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
    hf[i] = __half2float(h[i]);
    bf[i] = __bfloat162float(b[i]);
    hsum[i] = __half2float(__hmul(__hadd(h[i], h[i]), h[i]));
}

template <bool ROW>
struct csc_selftest_layout { typedef nvcuda::wmma::row_major type; };
template <>
struct csc_selftest_layout<false> { typedef nvcuda::wmma::col_major type; };

// D = alpha * A B + C with WMMA, one warp per 16 x 16 tile of D (M x N).
// A is M x K (row-major if A_ROW else column-major), B is K x N (likewise),
// C and D are M x N, row-major if C_ROW else column-major. M, N, K multiples of 16.
template <class T, int A_ROW, int B_ROW, int C_ROW>
__global__ void wmma_gemm(const T* a, const T* b, const float* c, float* d, int m, int n, int k,
                          float alpha) {
    using namespace nvcuda;
    const int warps_per_block = blockDim.x / 32;
    const int tile = blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int tiles_n = n / 16;
    if (tile >= (m / 16) * tiles_n) return;  // the whole warp leaves
    const int tm = tile / tiles_n, tn = tile % tiles_n;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, typename csc_selftest_layout<A_ROW>::type> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, typename csc_selftest_layout<B_ROW>::type> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, cf;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < k; kk += 16) {
        const T* pa = A_ROW ? a + (size_t)(tm * 16) * k + kk : a + (size_t)kk * m + tm * 16;
        const T* pb = B_ROW ? b + (size_t)kk * n + tn * 16 : b + (size_t)(tn * 16) * k + kk;
        wmma::load_matrix_sync(fa, pa, A_ROW ? k : m);
        wmma::load_matrix_sync(fb, pb, B_ROW ? n : k);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    const size_t off = C_ROW ? (size_t)(tm * 16) * n + tn * 16 : (size_t)(tn * 16) * m + tm * 16;
    const unsigned ld = C_ROW ? n : m;
    const wmma::layout_t layout = C_ROW ? wmma::mem_row_major : wmma::mem_col_major;
    wmma::load_matrix_sync(cf, c + off, ld, layout);
    for (int e = 0; e < acc.num_elements; ++e) acc.x[e] = alpha * acc.x[e] + cf.x[e];
    wmma::store_matrix_sync(d + off, acc, ld, layout);
}

// Launch-overhead probes: an empty kernel, and `rounds` rounds of two
// __syncthreads each (data[i] += its right neighbour in the block, per round).
__global__ void noop() {}

__global__ void barrier_rounds(float* data, int rounds) {
    __shared__ float buf[1024];
    const int t = threadIdx.x;
    float* row = data + (size_t)blockIdx.x * blockDim.x;
    float v = row[t];
    for (int r = 0; r < rounds; ++r) {
        buf[t] = v;
        __syncthreads();
        v += buf[(t + 1) % blockDim.x];
        __syncthreads();
    }
    row[t] = v;
}
