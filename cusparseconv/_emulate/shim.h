// shim.h: the CUDA built-ins our kernels use, as plain host C++20.
//
// The emulator (module.py) compiles a raw_kernels/*.cu source with
//     g++ -std=c++20 -DCSC_EMULATION -include shim.h ...
// and appends one extern "C" launch entry per name expression. Everything the
// kernels see (threadIdx, __syncthreads, atomics, warp intrinsics, __half,
// __nv_bfloat16, nvcuda::wmma) is defined here; the runtime that runs a grid
// (a pool of OS threads, or cooperative fibers) is at the end of the file.
//
// Execution model
//   * blocks run one after another, in a seeded shuffled order;
//   * the threads of a block run concurrently: one OS thread each (mode 0), or
//     one fiber each on the calling thread (mode 1, "cooperative": a thread
//     runs until it blocks on a barrier, then the next one runs, in a
//     forward / reverse / shuffled order, so a missing barrier is exposed
//     deterministically);
//   * __shared__ variables are function-local statics (found by the loader in
//     the symbol table), and the dynamic shared buffer is per launch: both are
//     filled with 0xff bytes at the start of every block (launches are
//     serialised by the caller);
//   * a thread that returns early is dropped from every barrier (as exited
//     threads are on the GPU);
//   * warp intrinsics exchange values through per-warp slots and a per-warp
//     barrier, so every lane named in the mask must arrive.
#ifndef CSC_EMULATOR_SHIM
#define CSC_EMULATOR_SHIM 1

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cstdarg>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <math.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 800
#endif

// ---------------------------------------------------------------------------
// qualifiers
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared variables become function-local statics; the loader finds them in
// the symbol table and the runtime fills them with 0xff at the start of each block.
#define __shared__ static __attribute__((aligned(16)))

// ---------------------------------------------------------------------------
// index types
// ---------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define CSC_VEC2(T, N) struct __attribute__((aligned(2 * sizeof(T)))) N { T x, y; }; \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define CSC_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CSC_VEC2(int, int2)
CSC_VEC2(unsigned int, uint2)
CSC_VEC2(float, float2)
CSC_VEC2(double, double2)
CSC_VEC2(long long, longlong2)
CSC_VEC2(unsigned long long, ulonglong2)
CSC_VEC4(int, int4, 16)
CSC_VEC4(unsigned int, uint4, 16)
CSC_VEC4(float, float4, 16)
#undef CSC_VEC2
#undef CSC_VEC4
struct float3 { float x, y, z; };
struct int3 { int x, y, z; };
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

namespace csc_emu {

// ---------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------
struct KernelAbort {};  // thrown inside a kernel thread to unwind it

inline void record_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void assert_fail(const char* cond, const char* file, int line,
                                     const char* func);
[[noreturn]] inline void trap();

// ---------------------------------------------------------------------------
// per-thread state
// ---------------------------------------------------------------------------
struct Fiber;
// One cp.async in flight: the bytes it will write, captured at issue time.
struct PendingCopy {
    unsigned char* dst;
    unsigned long long group;  // index of the commit group it belongs to
    int bytes;
    unsigned char data[16];
};
struct ThreadState {
    uint3 tid;
    unsigned rank, warp, lane;
    Fiber* fiber;  // cooperative mode only
    // cp.async state of this thread: copies not yet landed, groups committed so far
    std::vector<PendingCopy> async_pending;
    unsigned long long async_committed = 0;
};
inline thread_local ThreadState* cur = nullptr;

struct GridState {
    dim3 grid, block;
    uint3 block_idx;
};
inline GridState g;

}  // namespace csc_emu

#define threadIdx (::csc_emu::cur->tid)
#define blockIdx (::csc_emu::g.block_idx)
#define blockDim (::csc_emu::g.block)
#define gridDim (::csc_emu::g.grid)
constexpr int warpSize = 32;

// assert inside kernels reports through the launch instead of aborting.
#undef assert
#define assert(cond) \
    ((cond) ? (void)0 : ::csc_emu::assert_fail(#cond, __FILE__, __LINE__, __func__))

// ---------------------------------------------------------------------------
// synchronisation primitives
// ---------------------------------------------------------------------------
namespace csc_emu {

enum Mode { MODE_THREADS = 0, MODE_COOPERATIVE = 1 };

struct Control {
    int mode = MODE_THREADS;
    std::atomic<int> abort{0};
    std::atomic<int> alive{0};      // threads of the current block not finished
    std::atomic<int> blocked{0};    // threads of the current block waiting
    std::atomic<unsigned> progress{0};
    std::mutex err_mu;
    std::string err;
};
inline Control ctl;

inline long futex_wait(std::atomic<uint32_t>* addr, uint32_t val, long timeout_ms) {
    struct timespec ts;
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (timeout_ms % 1000) * 1000000L;
    return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, val,
                   timeout_ms >= 0 ? &ts : nullptr, nullptr, 0);
}
inline void futex_wake_all(std::atomic<uint32_t>* addr) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
            nullptr, 0);
}

inline void fiber_block(std::atomic<uint32_t>* addr, uint32_t val);  // cooperative mode

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Wait (inside a kernel thread) until *addr != val. Throws KernelAbort when
// the launch is aborted (failed assert, detected deadlock).
inline void kernel_wait(std::atomic<uint32_t>& a, uint32_t val) {
    if (ctl.mode == MODE_COOPERATIVE) {
        while (a.load(std::memory_order_acquire) == val) {
            if (ctl.abort.load(std::memory_order_relaxed)) throw KernelAbort{};
            fiber_block(&a, val);
        }
        if (ctl.abort.load(std::memory_order_relaxed)) throw KernelAbort{};
        return;
    }
    for (int i = 0; i < 64; ++i) {
        if (a.load(std::memory_order_acquire) != val) return;
        cpu_relax();
    }
    ctl.blocked.fetch_add(1, std::memory_order_relaxed);
    int stale = 0;
    unsigned seen = ctl.progress.load(std::memory_order_relaxed);
    while (a.load(std::memory_order_acquire) == val) {
        if (ctl.abort.load(std::memory_order_relaxed)) {
            ctl.blocked.fetch_sub(1, std::memory_order_relaxed);
            throw KernelAbort{};
        }
        long r = futex_wait(&a, val, 250);
        if (r != 0 && errno == ETIMEDOUT) {
            unsigned now = ctl.progress.load(std::memory_order_relaxed);
            bool all_blocked = ctl.blocked.load() >= ctl.alive.load();
            if (now == seen && all_blocked) {
                if (++stale >= 3) {
                    record_error("deadlock: every live thread of block (%u,%u,%u) waits at a "
                                 "barrier that cannot complete (a __syncthreads or warp "
                                 "intrinsic not reached by all threads/lanes it names)",
                                 g.block_idx.x, g.block_idx.y, g.block_idx.z);
                    ctl.abort.store(1);
                }
            } else {
                stale = 0;
                seen = now;
            }
        }
    }
    ctl.blocked.fetch_sub(1, std::memory_order_relaxed);
}

inline void kernel_wake(std::atomic<uint32_t>& a) {
    ctl.progress.fetch_add(1, std::memory_order_relaxed);
    if (ctl.mode == MODE_THREADS) futex_wake_all(&a);
}

// A generation barrier whose expected count shrinks when a thread exits.
// state = expected << 32 | arrived.
struct Barrier {
    std::atomic<uint64_t> state{0};
    std::atomic<uint32_t> gen{0};
    std::atomic<int> counters[2] = {0, 0};  // __syncthreads_count and friends

