// Kernel-map build on the device (SPEC section 4). Neighbour tables (n_query, K):
// for query row q and offset k, the row of the other set it pairs with, or -1. Two
// directions:
//   multiply: target = stride * q + K[k]                    (coarse -> fine)
//   divide:   target = (q - K[k]) / stride, if divisible    (fine -> coarse)
// With the query set = output rows this is the output-major table (pair mask,
// pair table sorted by output row); with the query set = input rows it is the
// reverse table. Keys are packed as in cusparseconv/coords.py.
//
// The tiled build (cusparseconv/backends/_kmap_gpu.py), one host read per geometry:
//   1. kmap_search_tiles<D>: the neighbour table and, per tile of 32 query rows, the
//      number of pairs of each offset (column counts);
//   2. kmap_scan_tiles: per offset, an exclusive scan of its tile counts (where each
//      tile's pairs start within the offset) and the pair count; the last block to
//      finish writes the pair offsets (CSR boundaries) on the device;
//   -- the host reads the pair counts (to size the pair table), with the hash
//      tables' duplicate counts, in one transfer --
//   3. kmap_compact_tiles: the pair table, sorted by query row within each offset,
//      the position table and the pair mask, C-contiguous by construction.
// For a submanifold map (same set, stride 1, a kernel closed under negation) the
// reverse table is not searched: the pairs of offset -d are the swapped pairs of d,
// so the reverse neighbour / position tables are the forward ones with the columns
// mirrored (kmap_mirror_tables) and the reverse pair table is the forward one with
// the offsets' segments mirrored (kmap_mirror_pairs).
//
// csc-instantiate: kmap_search_tiles<1>
// csc-instantiate: kmap_search_tiles<2>
// csc-instantiate: kmap_search_tiles<3>
// csc-instantiate: kmap_search_tiles<4>
// csc-instantiate: kmap_scan_tiles
// csc-instantiate: kmap_compact_tiles
// csc-instantiate: kmap_mirror_tables
// csc-instantiate: kmap_mirror_pairs
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_hash.cuh"

// Packed-key layout per D (batch bits, bits per axis), as coords.AXIS_BITS.
template <int D> struct csc_layout;
template <> struct csc_layout<1> { static const int axis_bits = 32; };
template <> struct csc_layout<2> { static const int axis_bits = 24; };
template <> struct csc_layout<3> { static const int axis_bits = 16; };
template <> struct csc_layout<4> { static const int axis_bits = 13; };

// ---------------------------------------------------------------------------
// The tiled build. A warp owns a tile of 32 consecutive query rows and walks the
// offsets in chunks of 32 (lane = offset 32 * word + lane, matching the pair-mask
// words) and the tile's rows one by one: per row the lanes touch 32 consecutive
// entries of the (n_rows, K) tables (coalesced), a ballot over the lanes is the
// row's mask word, and each lane counts its offset's pairs in the tile.
// ---------------------------------------------------------------------------
#define CSC_KMAP_TILE 32
#define CSC_KMAP_WARPS 4
#define CSC_KMAP_THREADS (32 * CSC_KMAP_WARPS)
#define CSC_KMAP_SCAN_THREADS 256

// a = q * b + r with 0 <= r < b (b > 0), in 32-bit arithmetic.
__device__ __forceinline__ void csc_floor_divmod(int a, int b, int& q, int& r) {
    q = a / b;
    r = a - q * b;
    if (r < 0) {
        r += b;
        --q;
    }
}

