// Conversions between storage types and accumulation types, shared by the kernels.
// Storage: float, double, __half, __nv_bfloat16. Accumulation: float (double for double).
#pragma once
#include "csc_common.cuh"

template <typename T> struct csc_acc { typedef float type; };
template <> struct csc_acc<double> { typedef double type; };

__device__ __forceinline__ float csc_load(float v) { return v; }
__device__ __forceinline__ double csc_load(double v) { return v; }
__device__ __forceinline__ float csc_load(__half v) { return __half2float(v); }
__device__ __forceinline__ float csc_load(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T csc_store(typename csc_acc<T>::type v);
template <> __device__ __forceinline__ float csc_store<float>(float v) { return v; }
template <> __device__ __forceinline__ double csc_store<double>(double v) { return v; }
template <> __device__ __forceinline__ __half csc_store<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 csc_store<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

// Grid-stride loop over [0, n).
#define CSC_GRID_LOOP(i, n)                                                       \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)
