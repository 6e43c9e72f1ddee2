// Hash function and probe shared by the hash-table and kernel-map kernels.
#pragma once
#include "csc_common.cuh"

#define CSC_EMPTY_KEY 0xffffffffffffffffull

__device__ __forceinline__ unsigned long long csc_hash(unsigned long long key) {
    // splitmix64 finaliser: spreads neighbouring coordinates over the table
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ull;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebull;
    key ^= key >> 31;
    return key;
}

__device__ __forceinline__ int csc_hash_find(const unsigned long long* __restrict__ table_keys,
                                             const int* __restrict__ table_values,
                                             unsigned long long mask, unsigned long long key) {
    unsigned long long slot = csc_hash(key) & mask;
    while (true) {
        unsigned long long stored = table_keys[slot];
        if (stored == key) return table_values[slot];
        if (stored == CSC_EMPTY_KEY) return -1;
        slot = (slot + 1) & mask;
    }
}