// Key of the row at `coord` moved by offset k, or false when no row can be there
// (not divisible, or outside the packed range). Multiply: stride * coord + offset.
// Divide: (coord - offset) / stride when divisible, i.e. when coord and offset have
// the same residue modulo the stride; then the quotient is the difference of their
// floor quotients (32-bit arithmetic only: no 64-bit division subroutine).
// offset_q / offset_r: the offset's floor quotient and residue (divide), or the
// offset itself in offset_q (multiply).
template <int D>
__device__ __forceinline__ bool csc_kmap_target(const int (&coord)[D + 1],
                                                const int (&offset_q)[D],
                                                const int (&offset_r)[D],
                                                const int (&step)[D], int divide,
                                                unsigned long long& key) {
    const int bits = csc_layout<D>::axis_bits;
    const long long bias = 1ll << (bits - 1);
    key = (unsigned long long)(long long)coord[0] << (bits * D);
    for (int axis = 0; axis < D; ++axis) {
        long long target;
        if (divide) {
            int q, r;
            csc_floor_divmod(coord[1 + axis], step[axis], q, r);
            if (r != offset_r[axis]) return false;
            target = (long long)q - offset_q[axis];
        } else {
            target = (long long)coord[1 + axis] * step[axis] + offset_q[axis];
        }
        if (target < -bias || target >= bias) return false;
        key |= (unsigned long long)(target + bias) << (bits * (D - 1 - axis));
    }
    return true;
}

// neighbour[r, k]: row of the table's set paired with query row r through offset k
// (-1: none); tile_counts[k, t]: pairs of offset k among the query rows of tile t.
// No warp-wide operation: the probes diverge (the pair mask is written by
// kmap_compact_tiles, from the neighbour table).
template <int D>
__global__ void __launch_bounds__(CSC_KMAP_THREADS)
kmap_search_tiles(const int* __restrict__ query_coords, int n_query,
                  const int* __restrict__ offsets, int kernel_volume,
                  const int* __restrict__ stride, int divide,
                  const unsigned long long* __restrict__ table_keys,
                  const int* __restrict__ table_values, unsigned long long table_mask,
                  int* __restrict__ neighbour, int n_words, int* __restrict__ tile_counts,
                  int n_tiles) {
    const int lane = threadIdx.x & 31;
    const int tile = blockIdx.x * CSC_KMAP_WARPS + (threadIdx.x >> 5);
    if (tile >= n_tiles) return;
    const int r0 = tile * CSC_KMAP_TILE;
    const int rows = min(CSC_KMAP_TILE, n_query - r0);
    int step[D];
    for (int axis = 0; axis < D; ++axis) step[axis] = stride[axis];
    for (int word = 0; word < n_words; ++word) {
        const int k = word * 32 + lane;
        if (k >= kernel_volume) break;
        int offset_q[D], offset_r[D];
        for (int axis = 0; axis < D; ++axis) {
            offset_q[axis] = offsets[k * D + axis];
            offset_r[axis] = 0;
            if (divide) csc_floor_divmod(offset_q[axis], step[axis], offset_q[axis], offset_r[axis]);
        }
        int count = 0;
        for (int r = r0; r < r0 + rows; ++r) {
            int coord[D + 1];  // the same row for every lane: one broadcast load each
            for (int axis = 0; axis <= D; ++axis) coord[axis] = query_coords[(long long)r * (D + 1) + axis];
            int partner = -1;
            unsigned long long key;
            if (csc_kmap_target<D>(coord, offset_q, offset_r, step, divide, key))
                partner = csc_hash_find(table_keys, table_values, table_mask, key);
            neighbour[(long long)r * kernel_volume + k] = partner;
            count += partner >= 0;
        }
        tile_counts[(long long)k * n_tiles + tile] = count;
    }
}

