// Kernel-map build on the device (SPEC section 4).
//
// kmap_search fills a dense neighbour table (n_query, K): for query row q and
// offset k, the row of the other set it pairs with, or -1. Two directions:
//   multiply: target = stride * q + K[k]                    (coarse -> fine)
//   divide:   target = (q - K[k]) / stride, if divisible    (fine -> coarse)
// With the query set = output rows this is the output-major table (pair mask,
// pair table sorted by output row); with the query set = input rows it is the
// reverse table. Keys are packed as in cusparseconv/coords.py.
//
// csc-instantiate: kmap_search<1>
// csc-instantiate: kmap_search<2>
// csc-instantiate: kmap_search<3>
// csc-instantiate: kmap_search<4>
// csc-instantiate: kmap_pair_mask
// csc-instantiate: kmap_compact
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_hash.cuh"

// Packed-key layout per D (batch bits, bits per axis), as coords.AXIS_BITS.
template <int D> struct csc_layout;
template <> struct csc_layout<1> { static const int axis_bits = 32; };
template <> struct csc_layout<2> { static const int axis_bits = 24; };
template <> struct csc_layout<3> { static const int axis_bits = 16; };
template <> struct csc_layout<4> { static const int axis_bits = 13; };

template <int D>
__global__ void kmap_search(const int* __restrict__ query_coords, long long n_query,
                            const int* __restrict__ offsets, int kernel_volume,
                            const int* __restrict__ stride, int divide,
                            const unsigned long long* __restrict__ table_keys,
                            const int* __restrict__ table_values, unsigned long long mask,
                            int* __restrict__ neighbour) {
    const int bits = csc_layout<D>::axis_bits;
    const long long bias = 1ll << (bits - 1);
    CSC_GRID_LOOP(index, n_query * kernel_volume) {
        long long row = index / kernel_volume;
        int k = (int)(index - row * kernel_volume);
        const int* coord = query_coords + row * (D + 1);
        unsigned long long key = (unsigned long long)(long long)coord[0] << (bits * D);
        bool valid = true;
        for (int axis = 0; axis < D; ++axis) {
            long long value = coord[1 + axis];
            long long step = stride[axis];
            long long offset = offsets[k * D + axis];
            long long target;
            if (divide) {
                long long shifted = value - offset;
                // floor-free exact division: the target exists only if divisible
                if (shifted % step != 0) { valid = false; break; }
                target = shifted / step;
            } else {
                target = value * step + offset;
            }
            if (target < -bias || target >= bias) { valid = false; break; }
            key |= (unsigned long long)(target + bias) << (bits * (D - 1 - axis));
        }
        neighbour[index] = valid ? csc_hash_find(table_keys, table_values, mask, key) : -1;
    }
}

// mask[row, w] bit j set when neighbour[row, 32 * w + j] >= 0.
__global__ void kmap_pair_mask(const int* __restrict__ neighbour, long long n_rows,
                               int kernel_volume, int n_words, unsigned int* __restrict__ mask) {
    CSC_GRID_LOOP(index, n_rows * n_words) {
        long long row = index / n_words;
        int word = (int)(index - row * n_words);
        unsigned int bits = 0;
        int first = word * 32;
        int last = min(first + 32, kernel_volume);
        for (int k = first; k < last; ++k) {
            if (neighbour[row * kernel_volume + k] >= 0) bits |= 1u << (k - first);
        }
        mask[index] = bits;
    }
}

// Pair table from the neighbour table. rank[row, k] is the inclusive count of
// active entries in column k up to row (a column-wise scan); offset k's pairs
// start at pair_offsets[k]. Writes query rows and their partners sorted by the
// query row within each offset, and position[row, k] = index of the pair in
// offset k's list (-1 if inactive) for the deterministic scatter.
__global__ void kmap_compact(const int* __restrict__ neighbour, const int* __restrict__ rank,
                             long long n_rows, int kernel_volume,
                             const long long* __restrict__ pair_offsets,
                             int* __restrict__ query_rows, int* __restrict__ partner_rows,
                             int* __restrict__ position) {
    CSC_GRID_LOOP(index, n_rows * kernel_volume) {
        long long row = index / kernel_volume;
        int k = (int)(index - row * kernel_volume);
        int partner = neighbour[index];
        if (partner >= 0) {
            int within = rank[index] - 1;
            long long slot = pair_offsets[k] + within;
            query_rows[slot] = (int)row;
            partner_rows[slot] = partner;
            position[index] = within;
        } else {
            position[index] = -1;
        }
    }
}