    void reset(uint32_t expected) {
        state.store(uint64_t(expected) << 32, std::memory_order_relaxed);
        counters[0].store(0, std::memory_order_relaxed);
        counters[1].store(0, std::memory_order_relaxed);
    }
    uint32_t generation() const { return gen.load(std::memory_order_acquire); }
    void release(uint32_t expected, uint32_t g0) {
        counters[(g0 + 1) & 1].store(0, std::memory_order_relaxed);
        state.store(uint64_t(expected) << 32, std::memory_order_relaxed);
        gen.fetch_add(1, std::memory_order_acq_rel);
        kernel_wake(gen);
    }
    // Arrive with generation g0 (read by the caller before it published data).
    void arrive_and_wait(uint32_t g0) {
        uint64_t s = state.fetch_add(1, std::memory_order_acq_rel) + 1;
        if (uint32_t(s) == uint32_t(s >> 32)) {
            release(uint32_t(s >> 32), g0);
        } else {
            kernel_wait(gen, g0);
        }
    }
    void arrive_and_wait() { arrive_and_wait(generation()); }
    void drop() {
        uint64_t s = state.fetch_sub(uint64_t(1) << 32, std::memory_order_acq_rel) -
                     (uint64_t(1) << 32);
        if (uint32_t(s) != 0 && uint32_t(s) == uint32_t(s >> 32))
            release(uint32_t(s >> 32), generation());
    }
};

// Slots through which the lanes of a warp (or of a subset named by a mask)
// exchange values; double-buffered by barrier generation.
struct WarpSync {
    Barrier bar;
    uint32_t mask = 0;  // the lanes taking part (subset syncs only)
    uint64_t value[2][32];
    uint32_t tag[2][32];
    void poison() {
        std::memset(value, 0xff, sizeof value);
        std::memset(tag, 0xff, sizeof tag);
    }
};

constexpr int kMaxSubsets = 8;
struct Warp {
    WarpSync main;
    std::atomic<uint32_t> alive{0};  // lanes not exited
    uint32_t exist = 0;              // lanes that exist (partial last warp)
    std::mutex sub_mu;
    WarpSync sub[kMaxSubsets];
    int n_sub = 0;
    float mma[2][512];               // WMMA exchange: A (256) then B (256)
};

struct Block {
    Barrier bar;
    std::vector<Warp*> warps;
    unsigned nthreads = 0;
};
inline Block blk;

inline Warp& my_warp() { return *blk.warps[cur->warp]; }

inline WarpSync& warp_sync_for(unsigned mask) {
    Warp& w = my_warp();
    uint32_t alive = w.alive.load(std::memory_order_acquire);
    uint32_t m = mask & w.exist;
    if ((m & alive) == alive) return w.main;
    std::lock_guard<std::mutex> lk(w.sub_mu);
    for (int i = 0; i < w.n_sub; ++i)
        if (w.sub[i].mask == m) return w.sub[i];
    if (w.n_sub == kMaxSubsets) {
        record_error("too many distinct warp masks in one warp (more than %d)", kMaxSubsets);
        ctl.abort.store(1);
        throw KernelAbort{};
    }
    WarpSync& s = w.sub[w.n_sub++];
    s.mask = m;
    s.poison();
    s.bar.reset(std::popcount(m));
    return s;
}

// Publish `mine`, wait for the other lanes, then `read(values, tags, tag)`.
template <class F>
inline auto warp_exchange(unsigned mask, uint64_t mine, F read) {
    if (!((mask >> cur->lane) & 1u)) {
        record_error("warp intrinsic called by lane %u with a mask (0x%08x) that excludes it",
                     cur->lane, mask);
        ctl.abort.store(1);
        throw KernelAbort{};
    }
    WarpSync& ws = warp_sync_for(mask);
    uint32_t g0 = ws.bar.generation();
    unsigned p = g0 & 1;
    ws.value[p][cur->lane] = mine;
    ws.tag[p][cur->lane] = g0;
    ws.bar.arrive_and_wait(g0);
    return read(ws.value[p], ws.tag[p], g0);
}

template <class T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp intrinsics move at most 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

template <class T>
inline T shfl_from(unsigned mask, T var, int src_lane_or_neg) {
    // src_lane_or_neg < 0: keep own value (still a synchronising exchange)
    return warp_exchange(mask, to_bits(var),
                         [&](const uint64_t* val, const uint32_t* tag, uint32_t g0) -> T {
                             if (src_lane_or_neg < 0) return var;
                             int s = src_lane_or_neg;
                             if (tag[s] != g0) return from_bits<T>(~uint64_t(0));  // not a participant
                             return from_bits<T>(val[s]);
                         });
}

}  // namespace csc_emu

// ---------------------------------------------------------------------------
// block and warp synchronisation
// ---------------------------------------------------------------------------
inline void __syncthreads() { ::csc_emu::blk.bar.arrive_and_wait(); }
inline int __csc_sync_reduce(int pred, int kind) {
    auto& b = ::csc_emu::blk.bar;
    uint32_t g0 = b.generation();
    int flag = kind == 1 ? !pred : (pred ? 1 : 0);  // "and" counts the false predicates
    b.counters[g0 & 1].fetch_add(flag, std::memory_order_acq_rel);
    b.arrive_and_wait(g0);
    int count = b.counters[g0 & 1].load(std::memory_order_acquire);
    if (kind == 0) return count;
    if (kind == 1) return count == 0 ? 1 : 0;
    return count > 0 ? 1 : 0;
}
inline int __syncthreads_count(int pred) { return __csc_sync_reduce(pred, 0); }
inline int __syncthreads_and(int pred) { return __csc_sync_reduce(pred, 1); }
inline int __syncthreads_or(int pred) { return __csc_sync_reduce(pred, 2); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::csc_emu::warp_exchange(mask, 0, [](const uint64_t*, const uint32_t*, uint32_t) { return 0; });
}
inline unsigned __activemask() {
    return ::csc_emu::my_warp().alive.load(std::memory_order_acquire);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return ::csc_emu::warp_exchange(
        mask, pred ? 1 : 0, [&](const uint64_t* val, const uint32_t* tag, uint32_t g0) {
            unsigned r = 0;
            for (int l = 0; l < 32; ++l)
                if (((mask >> l) & 1u) && tag[l] == g0 && val[l]) r |= 1u << l;
            return r;
        });
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    return ::csc_emu::warp_exchange(
        mask, pred ? 1 : 0, [&](const uint64_t* val, const uint32_t* tag, uint32_t g0) {
            for (int l = 0; l < 32; ++l)
                if (((mask >> l) & 1u) && tag[l] == g0 && !val[l]) return 0;
            return 1;
        });
}
inline int __uni_sync(unsigned mask, int pred) {
    return __all_sync(mask, pred) || !__any_sync(mask, pred);
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value) {
    uint64_t mine = ::csc_emu::to_bits(value);
    return ::csc_emu::warp_exchange(
        mask, mine, [&](const uint64_t* val, const uint32_t* tag, uint32_t g0) {
            unsigned r = 0;
            for (int l = 0; l < 32; ++l)
                if (((mask >> l) & 1u) && tag[l] == g0 && val[l] == mine) r |= 1u << l;
            return r;
        });
}
template <class T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred) {
    uint64_t mine = ::csc_emu::to_bits(value);
    unsigned same = ::csc_emu::warp_exchange(
        mask, mine, [&](const uint64_t* val, const uint32_t* tag, uint32_t g0) {
            unsigned r = 0, all = 0;
            for (int l = 0; l < 32; ++l)
                if (((mask >> l) & 1u) && tag[l] == g0) {
                    all |= 1u << l;
                    if (val[l] == mine) r |= 1u << l;
                }
            return r == all ? all : 0u;
        });
    *pred = same != 0;
    return same;
}

#define CSC_WARP_REDUCE(NAME, T, INIT, OP)                                                    \
    inline T NAME(unsigned mask, T value) {                                                   \
        return ::csc_emu::warp_exchange(                                                      \
            mask, ::csc_emu::to_bits(value),                                                  \
            [&](const uint64_t* val, const uint32_t* tag, uint32_t g0) {                      \
                T r = INIT;                                                                   \
                for (int l = 0; l < 32; ++l)                                                  \
                    if (((mask >> l) & 1u) && tag[l] == g0) {                                 \
                        T v = ::csc_emu::from_bits<T>(val[l]);                                \
                        r = OP;                                                               \
                    }                                                                         \
                return r;                                                                     \
            });                                                                               \
    }
