// csc_mma.cuh: the sm_80 tensor-core and asynchronous-copy instructions, as
// small __device__ wrappers around inline PTX. This is the only place in
// raw_kernels/ with inline PTX: on NVRTC each wrapper is one `asm volatile`;
// under the host emulator (CSC_EMULATION) each calls the emulator's model of
// the instruction (cusparseconv/_emulate/shim.h, namespace csc_emu::ptx), which
// implements the PTX ISA's thread-to-element layouts exactly and is checked
// element by element against the ISA's tables in tests/test_emulator.py.
//
// Everything here needs sm_80 or newer (mma.sync m16n8k16 / m16n8k8.tf32,
// ldmatrix, cp.async); a .cu file that includes it declares
//     // csc-min-arch: sm_80
//
// Notation of the fragment layouts (PTX ISA, "Matrix Fragments for mma"):
//     lane = %laneid, g = lane >> 2 ("groupID"), t = lane & 3 ("threadID_in_group").
//
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32   D(16x8) += A(16x16) B(16x8)
//   A: 4 registers of two 16-bit values each, elements a0..a7 (low half first):
//        a_i at row g + 8 * ((i >> 1) & 1), column 2t + (i & 1) + 8 * (i >> 2)
//   B: 2 registers, elements b0..b3:  b_i at row 2t + (i & 1) + 8 * (i >> 1), column g
//   C/D: 4 floats c0..c3:             c_i at row g + 8 * (i >> 1), column 2t + (i & 1)
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32                D(16x8) += A(16x8) B(8x8)
//   A: 4 registers a0..a3 (one tf32 each): a_i at row g + 8 * (i & 1), column t + 4 * (i >> 1)
//   B: 2 registers b0, b1:                 b_i at row t + 4 * i, column g
//   C/D: as above.
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16
//   Loads 1, 2 or 4 matrices of 8 x 8 16-bit elements; lanes 8j .. 8j + 7 give the
//   addresses of the 8 rows (16 contiguous, 16-byte aligned bytes each) of matrix j.
//   Register j of lane l then holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of
//   matrix j (low half first); with .trans it holds column l / 4, rows 2 (l % 4) and
//   2 (l % 4) + 1 (the transposed matrix).
//   So one ldmatrix.x4 of a row-major 16 x 16 tile (matrices: rows 0-7 / 8-15 x columns
//   0-7, then the same for columns 8-15) is exactly an m16n8k16 A fragment, and an
//   ldmatrix.x4.trans of a k-major (k rows, n contiguous) 16 x 16 tile is the B
//   fragments of two n8 tiles. For 32-bit elements, an 8 x 8 b16 matrix is 8 rows of
//   4 floats: ldmatrix.x4 of a row-major 16 x 8 float tile is the m16n8k8 tf32 A fragment.
// cp.async.{ca,cg}.shared.global [dst], [src], cp-size, src-size
//   Asynchronous copy of cp-size (4, 8, 16) bytes; bytes past src-size are zero-filled
//   (src-size 0: a pure zero fill, src is not read). Copies issued by a thread join
//   its next cp.async.commit_group; cp.async.wait_group N waits until at most the N
//   most recent committed groups of this thread are still pending. The data is only
//   guaranteed in shared memory after the wait, and visible to other threads only
//   after a barrier that follows it.
#pragma once
#include "csc_common.cuh"

// Round a float to tf32 (10-bit mantissa), to nearest with ties away from zero; the
// result is the operand bits for mma .tf32 (the low 13 bits are zero).
__device__ __forceinline__ unsigned csc_to_tf32(float x) {
#if defined(CSC_EMULATION)
    return ::csc_emu::ptx::cvt_rna_tf32(x);
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}

// D += A B for one m16n8k16 tile; T is __half or __nv_bfloat16 (fp32 accumulation).
template <typename T>
__device__ __forceinline__ void csc_mma_m16n8k16(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]);

template <>
__device__ __forceinline__ void csc_mma_m16n8k16<__half>(float (&d)[4], const unsigned (&a)[4],
                                                         const unsigned (&b)[2]) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::mma_m16n8k16(::csc_emu::ptx::kHalf, d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <>
__device__ __forceinline__ void csc_mma_m16n8k16<__nv_bfloat16>(float (&d)[4],
                                                                const unsigned (&a)[4],
                                                                const unsigned (&b)[2]) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::mma_m16n8k16(::csc_emu::ptx::kBfloat16, d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// D += A B for one m16n8k8 tile of tf32 operands (see csc_to_tf32), fp32 accumulation.
__device__ __forceinline__ void csc_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                     const unsigned (&b)[2]) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::mma_m16n8k8_tf32(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

#if !defined(CSC_EMULATION)
__device__ __forceinline__ unsigned csc_smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// ldmatrix: `row` is this lane's row address (see the header comment), in shared memory.
__device__ __forceinline__ void csc_ldmatrix_x1(unsigned (&r)[1], const void* row) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::ldmatrix(1, false, r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(csc_smem_address(row)));
#endif
}
__device__ __forceinline__ void csc_ldmatrix_x2(unsigned (&r)[2], const void* row) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::ldmatrix(2, false, r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(csc_smem_address(row)));
#endif
}
__device__ __forceinline__ void csc_ldmatrix_x4(unsigned (&r)[4], const void* row) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::ldmatrix(4, false, r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(csc_smem_address(row)));
#endif
}
__device__ __forceinline__ void csc_ldmatrix_x1_trans(unsigned (&r)[1], const void* row) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::ldmatrix(1, true, r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(csc_smem_address(row)));
#endif
}
__device__ __forceinline__ void csc_ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::ldmatrix(2, true, r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(csc_smem_address(row)));
#endif
}
__device__ __forceinline__ void csc_ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::ldmatrix(4, true, r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(csc_smem_address(row)));
#endif
}

// cp.async of BYTES (4, 8 or 16) from global `src` to shared `dst` (both BYTES-aligned);
// when `valid` is false nothing is read and dst is zero-filled. Cached in L1 (.ca):
// gathered rows are reused by neighbouring output rows of the same tile.
template <int BYTES>
__device__ __forceinline__ void csc_cp_async(void* dst, const void* src, bool valid) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::cp_async(dst, src, BYTES, valid ? BYTES : 0);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n"
                 :: "r"(csc_smem_address(dst)), "l"(src), "n"(BYTES), "r"(valid ? BYTES : 0));
#endif
}

// 16-byte cp.async that bypasses L1 (.cg): operands read once per block (weights).
__device__ __forceinline__ void csc_cp_async_cg16(void* dst, const void* src, bool valid) {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::cp_async(dst, src, 16, valid ? 16 : 0);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(csc_smem_address(dst)), "l"(src), "r"(valid ? 16 : 0));
#endif
}

// Close the group of this thread's cp.async issued since the last commit (possibly empty).
__device__ __forceinline__ void csc_cp_async_commit() {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void csc_cp_async_wait() {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

// Commit and wait for every cp.async of this thread.
__device__ __forceinline__ void csc_cp_async_wait_all() {
#if defined(CSC_EMULATION)
    ::csc_emu::ptx::cp_async_wait_all();
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}
