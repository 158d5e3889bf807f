// The kernel thread pool: persistent workers that spin on a generation counter for up to SPIN_NS, then sleep on a
// condition variable. dl_parallel_for splits [0, n) into up to CHUNKS_PER_THREAD contiguous chunks per
// thread, so chunk boundaries depend only on (n, grain, threads), and the caller and the workers claim
// chunks from a shared counter until none are left; the call returns when every chunk is done. Claiming
// rather than one fixed chunk per thread means a worker that wakes late (or is descheduled on a busy
// machine before it starts) delays nothing: the others take its chunks, and the caller does not wait for
// it to check in. One caller owns the pool at a time; a concurrent caller (another Swift thread, a nested
// call) runs its loop serially on its own thread instead, which gives the same results because every
// kernel's arithmetic is independent of how its range is split.
#include "ckernels.h"
#include "simd.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
static inline void dl_spin_pause(void) { _mm_pause(); }
#else
static inline void dl_spin_pause(void) {}
#endif

#define MAX_THREADS 64
// An idle worker spins for SPIN_NS before it sleeps on the condition variable (DLORA_SPIN_US in the environment
// sets it, 0-1000000 µs, for side-by-side measurements), reading the clock and yielding its core every SPIN_CHECK
// spins. Sleeping costs the next job a wake-up (10-30 µs on the 2-core VM), so the spin must outlast the gaps inside a
// step: the serial Swift work between two products, a chunk's worth of imbalance at a product's end. 20,000 plain
// spins, the earlier rule, lasted 5.5 µs there, and the worker slept before 9 % of the mixed-adapter LoRA calls. The
// yield matters on a busy machine: a 100 µs spin that never yields took the core from the caller when the two shared
// it, 10-18 % off decode beside a CPU hog (docs/design/core-engine.md).
#define SPIN_NS 100000
#define SPIN_CHECK 64
// Chunks per thread of a dl_parallel_for (DLORA_POOL_CHUNKS in the environment sets it, 1-64, for side-by-side
// measurements). Two, not four: each chunk is a claim on a shared cache line and a kernel's setup, and with the workers
// spinning through a step's gaps (SPIN_NS) a late worker is rare. Side by side on the 2-core EPYC VM (six rounds, 4 → 2):
// batch-1 decode 277.9 → 299.6 tok/s, batch 8 846.0 → 870.7, prefill 1660 → 1732 (docs/design/core-engine.md).
static int CHUNKS_PER_THREAD = 2;

typedef struct {
    dl_range_fn fn;
    void *ctx;
    int64_t n, chunk;
    int simd_limit; // the caller's dl_simd_thread_limit, which its chunks run under on every thread
    int avxvnni_limit; // and its dl_avxvnni_thread_limit
} job_t;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER; // guards (re)configuration and sleeping
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_THREADS];
static int n_threads = 0;          // including the caller
static int n_started = 0;          // worker threads alive
static _Atomic uint64_t generation = 0;
// The current job's chunks: the claim word packs (chunk count << 32 | next unclaimed index); a thread
// owns a chunk once its compare-and-swap advances the index, and `done` counts finished chunks. A job's
// fields are written before its claim word is published (release), and a claim reads them after its
// compare-and-swap (acquire); a job cannot end, and the next one overwrite them, while a claimed chunk
// is still running.
static _Atomic uint64_t claim = 0;
static _Atomic int64_t done = 0;
static _Atomic int stop_workers = 0;
static job_t current;
static uint64_t created_generation;  // the generation workers start from (set before they are created)
static _Atomic int busy = 0;       // 1 while a caller owns the pool (a job or a reconfiguration)
static _Thread_local int inside_task = 0;

static int try_acquire(void) {
    int expected = 0;
    return atomic_compare_exchange_strong(&busy, &expected, 1);
}

static void acquire(void) {
    while (!try_acquire()) sched_yield();
}

static void release(void) { atomic_store_explicit(&busy, 0, memory_order_release); }