CSC_WARP_REDUCE(__reduce_add_sync, int, 0, r + v)
CSC_WARP_REDUCE(__reduce_add_sync, unsigned, 0u, r + v)
CSC_WARP_REDUCE(__reduce_min_sync, int, INT_MAX, (v < r ? v : r))
CSC_WARP_REDUCE(__reduce_min_sync, unsigned, UINT_MAX, (v < r ? v : r))
CSC_WARP_REDUCE(__reduce_max_sync, int, INT_MIN, (v > r ? v : r))
CSC_WARP_REDUCE(__reduce_max_sync, unsigned, 0u, (v > r ? v : r))
CSC_WARP_REDUCE(__reduce_and_sync, unsigned, ~0u, (r & v))
CSC_WARP_REDUCE(__reduce_or_sync, unsigned, 0u, (r | v))
CSC_WARP_REDUCE(__reduce_xor_sync, unsigned, 0u, (r ^ v))
#undef CSC_WARP_REDUCE

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    int lane = int(::csc_emu::cur->lane);
    int base = lane & ~(width - 1);
    return ::csc_emu::shfl_from(mask, var, base + (src_lane & (width - 1)));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    int lane = int(::csc_emu::cur->lane);
    int base = lane & ~(width - 1);
    int s = lane - int(delta);
    return ::csc_emu::shfl_from(mask, var, s < base ? -1 : s);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    int lane = int(::csc_emu::cur->lane);
    int base = lane & ~(width - 1);
    int s = lane + int(delta);
    return ::csc_emu::shfl_from(mask, var, s >= base + width ? -1 : s);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    int lane = int(::csc_emu::cur->lane);
    int base = lane & ~(width - 1);
    int s = lane ^ lane_mask;
    return ::csc_emu::shfl_from(mask, var, s >= base + width || s < base ? -1 : s);
}

// ---------------------------------------------------------------------------
// atomics (std::atomic_ref on the real memory)
// ---------------------------------------------------------------------------
namespace csc_emu {
template <class T>
inline std::atomic_ref<T> aref(T* p) { return std::atomic_ref<T>(*p); }
template <class T, class F>
inline T cas_loop(T* address, F f) {
    std::atomic_ref<T> a(*address);
    T old = a.load(std::memory_order_relaxed);
    while (!a.compare_exchange_weak(old, f(old), std::memory_order_acq_rel,
                                    std::memory_order_relaxed)) {
    }
    return old;
}
}  // namespace csc_emu

#define CSC_ATOMIC_FETCH(NAME, T, METHOD)                                                     \
    inline T NAME(T* address, T val) {                                                        \
        return ::csc_emu::aref(address).METHOD(val, std::memory_order_acq_rel);              \
    }
CSC_ATOMIC_FETCH(atomicAdd, int, fetch_add)
CSC_ATOMIC_FETCH(atomicAdd, unsigned int, fetch_add)
CSC_ATOMIC_FETCH(atomicAdd, unsigned long long, fetch_add)
CSC_ATOMIC_FETCH(atomicAdd, long long, fetch_add)
CSC_ATOMIC_FETCH(atomicAdd, float, fetch_add)
CSC_ATOMIC_FETCH(atomicAdd, double, fetch_add)
CSC_ATOMIC_FETCH(atomicSub, int, fetch_sub)
CSC_ATOMIC_FETCH(atomicSub, unsigned int, fetch_sub)
CSC_ATOMIC_FETCH(atomicOr, int, fetch_or)
CSC_ATOMIC_FETCH(atomicOr, unsigned int, fetch_or)
CSC_ATOMIC_FETCH(atomicOr, unsigned long long, fetch_or)
CSC_ATOMIC_FETCH(atomicAnd, int, fetch_and)
CSC_ATOMIC_FETCH(atomicAnd, unsigned int, fetch_and)
CSC_ATOMIC_FETCH(atomicAnd, unsigned long long, fetch_and)
CSC_ATOMIC_FETCH(atomicXor, int, fetch_xor)
CSC_ATOMIC_FETCH(atomicXor, unsigned int, fetch_xor)
CSC_ATOMIC_FETCH(atomicXor, unsigned long long, fetch_xor)
#undef CSC_ATOMIC_FETCH

#define CSC_ATOMIC_EXCH(T)                                                                    \
    inline T atomicExch(T* address, T val) {                                                  \
        return ::csc_emu::aref(address).exchange(val, std::memory_order_acq_rel);             \
    }
CSC_ATOMIC_EXCH(int)
CSC_ATOMIC_EXCH(unsigned int)
CSC_ATOMIC_EXCH(unsigned long long)
CSC_ATOMIC_EXCH(float)
#undef CSC_ATOMIC_EXCH

#define CSC_ATOMIC_CAS(T)                                                                     \
    inline T atomicCAS(T* address, T compare, T val) {                                        \
        ::csc_emu::aref(address).compare_exchange_strong(compare, val,                        \
                                                         std::memory_order_acq_rel);          \
        return compare;                                                                       \
    }
CSC_ATOMIC_CAS(int)
CSC_ATOMIC_CAS(unsigned int)
CSC_ATOMIC_CAS(unsigned long long)
CSC_ATOMIC_CAS(unsigned short)
#undef CSC_ATOMIC_CAS

#define CSC_ATOMIC_MINMAX(T)                                                                  \
    inline T atomicMax(T* address, T val) {                                                   \
        return ::csc_emu::cas_loop(address, [&](T old) { return old < val ? val : old; });   \
    }                                                                                         \
    inline T atomicMin(T* address, T val) {                                                   \
        return ::csc_emu::cas_loop(address, [&](T old) { return val < old ? val : old; });   \
    }
CSC_ATOMIC_MINMAX(int)
CSC_ATOMIC_MINMAX(unsigned int)
CSC_ATOMIC_MINMAX(long long)
CSC_ATOMIC_MINMAX(unsigned long long)
#undef CSC_ATOMIC_MINMAX