// Block k: tile_counts[k, :] becomes its exclusive scan (where each tile's pairs
// start within offset k) and totals[k] the offset's pair count. The last block to
// finish (a ticket taken after a fence: no block waits for another) writes
// pair_offsets[0..K] = exclusive scan of totals and, with a mirror permutation,
// mirrored_offsets[0..K] = exclusive scan of totals[mirror[k]]. *ticket must be 0.
__global__ void __launch_bounds__(CSC_KMAP_SCAN_THREADS)
kmap_scan_tiles(int* __restrict__ tile_counts, int n_tiles, int kernel_volume,
                int* __restrict__ totals, long long* __restrict__ pair_offsets,
                const int* __restrict__ mirror, int has_mirror,
                long long* __restrict__ mirrored_offsets, unsigned int* __restrict__ ticket) {
    __shared__ long long partial[CSC_KMAP_SCAN_THREADS];
    __shared__ bool is_last;
    const int tid = threadIdx.x;
    const int k = blockIdx.x;
    int* column = tile_counts + (long long)k * n_tiles;
    const int per_thread = (n_tiles + CSC_KMAP_SCAN_THREADS - 1) / CSC_KMAP_SCAN_THREADS;
    const int begin = min(n_tiles, tid * per_thread), end = min(n_tiles, begin + per_thread);
    long long sum = 0;
    for (int t = begin; t < end; ++t) sum += column[t];
    // exclusive block scan of the per-thread sums (Hillis-Steele in shared memory)
    partial[tid] = sum;
    __syncthreads();
    for (int delta = 1; delta < CSC_KMAP_SCAN_THREADS; delta <<= 1) {
        const long long other = tid >= delta ? partial[tid - delta] : 0;
        __syncthreads();
        partial[tid] += other;
        __syncthreads();
    }
    long long running = partial[tid] - sum;
    for (int t = begin; t < end; ++t) {
        const int count = column[t];
        column[t] = (int)running;
        running += count;
    }
    if (tid == CSC_KMAP_SCAN_THREADS - 1) totals[k] = (int)partial[tid];
    __threadfence();  // this block's totals[k] is visible before its ticket
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const volatile int* all = totals;
    for (int pass = 0; pass < 1 + has_mirror; ++pass) {
        long long* target = pass == 0 ? pair_offsets : mirrored_offsets;
        long long carry = 0;
        for (int base = 0; base < kernel_volume; base += CSC_KMAP_SCAN_THREADS) {
            const int j = base + tid;
            const long long value =
                j < kernel_volume ? (long long)all[pass == 0 ? j : mirror[j]] : 0;
            __syncthreads();
            partial[tid] = value;
            __syncthreads();
            for (int delta = 1; delta < CSC_KMAP_SCAN_THREADS; delta <<= 1) {
                const long long other = tid >= delta ? partial[tid - delta] : 0;
                __syncthreads();
                partial[tid] += other;
                __syncthreads();
            }
            if (j < kernel_volume) target[j] = carry + partial[tid] - value;
            carry += partial[CSC_KMAP_SCAN_THREADS - 1];
        }
        if (tid == 0) target[kernel_volume] = carry;
    }
}

// The pair table from the neighbour table and the scanned tile counts: pair
// pair_offsets[k] + tile_start[k, t] + (its rank in the tile) is (query row, partner)
// for offset k, sorted by query row; position[r, k] = the pair's index within
// offset k's list (-1: none), for the deterministic scatter; pair_mask[r, w] bit j
// set when neighbour[r, 32 w + j] >= 0 (a ballot over the lanes).
__global__ void __launch_bounds__(CSC_KMAP_THREADS)
kmap_compact_tiles(const int* __restrict__ neighbour, int n_query, int kernel_volume,
                   int n_words, const int* __restrict__ tile_start, int n_tiles,
                   const long long* __restrict__ pair_offsets, int* __restrict__ query_rows,
                   int* __restrict__ partner_rows, int* __restrict__ position,
                   unsigned int* __restrict__ pair_mask) {
    const int lane = threadIdx.x & 31;
    const int tile = blockIdx.x * CSC_KMAP_WARPS + (threadIdx.x >> 5);
    if (tile >= n_tiles) return;  // the whole warp
    const int r0 = tile * CSC_KMAP_TILE;
    const int rows = min(CSC_KMAP_TILE, n_query - r0);
    for (int word = 0; word < n_words; ++word) {
        const int k = word * 32 + lane;
        const bool has_k = k < kernel_volume;
        int within = has_k ? tile_start[(long long)k * n_tiles + tile] : 0;
        const long long base = has_k ? pair_offsets[k] : 0;
        unsigned int my_word = 0u;
        for (int r = 0; r < rows; ++r) {
            const long long index = (long long)(r0 + r) * kernel_volume + k;
            const int partner = has_k ? neighbour[index] : -1;
            if (partner >= 0) {
                query_rows[base + within] = r0 + r;
                partner_rows[base + within] = partner;
            }
            if (has_k) position[index] = partner >= 0 ? within : -1;
            within += partner >= 0;
            const unsigned int bits = __ballot_sync(CSC_FULL_MASK, partner >= 0);
            if (lane == r) my_word = bits;
        }
        if (lane < rows) pair_mask[(long long)(r0 + lane) * n_words + word] = my_word;
    }
}

