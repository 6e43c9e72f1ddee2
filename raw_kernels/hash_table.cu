// Open-addressing hash table of packed 64-bit coordinate keys -> row index.
//
// Keys are the non-negative int64 keys of cusparseconv/coords.py; the empty
// slot holds ~0ull. Capacity is a power of two >= 2 * n_keys; linear probing.
//
// csc-instantiate: hash_insert
// csc-instantiate: hash_lookup
#include "csc_common.cuh"
#include "csc_convert.cuh"
#include "csc_hash.cuh"

// Insert keys[i] -> rows[i]. Duplicate keys are counted in *duplicates (the
// first insert wins), so the host can refuse coordinate sets with repeated rows.
__global__ void hash_insert(const long long* __restrict__ keys, const long long* __restrict__ rows,
                            long long n_keys,
                            unsigned long long* __restrict__ table_keys,
                            int* __restrict__ table_values, unsigned long long mask,
                            int* __restrict__ duplicates) {
    CSC_GRID_LOOP(i, n_keys) {
        unsigned long long key = (unsigned long long)keys[i];
        unsigned long long slot = csc_hash(key) & mask;
        while (true) {
            unsigned long long previous = atomicCAS(&table_keys[slot], CSC_EMPTY_KEY, key);
            if (previous == CSC_EMPTY_KEY) {
                table_values[slot] = (int)rows[i];
                break;
            }
            if (previous == key) {
                atomicAdd(duplicates, 1);
                break;
            }
            slot = (slot + 1) & mask;
        }
    }
}

// rows[i] = row of queries[i] in the table, or -1.
__global__ void hash_lookup(const long long* __restrict__ queries, long long n_queries,
                            const unsigned long long* __restrict__ table_keys,
                            const int* __restrict__ table_values, unsigned long long mask,
                            int* __restrict__ rows) {
    CSC_GRID_LOOP(i, n_queries) {
        long long query = queries[i];
        rows[i] = query < 0 ? -1
                            : csc_hash_find(table_keys, table_values, mask,
                                            (unsigned long long)query);
    }
}