inline unsigned atomicInc(unsigned* address, unsigned val) {
    return ::csc_emu::cas_loop(address, [&](unsigned old) { return old >= val ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* address, unsigned val) {
    return ::csc_emu::cas_loop(
        address, [&](unsigned old) { return (old == 0 || old > val) ? val : old - 1; });
}

// ---------------------------------------------------------------------------
// bits, reinterpretation, loads
// ---------------------------------------------------------------------------
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(unsigned(x)) + 1; }
inline int __ffsll(long long x) {
    return x == 0 ? 0 : std::countr_zero((unsigned long long)x) + 1;
}
inline int __clz(int x) { return std::countl_zero(unsigned(x)); }
inline int __clzll(long long x) { return std::countl_zero((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned long long __brevll(unsigned long long x) {
    unsigned long long r = 0;
    for (int i = 0; i < 64; ++i) r |= ((x >> i) & 1ull) << (63 - i);
    return r;
}
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return unsigned((unsigned long long)a * b >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
inline long long clock64() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
inline void __nanosleep(unsigned) { sched_yield(); }
inline void __trap() { ::csc_emu::trap(); }

// ---------------------------------------------------------------------------
// math
// ---------------------------------------------------------------------------
template <class A, class B,
          std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
    else return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B,
          std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
    else return C(a) < C(b) ? C(b) : C(a);
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(std::floor(x)); }
inline int __float2int_ru(float x) { return int(std::ceil(x)); }

// ---------------------------------------------------------------------------
// 16-bit floating types
// ---------------------------------------------------------------------------
namespace csc_emu {
inline unsigned short float_to_half_bits(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u)  // inf or nan
        return (unsigned short)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
    if (absx >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to inf
    if (absx < 0x38800000u) {                                           // subnormal or zero
        if (absx < 0x33000000u) return (unsigned short)sign;            // < half of min subnormal
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;  // 14 + (113 - e) - 1 ... mantissa shift to 10 bits
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return (unsigned short)(sign | r);
    }
    uint32_t r = ((absx - 0x38000000u) >> 13);
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return (unsigned short)(sign | r);
}
inline float half_bits_to_float(unsigned short h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    uint32_t x;
    if (e == 0) {
        if (m == 0) x = sign;
        else {
            int shift = 0;
            while (!(m & 0x400u)) { m <<= 1; ++shift; }
            m &= 0x3ffu;
            x = sign | uint32_t(113 - shift) << 23 | (m << 13);
        }
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112) << 23) | (m << 13);
    }
    return std::bit_cast<float>(x);
}
inline unsigned short float_to_bf16_bits(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);  // nan
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}
inline float bf16_bits_to_float(unsigned short b) {
    return std::bit_cast<float>(uint32_t(b) << 16);
}
}  // namespace csc_emu

struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

struct __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(::csc_emu::float_to_half_bits(f)) {}
    __half(double f) : __x(::csc_emu::float_to_half_bits(float(f))) {}
    __half(int v) : __x(::csc_emu::float_to_half_bits(float(v))) {}
    __half(unsigned v) : __x(::csc_emu::float_to_half_bits(float(v))) {}
    __half(long long v) : __x(::csc_emu::float_to_half_bits(float(v))) {}
    __half(unsigned long long v) : __x(::csc_emu::float_to_half_bits(float(v))) {}
    operator float() const { return ::csc_emu::half_bits_to_float(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
};
typedef __half half;

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(::csc_emu::float_to_bf16_bits(f)) {}
    __nv_bfloat16(double f) : __x(::csc_emu::float_to_bf16_bits(float(f))) {}
    __nv_bfloat16(int v) : __x(::csc_emu::float_to_bf16_bits(float(v))) {}
    __nv_bfloat16(unsigned v) : __x(::csc_emu::float_to_bf16_bits(float(v))) {}
    __nv_bfloat16(long long v) : __x(::csc_emu::float_to_bf16_bits(float(v))) {}
    __nv_bfloat16(unsigned long long v) : __x(::csc_emu::float_to_bf16_bits(float(v))) {}
    operator float() const { return ::csc_emu::bf16_bits_to_float(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};
typedef __nv_bfloat16 nv_bfloat16;

struct __attribute__((aligned(4))) __half2 { __half x, y; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half2 half2;
typedef __nv_bfloat162 nv_bfloat162;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __half __double2half(double d) { return __half(float(d)); }
inline __half __int2half_rn(int v) { return __half(float(v)); }
inline int __half2int_rz(__half h) { return int(float(h)); }
inline int __half2int_rn(__half h) { return int(std::nearbyint(float(h))); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return short(h.__x); }
inline __half __ushort_as_half(unsigned short v) { return __half(__half_raw{v}); }
inline __half __short_as_half(short v) { return __half(__half_raw{(unsigned short)v}); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(float(d)); }
inline __nv_bfloat16 __int2bfloat16_rn(int v) { return __nv_bfloat16(float(v)); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) {
    return __nv_bfloat16(__nv_bfloat16_raw{v});
}
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat162{a, b};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{float(h.x), float(h.y)}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }

// Arithmetic rounds after every operation, like the hardware's 16-bit units.
#define CSC_HALF_OPS(H, P)                                                                    \
    inline H operator+(const H& a, const H& b) { return H(float(a) + float(b)); }             \
    inline H operator-(const H& a, const H& b) { return H(float(a) - float(b)); }             \
    inline H operator*(const H& a, const H& b) { return H(float(a) * float(b)); }             \
    inline H operator/(const H& a, const H& b) { return H(float(a) / float(b)); }             \
    inline H operator-(const H& a) { H r = a; r.__x ^= 0x8000u; return r; }                   \
    inline H& operator+=(H& a, const H& b) { return a = a + b; }                              \
    inline H& operator-=(H& a, const H& b) { return a = a - b; }                              \
    inline H& operator*=(H& a, const H& b) { return a = a * b; }                              \
    inline H& operator/=(H& a, const H& b) { return a = a / b; }                              \
    inline bool operator==(const H& a, const H& b) { return float(a) == float(b); }           \
    inline bool operator!=(const H& a, const H& b) { return float(a) != float(b); }           \
    inline bool operator<(const H& a, const H& b) { return float(a) < float(b); }             \
    inline bool operator>(const H& a, const H& b) { return float(a) > float(b); }             \
    inline bool operator<=(const H& a, const H& b) { return float(a) <= float(b); }           \
    inline bool operator>=(const H& a, const H& b) { return float(a) >= float(b); }           \
    inline H P##add(H a, H b) { return a + b; }                                               \
    inline H P##sub(H a, H b) { return a - b; }                                               \
    inline H P##mul(H a, H b) { return a * b; }                                               \
    inline H P##div(H a, H b) { return a / b; }                                               \
    inline H P##fma(H a, H b, H c) { return H(std::fma(float(a), float(b), float(c))); }      \
    inline H P##neg(H a) { return -a; }                                                       \
    inline H P##abs(H a) { H r = a; r.__x &= 0x7fffu; return r; }                             \
    inline H P##max(H a, H b) { return H(std::fmax(float(a), float(b))); }                   \
    inline H P##min(H a, H b) { return H(std::fmin(float(a), float(b))); }                    \
    inline bool P##eq(H a, H b) { return a == b; }                                            \
    inline bool P##ne(H a, H b) { return a != b; }                                            \
    inline bool P##lt(H a, H b) { return a < b; }                                             \
    inline bool P##le(H a, H b) { return a <= b; }                                            \
    inline bool P##gt(H a, H b) { return a > b; }                                             \
    inline bool P##ge(H a, H b) { return a >= b; }
CSC_HALF_OPS(__half, __h)
CSC_HALF_OPS(__nv_bfloat16, __h)
#undef CSC_HALF_OPS
inline bool __hisnan(__half a) { return std::isnan(float(a)); }
inline bool __hisnan(__nv_bfloat16 a) { return std::isnan(float(a)); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{a.x + b.x, a.y + b.y}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{a.x * b.x, a.y * b.y}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) {
    return __nv_bfloat162{a.x + b.x, a.y + b.y};
}
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) {
    return __nv_bfloat162{a.x * b.x, a.y * b.y};
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
    return __nv_bfloat162{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}

inline __half atomicAdd(__half* address, __half val) {
    unsigned short old = ::csc_emu::cas_loop(
        reinterpret_cast<unsigned short*>(address),
        [&](unsigned short o) { return (__half(__half_raw{o}) + val).__x; });
    return __half(__half_raw{old});
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 val) {
    unsigned short old = ::csc_emu::cas_loop(
        reinterpret_cast<unsigned short*>(address),
        [&](unsigned short o) { return (__nv_bfloat16(__nv_bfloat16_raw{o}) + val).__x; });
    return __nv_bfloat16(__nv_bfloat16_raw{old});
}

// ---------------------------------------------------------------------------
// WMMA (m16n16k16, __half / __nv_bfloat16 inputs, float or __half accumulators)
//
// Layout chosen by the emulator (real hardware differs; kernels must not
// depend on it): element e of lane l holds matrix element (row, col) with
// row * 16 + col == e * 32 + l. A is M x K, B is K x N, C/D are M x N.
// ---------------------------------------------------------------------------
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16,
                  "the emulator supports the m16n16k16 WMMA shape only");
    static_assert(std::is_same_v<Use, accumulator> || std::is_same_v<T, __half> ||
                      std::is_same_v<T, __nv_bfloat16>,
                  "matrix_a / matrix_b fragments hold __half or __nv_bfloat16");
    static_assert(!std::is_same_v<Use, accumulator> || std::is_same_v<T, float> ||
                      std::is_same_v<T, __half>,
                  "accumulator fragments hold float or __half");
    typedef T element_type;
    typedef T storage_element_type;
    static constexpr int num_elements = 8;
    T x[8];
};

namespace detail {
inline int row_of(int e, int lane) { return (e * 32 + lane) >> 4; }
inline int col_of(int e, int lane) { return (e * 32 + lane) & 15; }
inline void enter() { __syncwarp(); }  // the *_sync calls wait for the whole warp
}  // namespace detail

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    for (int e = 0; e < 8; ++e) f.x[e] = T(v);
}

