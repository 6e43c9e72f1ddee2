// Mask-based fused GEMM on tensor cores for __nv_bfloat16 (the template is in
// csc_mask_wmma.cuh; mask_gemm.cu has the other types). A file of its own
// because bfloat16 WMMA fragments exist only from sm_80: on an older device the
// launcher raises KernelUnavailableError and the GPU backend falls back to the
// SIMT kernel mask_gemm<__nv_bfloat16> of mask_gemm.cu.
//
// csc-min-arch: sm_80
// csc-instantiate: mask_gemm_wmma<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_mask_wmma.cuh"