// Claims and runs chunks of the current job until none are left unclaimed.
static void run_chunks(void) {
    uint64_t v = atomic_load_explicit(&claim, memory_order_acquire);
    for (;;) {
        if ((v & 0xffffffffu) >= (v >> 32)) return;
        if (!atomic_compare_exchange_weak_explicit(&claim, &v, v + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        int64_t begin = (int64_t)(v & 0xffffffffu) * current.chunk;
        int64_t end = begin + current.chunk;
        if (end > current.n) end = current.n;
        int own_limit = dl_simd_thread_limit, own_vnni = dl_avxvnni_thread_limit;
        dl_simd_thread_limit = current.simd_limit;
        dl_avxvnni_thread_limit = current.avxvnni_limit;
        inside_task = 1;
        current.fn(current.ctx, begin, end);
        inside_task = 0;
        dl_simd_thread_limit = own_limit;
        dl_avxvnni_thread_limit = own_vnni;
        atomic_fetch_add_explicit(&done, 1, memory_order_release);
        v = atomic_load_explicit(&claim, memory_order_acquire);
    }
}

static int64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

// How long an idle worker spins before it sleeps (set at load, before any worker starts).
static int64_t spin_ns = SPIN_NS;

static void *worker_main(void *arg) {
    (void)arg;
    // Not atomic_load(&generation): a worker that starts late must still see the first job as new.
    uint64_t seen = created_generation;
    for (;;) {
        int64_t spins = 0, since = 0;
        while (atomic_load_explicit(&generation, memory_order_acquire) == seen) {
            if (atomic_load(&stop_workers)) return NULL;
            dl_spin_pause();
            if ((++spins & (SPIN_CHECK - 1)) != 0) continue;
            sched_yield();  // every SPIN_CHECK spins: a thread waiting for this core (the caller, on a busy machine) runs
            const int64_t t = monotonic_ns();
            if (since == 0) { since = t; continue; }
            if (t - since < spin_ns) continue;
            pthread_mutex_lock(&pool_lock);
            while (atomic_load(&generation) == seen && !atomic_load(&stop_workers)) pthread_cond_wait(&pool_wake, &pool_lock);
            pthread_mutex_unlock(&pool_lock);
            spins = since = 0;
        }
        if (atomic_load(&stop_workers)) return NULL;
        seen = atomic_load(&generation);
        run_chunks();
    }
}

static void stop_pool(void) {
    atomic_store(&stop_workers, 1);
    pthread_mutex_lock(&pool_lock);
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_lock);
    for (int i = 0; i < n_started; i++) pthread_join(workers[i], NULL);
    n_started = 0;
    atomic_store(&stop_workers, 0);
}

// Environment variable `name` as a decimal integer in [lo, hi] into *out; anything else leaves *out as it is.
static void env_integer(const char *name, long lo, long hi, long *out) {
    const char *s = getenv(name);
    if (!s) return;
    char *end;
    const long v = strtol(s, &end, 10);
    if (end != s && *end == '\0' && v >= lo && v <= hi) *out = v;
}

// The pool's switches for side-by-side measurements, read once at load (as ops.c reads DLORA_SIMD_LIMIT), before any
// worker starts.
__attribute__((constructor)) static void pool_switches_from_environment(void) {
    long us = SPIN_NS / 1000, chunks = CHUNKS_PER_THREAD;
    env_integer("DLORA_SPIN_US", 0, 1000000, &us);
    env_integer("DLORA_POOL_CHUNKS", 1, 64, &chunks);
    spin_ns = (int64_t)us * 1000;
    CHUNKS_PER_THREAD = (int)chunks;
}

static void start_pool(int n) {
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    n_threads = n;
    created_generation = atomic_load(&generation);
    for (int i = 1; i < n; i++) {
        if (pthread_create(&workers[n_started], NULL, worker_main, (void *)(intptr_t)i) != 0) break;
        n_started++;
    }
    n_threads = n_started + 1;
}

static void ensure_pool(void) {
    if (n_threads == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        start_pool(cpus > 0 ? (int)cpus : 1);
    }
}

void dl_set_num_threads(int n) {
    if (n < 1) n = 1;
    acquire();
    if (n_threads != n) {
        if (n_started > 0) stop_pool();
        start_pool(n);
    }
    release();
}

int dl_num_threads(void) {
    if (n_threads == 0) {
        acquire();
        ensure_pool();
        release();
    }
    return n_threads;
}

void dl_parallel_for(int64_t n, int64_t grain, dl_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (inside_task || !try_acquire()) { // nested or concurrent calls run serially
        fn(ctx, 0, n);
        return;
    }
    ensure_pool();
    int64_t parts = (n + grain - 1) / grain;
    if (parts > n_threads) parts = n_threads;
    if (parts <= 1 || n_started == 0) {
        fn(ctx, 0, n);
        release();
        return;
    }
    int64_t chunk = (n + (int64_t)n_threads * CHUNKS_PER_THREAD - 1) / ((int64_t)n_threads * CHUNKS_PER_THREAD);
    if (chunk < grain) chunk = grain;
    int64_t chunks = (n + chunk - 1) / chunk;
    current = (job_t){ fn, ctx, n, chunk, dl_simd_thread_limit, dl_avxvnni_thread_limit };
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    atomic_store_explicit(&claim, (uint64_t)chunks << 32, memory_order_release);
    pthread_mutex_lock(&pool_lock);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_lock);
    run_chunks();
    while (atomic_load_explicit(&done, memory_order_acquire) < chunks) { }
    release();
}