template <class T, class L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L>& a, const T* p, unsigned ldm) {
    detail::enter();
    int lane = int(::csc_emu::cur->lane);
    for (int e = 0; e < 8; ++e) {
        int r = detail::row_of(e, lane), c = detail::col_of(e, lane);  // A(r = m, c = k)
        a.x[e] = std::is_same_v<L, row_major> ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
    }
}
template <class T, class L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L>& b, const T* p, unsigned ldm) {
    detail::enter();
    int lane = int(::csc_emu::cur->lane);
    for (int e = 0; e < 8; ++e) {
        int r = detail::row_of(e, lane), c = detail::col_of(e, lane);  // B(r = k, c = n)
        b.x[e] = std::is_same_v<L, row_major> ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
    }
}
template <class T, class S>
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& acc, const S* p, unsigned ldm,
                             layout_t layout) {
    detail::enter();
    int lane = int(::csc_emu::cur->lane);
    for (int e = 0; e < 8; ++e) {
        int r = detail::row_of(e, lane), c = detail::col_of(e, lane);
        acc.x[e] = T(layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]);
    }
}
template <class T, class S>
inline void store_matrix_sync(S* p, const fragment<accumulator, 16, 16, 16, T>& acc, unsigned ldm,
                              layout_t layout) {
    detail::enter();
    int lane = int(::csc_emu::cur->lane);
    for (int e = 0; e < 8; ++e) {
        int r = detail::row_of(e, lane), c = detail::col_of(e, lane);
        S v = S(acc.x[e]);
        if (layout == mem_row_major) p[size_t(r) * ldm + c] = v;
        else p[size_t(c) * ldm + r] = v;
    }
}
// D = A * B + C, computed in float with k in increasing order.
template <class T, class LA, class LB, class TC, class TD>
inline void mma_sync(fragment<accumulator, 16, 16, 16, TD>& d,
                     const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                     const fragment<accumulator, 16, 16, 16, TC>& c) {
    using namespace ::csc_emu;
    if (my_warp().alive.load() != 0xffffffffu) {
        record_error("wmma::mma_sync called by a warp that has fewer than 32 live lanes");
        ctl.abort.store(1);
        throw KernelAbort{};
    }
    Warp& w = my_warp();
    int lane = int(cur->lane);
    uint32_t g0 = w.main.bar.generation();
    float* buf = w.mma[g0 & 1];
    for (int e = 0; e < 8; ++e) {
        buf[e * 32 + lane] = float(a.x[e]);
        buf[256 + e * 32 + lane] = float(b.x[e]);
    }
    w.main.bar.arrive_and_wait(g0);
    for (int e = 0; e < 8; ++e) {
        int r = detail::row_of(e, lane), col = detail::col_of(e, lane);
        float s = 0.f;
        for (int k = 0; k < 16; ++k) s += buf[r * 16 + k] * buf[256 + k * 16 + col];
        d.x[e] = TD(float(c.x[e]) + s);
    }
}
}  // namespace wmma
}  // namespace nvcuda

// ---------------------------------------------------------------------------
// the runtime: grid launch, thread pool, fibers
// ---------------------------------------------------------------------------
namespace csc_emu {

inline void vrecord_error(const char* fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    std::lock_guard<std::mutex> lk(ctl.err_mu);
    if (ctl.err.empty()) ctl.err = buf;
}
inline void record_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vrecord_error(fmt, ap);
    va_end(ap);
}
inline void assert_fail(const char* cond, const char* file, int line, const char* func) {
    if (cur) {
        record_error("assertion `%s` failed in %s (%s:%d), block (%u,%u,%u), thread (%u,%u,%u)",
                     cond, func, file, line, g.block_idx.x, g.block_idx.y, g.block_idx.z,
                     cur->tid.x, cur->tid.y, cur->tid.z);
    } else {
        record_error("assertion `%s` failed in %s (%s:%d)", cond, func, file, line);
    }
    ctl.abort.store(1);
    throw KernelAbort{};
}
inline void trap() {
    record_error("__trap() called in block (%u,%u,%u), thread (%u,%u,%u)", g.block_idx.x,
                 g.block_idx.y, g.block_idx.z, cur->tid.x, cur->tid.y, cur->tid.z);
    ctl.abort.store(1);
    throw KernelAbort{};
}

constexpr size_t kRedzone = 256;
struct Launch {
    void (*thunk)(void*) = nullptr;
    void* closure = nullptr;
    unsigned nthreads = 0, nwarps = 0;
    unsigned long long nblocks = 0;
    std::vector<unsigned long long> order;  // block linear indices in run order
    unsigned char* dyn = nullptr;           // dynamic shared memory (after a redzone)
    size_t dyn_bytes = 0;
    int schedule = 0;                       // cooperative: 0 forward, 1 reverse, 2 shuffled
    uint64_t seed = 0;
    const unsigned long long* shared_ranges = nullptr;  // (address, bytes) pairs
    unsigned long long n_shared_ranges = 0;
};
inline Launch L;
inline std::vector<unsigned char> dyn_storage;

inline unsigned char* dynamic_shared() { return L.dyn; }

inline std::vector<Warp*> warp_pool;  // grows, never shrinks

// Prepare block k of the run order (called while no kernel thread runs).
inline void setup_block(unsigned long long k) {
    unsigned long long b = L.order[k];
    g.block_idx.x = unsigned(b % g.grid.x);
    g.block_idx.y = unsigned((b / g.grid.x) % g.grid.y);
    g.block_idx.z = unsigned(b / (unsigned long long)g.grid.x / g.grid.y);
    blk.bar.reset(L.nthreads);
    for (unsigned w = 0; w < L.nwarps; ++w) {
        Warp& wp = *blk.warps[w];
        unsigned lanes = std::min(32u, L.nthreads - 32 * w);
        wp.exist = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
        wp.alive.store(wp.exist, std::memory_order_relaxed);
        wp.main.bar.reset(lanes);
        wp.main.poison();
        wp.n_sub = 0;
    }
    if (L.dyn_bytes) std::memset(L.dyn, 0xff, L.dyn_bytes);
    for (unsigned long long i = 0; i < L.n_shared_ranges; ++i)  // static __shared__ variables
        std::memset(reinterpret_cast<void*>(L.shared_ranges[2 * i]), 0xff,
                    size_t(L.shared_ranges[2 * i + 1]));
    ctl.alive.store(int(L.nthreads), std::memory_order_relaxed);
    ctl.blocked.store(0, std::memory_order_relaxed);
}

inline void set_thread(ThreadState& ts, unsigned rank) {
    ts.rank = rank;
    ts.warp = rank >> 5;
    ts.lane = rank & 31;
    ts.tid.x = rank % g.block.x;
    ts.tid.y = (rank / g.block.x) % g.block.y;
    ts.tid.z = rank / (g.block.x * g.block.y);
}

// Run one kernel thread of the current block on the calling OS thread / fiber.
inline void run_thread(ThreadState& ts) {
    cur = &ts;
    // copies a previous block left in flight never land (nobody waited for them)
    ts.async_pending.clear();
    ts.async_committed = 0;
    try {
        if (!ctl.abort.load(std::memory_order_relaxed)) L.thunk(L.closure);
    } catch (KernelAbort&) {
    } catch (std::exception& e) {
        record_error("C++ exception in kernel thread: %s", e.what());
        ctl.abort.store(1);
    } catch (...) {
        record_error("unknown C++ exception in kernel thread");
        ctl.abort.store(1);
    }
    Warp& w = *blk.warps[ts.warp];
    w.alive.fetch_and(~(1u << ts.lane), std::memory_order_acq_rel);
    ctl.alive.fetch_sub(1, std::memory_order_acq_rel);
    w.main.bar.drop();
    blk.bar.drop();
    cur = nullptr;
}

// ----- mode 0: a pool of OS threads ------------------------------------------
// Worker i runs CUDA thread i of every block of a launch. Idle workers exit
// after kIdleMs without a launch (each compiled module has its own pool), and
// are started again on demand.
constexpr long kIdleMs = 2000;

struct Worker {
    pthread_t handle;
    unsigned index = 0;
    std::atomic<uint32_t> go{0};
    uint32_t seen = 0;
    bool running = false;  // guarded by Pool::mu
    ThreadState ts;
};