// Reverse tables of a submanifold map by symmetry: mirror[k] is the offset -K[k].
// reverse_neighbour[r, k] = neighbour[r, mirror[k]] (the row r' with
// c(r) = c(r') + K[k] is the one at c(r) + K[mirror[k]]), the same for position,
// and the reverse pair mask from the mirrored columns.
__global__ void __launch_bounds__(CSC_KMAP_THREADS)
kmap_mirror_tables(const int* __restrict__ neighbour, const int* __restrict__ position,
                   int n_query, int kernel_volume, int n_words, int n_tiles,
                   const int* __restrict__ mirror, int* __restrict__ reverse_neighbour,
                   int* __restrict__ reverse_position, unsigned int* __restrict__ reverse_mask) {
    const int lane = threadIdx.x & 31;
    const int tile = blockIdx.x * CSC_KMAP_WARPS + (threadIdx.x >> 5);
    if (tile >= n_tiles) return;
    const int r0 = tile * CSC_KMAP_TILE;
    const int rows = min(CSC_KMAP_TILE, n_query - r0);
    for (int word = 0; word < n_words; ++word) {
        const int k = word * 32 + lane;
        const bool has_k = k < kernel_volume;
        const int source = has_k ? mirror[k] : 0;
        unsigned int my_word = 0u;
        for (int r = 0; r < rows; ++r) {
            const long long row = (long long)(r0 + r) * kernel_volume;
            int partner = -1;
            if (has_k) {
                partner = neighbour[row + source];
                reverse_neighbour[row + k] = partner;
                reverse_position[row + k] = position[row + source];
            }
            const unsigned int bits = __ballot_sync(CSC_FULL_MASK, partner >= 0);
            if (lane == r) my_word = bits;
        }
        if (lane < rows) reverse_mask[(long long)(r0 + lane) * n_words + word] = my_word;
    }
}

// Reverse pair table of a submanifold map: offset k's segment is the forward
// segment of mirror[k], already sorted by the (shared) query row.
__global__ void kmap_mirror_pairs(const int* __restrict__ query_rows,
                                  const int* __restrict__ partner_rows,
                                  const long long* __restrict__ pair_offsets,
                                  const long long* __restrict__ mirrored_offsets,
                                  const int* __restrict__ mirror, int kernel_volume,
                                  int* __restrict__ reverse_query_rows,
                                  int* __restrict__ reverse_partner_rows) {
    CSC_GRID_LOOP(slot, mirrored_offsets[kernel_volume]) {
        int low = 0, high = kernel_volume;  // the k with mirrored_offsets[k] <= slot < [k + 1]
        while (high - low > 1) {
            const int middle = (low + high) >> 1;
            if (mirrored_offsets[middle] <= slot) low = middle; else high = middle;
        }
        const long long source = pair_offsets[mirror[low]] + (slot - mirrored_offsets[low]);
        reverse_query_rows[slot] = query_rows[source];
        reverse_partner_rows[slot] = partner_rows[source];
    }
}
