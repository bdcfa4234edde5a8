/* Atomics the SA table needs, as inline functions Cython can call.
 * Endpoint swaps are one release-store of an index; workers read it with an
 * acquire-load, so a worker sees either the old or the new endpoint record,
 * never a torn one (records are immutable once published). */
#ifndef FP_ATOMIC_H
#define FP_ATOMIC_H
#include <stdint.h>
#include <time.h>

static inline int32_t fp_load_acq_i32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store_rel_i32(int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t fp_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fp_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* The highest sequence number an inbound SA accepted (T of its replay window):
 * stored with release after the window's bits were cleared for it, loaded with
 * acquire before the lock-free pre-check reads those bits, so that a thread
 * that sees a new T also sees the bits cleared for it. (Plain moves on x86-64;
 * they only keep the compiler, and weaker CPUs, from reordering.) */
static inline uint64_t fp_load_acq_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store_rel_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t fp_add_fetch_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline void fp_add_u64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

/* Take the next sequence number unless that would pass `limit`: 0 when the
 * counter is exhausted (it then stays at the limit: no number is skipped when
 * the limit is raised, and a 64-bit counter never wraps to 0). */
static inline uint64_t fp_next_seq(uint64_t *p, uint64_t limit) {
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    do {
        if (cur >= limit) return 0;
    } while (!__atomic_compare_exchange_n(p, &cur, cur + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return cur + 1;
}

/* Take up to `want` consecutive numbers at once (one atomic per SA per
 * batch instead of one per packet): the first of them, with *got how many
 * (fewer than wanted near the limit); 0 when the counter is exhausted. */
static inline uint64_t fp_next_seqs(uint64_t *p, uint64_t limit, uint64_t want, uint64_t *got) {
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED), n;
    do {
        if (cur >= limit) { *got = 0; return 0; }
        n = limit - cur < want ? limit - cur : want;
    } while (!__atomic_compare_exchange_n(p, &cur, cur + n, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    *got = n;
    return cur + 1;
}

/* Quiescent-state epochs: odd while a worker is inside a batch. Sequentially
 * consistent so that a writer's pointer store and its later epoch read are
 * ordered against the worker's epoch increment and its pointer loads. */
static inline uint64_t fp_epoch_bump(uint64_t *p) { return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
/* Leaving a batch needs only release order (everything the batch did happens
 * before the even value is seen), and only the owning worker writes its
 * epoch: a plain store on x86 instead of a locked add. Entering keeps the
 * full fence of fp_epoch_bump (its later endpoint loads must not pass it). */
static inline void fp_epoch_leave(uint64_t *p) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}
static inline uint64_t fp_epoch_read(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void fp_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* A tiny spinlock for the per-SA replay window (held for a few instructions). */
static inline void fp_spin_lock(int32_t *l) {
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) __builtin_ia32_pause();
    }
}
static inline void fp_spin_unlock(int32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

static inline void fp_sleep_us(long us) {
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, 0);
}

/* fp_spin_lock() for a thread that may have preempted the lock's holder on
 * the holder's own CPU: the control thread runs SCHED_FIFO one priority above
 * the workers (fastpath.sched), and a worker pinned with --cpu cannot move
 * elsewhere, so a plain spin there would never end. After a short spin this
 * sleeps, which hands the CPU back to the holder. */
static inline void fp_spin_lock_or_sleep(int32_t *l) {
    int spins = 0;
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
            if (++spins < 1024) {
                __builtin_ia32_pause();
            } else {
                fp_sleep_us(20);
                spins = 0;
            }
        }
    }
}
#endif