struct Pool {
    std::mutex mu;
    std::vector<Worker*> workers;
    std::atomic<uint32_t> done{0};
    std::atomic<unsigned> finished{0};
    unsigned active = 0;
    // the end-of-block barrier (pool level, no abort/deadlock handling)
    std::atomic<uint32_t> bgen{0};
    std::atomic<unsigned> barrived{0};
    bool atfork_registered = false;
};
inline Pool pool;

inline void pool_wait(std::atomic<uint32_t>& a, uint32_t val) {
    for (int i = 0; i < 64; ++i) {
        if (a.load(std::memory_order_acquire) != val) return;
        cpu_relax();
    }
    while (a.load(std::memory_order_acquire) == val) futex_wait(&a, val, -1);
}

inline void worker_blocks(Worker& wk) {
    for (unsigned long long k = 0; k < L.nblocks; ++k) {
        set_thread(wk.ts, wk.index);
        run_thread(wk.ts);
        // end-of-block barrier; the last thread prepares the next block
        uint32_t g0 = pool.bgen.load(std::memory_order_acquire);
        if (pool.barrived.fetch_add(1, std::memory_order_acq_rel) + 1 == pool.active) {
            pool.barrived.store(0, std::memory_order_relaxed);
            if (k + 1 < L.nblocks) setup_block(k + 1);
            pool.bgen.fetch_add(1, std::memory_order_acq_rel);
            futex_wake_all(&pool.bgen);
        } else {
            pool_wait(pool.bgen, g0);
        }
    }
}

inline void* worker_main(void* arg) {
    Worker& wk = *static_cast<Worker*>(arg);
    for (;;) {
        while (wk.go.load(std::memory_order_acquire) == wk.seen) {
            long r = futex_wait(&wk.go, wk.seen, kIdleMs);
            if (r != 0 && errno == ETIMEDOUT) {
                std::lock_guard<std::mutex> lk(pool.mu);
                if (wk.go.load(std::memory_order_acquire) == wk.seen) {
                    wk.running = false;  // retire; a later launch starts a new thread
                    return nullptr;
                }
            }
        }
        wk.seen = wk.go.load(std::memory_order_acquire);
        worker_blocks(wk);
        if (pool.finished.fetch_add(1, std::memory_order_acq_rel) + 1 == pool.active) {
            pool.done.fetch_add(1, std::memory_order_acq_rel);
            futex_wake_all(&pool.done);
        }
    }
}

inline void pool_after_fork_in_child() {
    // the workers do not exist in a forked child: forget them (leaking the structs)
    new (&pool.mu) std::mutex();
    pool.workers.clear();
}

// Start workers [0, n) that are not running; called with pool.mu held.
inline bool pool_start(unsigned n) {
    if (!pool.atfork_registered) {
        pthread_atfork(nullptr, nullptr, pool_after_fork_in_child);
        pool.atfork_registered = true;
    }
    while (pool.workers.size() < n) {
        Worker* wk = new Worker();
        wk->index = unsigned(pool.workers.size());
        pool.workers.push_back(wk);
    }
    for (unsigned i = 0; i < n; ++i) {
        Worker* wk = pool.workers[i];
        if (wk->running) continue;
        wk->seen = wk->go.load(std::memory_order_acquire);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1 << 20);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&wk->handle, &attr, worker_main, wk);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            record_error("cannot start emulator worker thread %u (error %d)", i, rc);
            return false;
        }
        wk->running = true;
    }
    return true;
}

inline void run_threads_mode() {
    std::unique_lock<std::mutex> lk(pool.mu);
    if (!pool_start(L.nthreads)) return;
    pool.active = L.nthreads;
    pool.finished.store(0);
    pool.barrived.store(0);
    uint32_t d0 = pool.done.load(std::memory_order_acquire);
    setup_block(0);
    for (unsigned i = 0; i < L.nthreads; ++i) {
        Worker& wk = *pool.workers[i];
        wk.go.fetch_add(1, std::memory_order_acq_rel);
        futex_wake_all(&wk.go);
    }
    lk.unlock();
    pool_wait(pool.done, d0);
}

// ----- mode 1: cooperative fibers --------------------------------------------
struct Fiber {
    ucontext_t ctx;
    void* stack = nullptr;
    size_t stack_bytes = 0;
    ThreadState ts;
    bool done = false;
    std::atomic<uint32_t>* wait_addr = nullptr;
    uint32_t wait_val = 0;
};
inline std::vector<Fiber*> fibers;
inline ucontext_t sched_ctx;
inline Fiber* running = nullptr;

inline void fiber_block(std::atomic<uint32_t>* addr, uint32_t val) {
    Fiber* f = running;
    f->wait_addr = addr;
    f->wait_val = val;
    swapcontext(&f->ctx, &sched_ctx);
}

inline void fiber_entry(unsigned hi, unsigned lo) {
    Fiber* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
    run_thread(f->ts);
    f->done = true;
    // returning resumes uc_link (the scheduler)
}

inline bool fibers_grow(unsigned n) {
    constexpr size_t kStack = 256 * 1024;
    while (fibers.size() < n) {
        Fiber* f = new Fiber();
        void* mem = mmap(nullptr, kStack, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mem == MAP_FAILED) {
            delete f;
            record_error("cannot allocate a fiber stack");
            return false;
        }
        mprotect(mem, 4096, PROT_NONE);  // guard page
        f->stack = mem;
        f->stack_bytes = kStack;
        fibers.push_back(f);
    }
    return true;
}

inline void run_cooperative_mode() {
    if (!fibers_grow(L.nthreads)) return;
    std::mt19937_64 rng(L.seed ^ 0x9e3779b97f4a7c15ull);
    std::vector<unsigned> order(L.nthreads);
    for (unsigned long long k = 0; k < L.nblocks; ++k) {
        setup_block(k);
        for (unsigned i = 0; i < L.nthreads; ++i) {
            Fiber* f = fibers[i];
            set_thread(f->ts, i);
            f->ts.fiber = f;
            f->done = false;
            f->wait_addr = nullptr;
            getcontext(&f->ctx);
            f->ctx.uc_stack.ss_sp = f->stack;
            f->ctx.uc_stack.ss_size = f->stack_bytes;
            f->ctx.uc_link = &sched_ctx;
            uintptr_t p = reinterpret_cast<uintptr_t>(f);
            makecontext(&f->ctx, reinterpret_cast<void (*)()>(fiber_entry), 2,
                        unsigned(p >> 32), unsigned(p & 0xffffffffu));
        }
        for (unsigned i = 0; i < L.nthreads; ++i)
            order[i] = L.schedule == 1 ? L.nthreads - 1 - i : i;
        if (L.schedule == 2) std::shuffle(order.begin(), order.end(), rng);
        unsigned remaining = L.nthreads, pos = 0;
        while (remaining) {
            bool ran = false;
            for (unsigned j = 0; j < L.nthreads; ++j) {
                unsigned slot = (pos + j) % L.nthreads;
                Fiber* f = fibers[order[slot]];
                if (f->done) continue;
                if (f->wait_addr && f->wait_addr->load(std::memory_order_acquire) == f->wait_val &&
                    !ctl.abort.load(std::memory_order_relaxed))
                    continue;
                f->wait_addr = nullptr;
                running = f;
                cur = &f->ts;
                swapcontext(&sched_ctx, &f->ctx);
                running = nullptr;
                cur = nullptr;
                if (f->done) --remaining;
                pos = slot + 1;
                ran = true;
                break;
            }
            if (!ran) {
                record_error("deadlock: every live thread of block (%u,%u,%u) waits at a barrier "
                             "that cannot complete (a __syncthreads or warp intrinsic not reached "
                             "by all threads/lanes it names)",
                             g.block_idx.x, g.block_idx.y, g.block_idx.z);
                ctl.abort.store(1);
            }
        }
    }
}

