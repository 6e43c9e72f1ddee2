// csc_common.cuh: the one header every kernel source in raw_kernels/ includes
// first. It makes a source compile unchanged in two places:
//
//   * NVRTC (cupy.RawModule on a device, and the CI compile check): the CUDA
//     headers for 16-bit types and WMMA are included here;
//   * the host emulator (cusparseconv/_emulate): g++ compiles the source as
//     C++20 with -DCSC_EMULATION and shim.h force-included, which supplies the
//     CUDA built-ins (threadIdx, __syncthreads, atomics, warp intrinsics,
//     __half, __nv_bfloat16, nvcuda::wmma) as plain C++.
//
// Conventions (see cusparseconv/_emulate/README.md):
//   * declare the template instantiations the package may request with one
//     comment line each, anywhere in the .cu file:
//         // csc-instantiate: gather_rows<float>
//     the text after the colon is the cupy.RawModule name expression, verbatim;
//   * dynamic shared memory only through CSC_DYNAMIC_SHARED(T, name);
//   * 64-bit integers as `long long` / `unsigned long long` (or the csc_i64 /
//     csc_u64 aliases below), never int64_t: the atomics are declared on those
//     types and NVRTC has no <cstdint> by default;
//   * inline PTX only inside a __device__ wrapper in this header, with a
//     plain-C++ branch under CSC_EMULATION.
#ifndef CSC_COMMON_CUH
#define CSC_COMMON_CUH

#if defined(CSC_EMULATION)
#  if !defined(CSC_EMULATOR_SHIM)
#    error "CSC_EMULATION is defined but the emulator shim (cusparseconv/_emulate/shim.h) is not included"
#  endif
// T* name = the launch's dynamic shared memory (the shared_mem bytes of the
// launch; aligned to 128 bytes; filled with 0xff bytes at each block start).
#  define CSC_DYNAMIC_SHARED(T, name) \
     T* name = reinterpret_cast<T*>(::csc_emu::dynamic_shared())
#else
#  include <cuda_fp16.h>
#  include <cuda_bf16.h>
#  include <mma.h>
#  define CSC_DYNAMIC_SHARED(T, name)                                          \
     extern __shared__ __align__(128) unsigned char csc_dynamic_shared_raw[];  \
     T* name = reinterpret_cast<T*>(csc_dynamic_shared_raw)
#endif

// Fixed-width integer aliases that mean the same type on both sides.
typedef int csc_i32;
typedef unsigned int csc_u32;
typedef long long csc_i64;
typedef unsigned long long csc_u64;

#define CSC_FULL_MASK 0xffffffffu

// Linear thread index within the block (x fastest), its warp and lane.
__device__ __forceinline__ unsigned csc_thread_rank() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ unsigned csc_lane_id() { return csc_thread_rank() & 31u; }
__device__ __forceinline__ unsigned csc_warp_id() { return csc_thread_rank() >> 5; }

// Device-side assertion: a failed CSC_ASSERT stops the launch with an error on
// both sides (NVRTC's built-in assert prints file and line on the device; the
// emulator raises EmulatorLaunchError naming the block, thread, file and line).
#define CSC_ASSERT(cond) assert(cond)

// Wrappers for anything that would be inline PTX go below, each with a
// plain-C++ meaning under CSC_EMULATION. None is needed yet: the kernels use
// the WMMA API (nvcuda::wmma), which the emulator provides directly.

#endif  // CSC_COMMON_CUH
