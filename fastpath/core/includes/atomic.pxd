from libc.stdint cimport int32_t, uint64_t

cdef extern from "fp_atomic.h" nogil:
    int32_t fp_load_acq_i32(const int32_t *p)
    void fp_store_rel_i32(int32_t *p, int32_t v)
    uint64_t fp_load_u64(const uint64_t *p)
    void fp_store_u64(uint64_t *p, uint64_t v)
    uint64_t fp_add_fetch_u64(uint64_t *p, uint64_t v)
    void fp_add_u64(uint64_t *p, uint64_t v)
    uint64_t fp_next_seq(uint64_t *p, uint64_t limit)
    uint64_t fp_next_seqs(uint64_t *p, uint64_t limit, uint64_t want, uint64_t *got)
    uint64_t fp_epoch_bump(uint64_t *p)
    void fp_epoch_leave(uint64_t *p)
    uint64_t fp_epoch_read(const uint64_t *p)
    void fp_fence()
    void fp_spin_lock(int32_t *l)
    void fp_spin_unlock(int32_t *l)
    void fp_sleep_us(long us)
    void fp_spin_lock_or_sleep(int32_t *l)