// ----- launch entry ---------------------------------------------------------
struct LaunchConfig {
    unsigned grid[3];
    unsigned block[3];
    unsigned long long shared_bytes;
    int mode;
    int schedule;
    unsigned long long seed;
    const unsigned long long* shared_ranges;  // static __shared__ variables: (address, bytes)
    unsigned long long n_shared_ranges;
};

inline int run_grid(void (*thunk)(void*), void* closure, const LaunchConfig& cfg, char* err,
                    unsigned long long errlen) {
    ctl.err.clear();
    ctl.abort.store(0);
    ctl.mode = cfg.mode;
    g.grid = dim3(cfg.grid[0], cfg.grid[1], cfg.grid[2]);
    g.block = dim3(cfg.block[0], cfg.block[1], cfg.block[2]);
    L.thunk = thunk;
    L.closure = closure;
    L.nthreads = cfg.block[0] * cfg.block[1] * cfg.block[2];
    L.nwarps = (L.nthreads + 31) / 32;
    L.nblocks = (unsigned long long)cfg.grid[0] * cfg.grid[1] * cfg.grid[2];
    L.schedule = cfg.schedule;
    L.seed = cfg.seed;
    L.shared_ranges = cfg.shared_ranges;
    L.n_shared_ranges = cfg.n_shared_ranges;
    if (L.nblocks == 0 || L.nthreads == 0) return 0;
    L.order.resize(L.nblocks);
    for (unsigned long long i = 0; i < L.nblocks; ++i) L.order[i] = i;
    std::mt19937_64 rng(cfg.seed);
    std::shuffle(L.order.begin(), L.order.end(), rng);
    // dynamic shared memory between two redzones
    L.dyn_bytes = cfg.shared_bytes;
    dyn_storage.assign(cfg.shared_bytes + 2 * kRedzone + 128, 0xff);
    uintptr_t base = reinterpret_cast<uintptr_t>(dyn_storage.data()) + kRedzone;
    base = (base + 127) & ~uintptr_t(127);
    L.dyn = cfg.shared_bytes ? reinterpret_cast<unsigned char*>(base) : nullptr;
    auto& ws = warp_pool;
    while (ws.size() < L.nwarps) ws.push_back(new Warp());
    blk.warps.assign(ws.begin(), ws.begin() + L.nwarps);
    blk.nthreads = L.nthreads;

    if (cfg.mode == MODE_COOPERATIVE) run_cooperative_mode();
    else run_threads_mode();

    if (L.dyn_bytes) {
        unsigned char* lo = L.dyn - kRedzone;
        unsigned char* hi = L.dyn + L.dyn_bytes;
        for (size_t i = 0; i < kRedzone; ++i) {
            if (lo[i] != 0xff || hi[i] != 0xff) {
                record_error("out-of-bounds write to dynamic shared memory (%llu bytes requested)",
                             (unsigned long long)L.dyn_bytes);
                break;
            }
        }
    }
    std::lock_guard<std::mutex> lk(ctl.err_mu);
    if (ctl.err.empty()) return 0;
    std::snprintf(err, errlen, "%s", ctl.err.c_str());
    return 1;
}

// Kernel parameter description exported to Python: size, kind, pointee size,
// pointee kind. Kinds: 'i' signed, 'u' unsigned, 'f' float, 'h' __half,
// 'b' __nv_bfloat16, 'p' pointer, 'v' void, 'B' bool, 'o' other.
template <class T>
constexpr int kind_of() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_void_v<U>) return 'v';
    else if constexpr (std::is_same_v<U, bool>) return 'B';
    else if constexpr (std::is_pointer_v<U>) return 'p';
    else if constexpr (std::is_same_v<U, __half>) return 'h';
    else if constexpr (std::is_same_v<U, __nv_bfloat16>) return 'b';
    else if constexpr (std::is_floating_point_v<U>) return 'f';
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>) return 'i';
    else if constexpr (std::is_integral_v<U>) return 'u';
    else return 'o';
}
template <class T>
constexpr int size_of() {
    if constexpr (std::is_void_v<std::remove_cv_t<T>>) return 0;
    else return int(sizeof(T));
}
template <class P>
inline void describe_param(int* out) {
    using T = std::decay_t<P>;
    out[0] = int(sizeof(T));
    out[1] = kind_of<T>();
    if constexpr (std::is_pointer_v<T>) {
        using E = std::remove_pointer_t<T>;
        out[2] = size_of<E>();
        out[3] = kind_of<E>();
    } else {
        out[2] = 0;
        out[3] = 0;
    }
}

template <class... P>
struct KernelInfo {
    static int count() { return int(sizeof...(P)); }
    static void describe(int* out) {
        int i = 0;
        ((describe_param<P>(out + 4 * i), ++i), ...);
    }
};
template <class... P>
inline KernelInfo<P...> info_of(void (*)(P...)) { return {}; }

template <class... P, size_t... I>
inline int launch_impl(void (*fn)(P...), void** args, const LaunchConfig& cfg, char* err,
                       unsigned long long errlen, std::index_sequence<I...>) {
    std::tuple<std::decay_t<P>...> params{*static_cast<std::decay_t<P>*>(args[I])...};
    struct Closure {
        void (*fn)(P...);
        std::tuple<std::decay_t<P>...>* params;
    } closure{fn, &params};
    auto thunk = [](void* c) {
        auto* cl = static_cast<Closure*>(c);
        cl->fn(std::get<I>(*cl->params)...);
    };
    return run_grid(thunk, &closure, cfg, err, errlen);
}
template <class... P>
inline int launch(void (*fn)(P...), void** args, const LaunchConfig& cfg, char* err,
                  unsigned long long errlen) {
    return launch_impl(fn, args, cfg, err, errlen, std::index_sequence_for<P...>{});
}

}  // namespace csc_emu

// ---------------------------------------------------------------------------
// sm_80 instructions behind raw_kernels/csc_mma.cuh: mma.sync (m16n8k16 f16 /
// bf16, m16n8k8 tf32, fp32 accumulation), ldmatrix (x1 / x2 / x4, .trans),
// cp.async (4 / 8 / 16 bytes, zero fill, commit / wait groups), cvt.rna.tf32.
//
// The thread-to-element layouts are those of the PTX ISA ("Matrix Fragments
// for mma.m16n8k16 with floating point type", "... mma.m16n8k8", "ldmatrix"),
// written out below once; tests/test_emulator.py checks them element by
// element against the ISA's tables written out independently.
//
// cp.async model: a copy reads its source when issued, fills its destination
// with 0xff bytes at once (the contents are undefined until the wait) and
// writes the data only when the issuing thread's cp.async.wait_group /
// wait_all retires its group. So a missing wait reads NaN / -1, and a missing
// barrier (another thread's copy, or a stage overwritten while still read)
// shows up too, deterministically in cooperative mode. Copies still in flight
// when a thread exits never land.
// ---------------------------------------------------------------------------
namespace csc_emu {
namespace ptx {

enum Kind { kHalf = 0, kBfloat16 = 1 };

// ISA fragment layouts: (row, column) of element i held by `lane`.
// m16n8k16, 16-bit A (16 x 16): a0..a7
inline void a16_pos(int i, int lane, int& row, int& col) {
    int g = lane >> 2, t = lane & 3;
    row = g + 8 * ((i >> 1) & 1);
    col = 2 * t + (i & 1) + 8 * (i >> 2);
}
// m16n8k16, 16-bit B (16 x 8): b0..b3
inline void b16_pos(int i, int lane, int& row, int& col) {
    int g = lane >> 2, t = lane & 3;
    row = 2 * t + (i & 1) + 8 * (i >> 1);
    col = g;
}
// m16n8k8, tf32 A (16 x 8): a0..a3
inline void a_tf32_pos(int i, int lane, int& row, int& col) {
    int g = lane >> 2, t = lane & 3;
    row = g + 8 * (i & 1);
    col = t + 4 * (i >> 1);
}
// m16n8k8, tf32 B (8 x 8): b0, b1
inline void b_tf32_pos(int i, int lane, int& row, int& col) {
    int g = lane >> 2, t = lane & 3;
    row = t + 4 * i;
    col = g;
}
// C / D (16 x 8) of both shapes: c0..c3
inline void c_pos(int i, int lane, int& row, int& col) {
    int g = lane >> 2, t = lane & 3;
    row = g + 8 * (i >> 1);
    col = 2 * t + (i & 1);
}

[[noreturn]] inline void fail(const char* what) {
    record_error("%s (block (%u,%u,%u), thread (%u,%u,%u))", what, g.block_idx.x, g.block_idx.y,
                 g.block_idx.z, cur->tid.x, cur->tid.y, cur->tid.z);
    ctl.abort.store(1);
    throw KernelAbort{};
}

inline void require_full_warp(const char* what) {
    if (my_warp().alive.load() != 0xffffffffu) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s executed by a warp with fewer than 32 live lanes "
                      "(.aligned warp instructions need the whole warp)", what);
        fail(buf);
    }
}

