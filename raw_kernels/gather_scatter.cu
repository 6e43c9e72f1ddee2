// The final cast of the algorithms that accumulate in a wider type (the SIMT
// implicit GEMM, the explicit algorithm's scatter): out = T(acc + bias).
//
// csc-instantiate: finish_rows<float>
// csc-instantiate: finish_rows<double>
// csc-instantiate: finish_rows<__half>
// csc-instantiate: finish_rows<__nv_bfloat16>
#include "csc_common.cuh"
#include "csc_convert.cuh"

// out = T(acc + bias): the last step of every algorithm that accumulates in ACC.
template <typename T>
__global__ void finish_rows(const typename csc_acc<T>::type* __restrict__ acc, long long n_rows,
                            int channels, const T* __restrict__ bias, int has_bias,
                            T* __restrict__ out) {
    CSC_GRID_LOOP(index, n_rows * channels) {
        typename csc_acc<T>::type value = acc[index];
        if (has_bias) value += csc_load(bias[index % channels]);
        out[index] = csc_store<T>(value);
    }
}