// True when [p, p + n) lies in the launch's shared memory (dynamic or static).
inline bool in_shared(const void* p, size_t n) {
    auto a = reinterpret_cast<uintptr_t>(p);
    auto d = reinterpret_cast<uintptr_t>(L.dyn);
    if (L.dyn && a >= d && a + n <= d + L.dyn_bytes) return true;
    for (unsigned long long i = 0; i < L.n_shared_ranges; ++i) {
        uintptr_t lo = uintptr_t(L.shared_ranges[2 * i]);
        uintptr_t hi = lo + uintptr_t(L.shared_ranges[2 * i + 1]);
        if (a >= lo && a + n <= hi) return true;
    }
    return false;
}

inline float b16_value(Kind kind, unsigned short bits) {
    return kind == kHalf ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
}
// The tensor cores read only the tf32 bits of a .tf32 operand: the low 13 are ignored.
inline float tf32_value(unsigned bits) { return std::bit_cast<float>(bits & 0xffffe000u); }

inline unsigned cvt_rna_tf32(float x) {
    unsigned bits = std::bit_cast<unsigned>(x);
    if ((bits & 0x7f800000u) == 0x7f800000u)  // inf stays, NaN becomes the canonical NaN
        return (bits & 0x007fffffu) ? 0x7fffffffu : bits;
    return (bits + 0x1000u) & 0xffffe000u;     // round the magnitude, ties away from zero
}

// Gather A (M x K) and B (K x 8) of the whole warp through its exchange buffer,
// then each lane computes its four D elements: d += sum over k in increasing order.
template <int K, class LoadA, class LoadB>
inline void mma_exchange(float (&d)[4], int n_a, LoadA load_a, int n_b, LoadB load_b) {
    Warp& w = my_warp();
    int lane = int(cur->lane);
    uint32_t g0 = w.main.bar.generation();
    float* a = w.mma[g0 & 1];        // A at [row * K + col]
    float* b = a + 256;              // B at [row * 8 + col]
    for (int i = 0; i < n_a; ++i) {
        int row, col;
        float v = load_a(i, lane, row, col);
        a[row * K + col] = v;
    }
    for (int i = 0; i < n_b; ++i) {
        int row, col;
        float v = load_b(i, lane, row, col);
        b[row * 8 + col] = v;
    }
    w.main.bar.arrive_and_wait(g0);
    for (int i = 0; i < 4; ++i) {
        int row, col;
        c_pos(i, lane, row, col);
        float s = 0.f;
        for (int k = 0; k < K; ++k) s += a[row * K + k] * b[k * 8 + col];
        d[i] += s;
    }
}

inline void mma_m16n8k16(Kind kind, float (&d)[4], const unsigned (&ra)[4],
                         const unsigned (&rb)[2]) {
    require_full_warp("mma.sync.m16n8k16");
    mma_exchange<16>(
        d, 8,
        [&](int i, int lane, int& row, int& col) {
            a16_pos(i, lane, row, col);
            return b16_value(kind, (unsigned short)(ra[i >> 1] >> (16 * (i & 1))));
        },
        4,
        [&](int i, int lane, int& row, int& col) {
            b16_pos(i, lane, row, col);
            return b16_value(kind, (unsigned short)(rb[i >> 1] >> (16 * (i & 1))));
        });
}

inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&ra)[4], const unsigned (&rb)[2]) {
    require_full_warp("mma.sync.m16n8k8.tf32");
    mma_exchange<8>(
        d, 4,
        [&](int i, int lane, int& row, int& col) {
            a_tf32_pos(i, lane, row, col);
            return tf32_value(ra[i]);
        },
        2,
        [&](int i, int lane, int& row, int& col) {
            b_tf32_pos(i, lane, row, col);
            return tf32_value(rb[i]);
        });
}

// ldmatrix.m8n8.x{num}[.trans].b16 with this lane's row address `row`.
template <int NUM>
inline void ldmatrix(int num, bool trans, unsigned (&r)[NUM], const void* row) {
    static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix loads 1, 2 or 4 matrices");
    if (num != NUM) fail("ldmatrix: register count and .num disagree");
    require_full_warp("ldmatrix");
    const int lane = int(cur->lane);
    warp_exchange(0xffffffffu, uint64_t(reinterpret_cast<uintptr_t>(row)),
                  [&](const uint64_t* addr, const uint32_t*, uint32_t) {
        for (int j = 0; j < num; ++j) {
            for (int r8 = 0; r8 < 8; ++r8) {  // every row address of matrix j is checked
                const void* p = reinterpret_cast<const void*>(uintptr_t(addr[8 * j + r8]));
                if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
                    fail("ldmatrix: a row address is not 16-byte aligned");
                if (!in_shared(p, 16))
                    fail("ldmatrix: a row address is outside the block's shared memory");
            }
            unsigned value = 0;
            for (int h = 0; h < 2; ++h) {
                int mrow = trans ? 2 * (lane & 3) + h : lane >> 2;
                int mcol = trans ? lane >> 2 : 2 * (lane & 3) + h;
                const unsigned char* p =
                    reinterpret_cast<const unsigned char*>(uintptr_t(addr[8 * j + mrow]));
                unsigned short bits;
                std::memcpy(&bits, p + 2 * mcol, 2);
                value |= unsigned(bits) << (16 * h);
            }
            r[j] = value;
        }
        return 0;
    });
}

inline void cp_async(void* dst, const void* src, int cp_size, int src_size) {
    if (cp_size != 4 && cp_size != 8 && cp_size != 16) fail("cp.async: cp-size must be 4, 8 or 16");
    if (src_size < 0 || src_size > cp_size) fail("cp.async: src-size must be in [0, cp-size]");
    if (reinterpret_cast<uintptr_t>(dst) % unsigned(cp_size) != 0)
        fail("cp.async: the shared destination is not aligned to the copy size");
    if (src_size > 0 && reinterpret_cast<uintptr_t>(src) % unsigned(cp_size) != 0)
        fail("cp.async: the global source is not aligned to the copy size");
    if (!in_shared(dst, size_t(cp_size)))
        fail("cp.async: the destination is outside the block's shared memory");
    PendingCopy pc;
    pc.dst = static_cast<unsigned char*>(dst);
    pc.group = cur->async_committed;
    pc.bytes = cp_size;
    std::memset(pc.data, 0, sizeof pc.data);
    if (src_size > 0) std::memcpy(pc.data, src, size_t(src_size));
    std::memset(dst, 0xff, size_t(cp_size));  // undefined until waited for
    cur->async_pending.push_back(pc);
}

inline void cp_async_commit() { ++cur->async_committed; }

// Land every copy of a group older than the `n` most recent committed groups.
inline void cp_async_wait(int n) {
    auto& pending = cur->async_pending;
    const unsigned long long committed = cur->async_committed;
    const unsigned long long limit = committed > (unsigned long long)n ? committed - n : 0;
    size_t kept = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
        if (pending[i].group < limit) std::memcpy(pending[i].dst, pending[i].data,
                                                  size_t(pending[i].bytes));
        else pending[kept++] = pending[i];
    }
    pending.resize(kept);
}

inline void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait(0);
}

}  // namespace ptx
}  // namespace csc_emu

#endif  // CSC_EMULATOR_SHIM
