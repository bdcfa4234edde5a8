# Anti-replay (RFC 4303 §3.4.3, App. A) and ESN inference (RFC 4304, RFC 4303
# App. A2.1) over the SA's hot record. pxd-only: inlined into the engine.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from fastpath.core.sad cimport fp_sa, fp_sa_hot
from fastpath.core.includes.atomic cimport (fp_load_u64, fp_store_u64, fp_store_rel_u64,
                                             fp_spin_lock, fp_spin_unlock)


cdef inline uint64_t esn_infer(uint64_t T, uint32_t seq_lo, uint32_t window) noexcept nogil:
    """The 64-bit sequence number of a received low half, given T, the highest
    accepted. 0 (never valid) when it would fall before the SA's first packet."""
    cdef uint32_t W = window if window else <uint32_t>0x80000000
    cdef uint32_t tl = <uint32_t>T
    cdef uint64_t th = T >> 32
    cdef uint32_t bottom = tl - W + 1          # modulo 2^32, as in the RFC
    if tl >= W - 1:
        if seq_lo >= bottom:
            return (th << 32) | seq_lo
        return ((th + 1) << 32) | seq_lo
    if seq_lo >= bottom:
        if th == 0:
            return 0
        return ((th - 1) << 32) | seq_lo
    return (th << 32) | seq_lo


cdef inline bint replay_fresh(const fp_sa *sa, uint64_t T, uint64_t seq) noexcept nogil:
    cdef uint64_t bit
    if seq == 0:
        return False
    if sa.window == 0 or seq > T:
        return True
    if seq + sa.window <= T:
        return False
    bit = seq & (sa.nbits - 1)
    return not ((sa.bitmap[bit >> 6] >> (bit & 63)) & 1)


cdef inline bint replay_commit(const fp_sa *sa, fp_sa_hot *hot, uint64_t seq) noexcept nogil:
    """Re-check under the SA's lock (another worker may have taken the same
    number meanwhile) and record seq. False if it is a replay after all."""
    cdef bint ok
    fp_spin_lock(&hot.lock)
    ok = replay_commit_locked(sa, hot, seq)
    fp_spin_unlock(&hot.lock)
    return ok


cdef inline bint replay_commit_locked(const fp_sa *sa, fp_sa_hot *hot, uint64_t seq) noexcept nogil:
    """replay_commit() for a caller that holds hot.lock (a run of packets of
    one SA takes the lock once)."""
    cdef uint64_t T, x, bit
    T = hot.seq
    if not replay_fresh(sa, T, seq):
        return False
    if seq > T:
        if sa.window:
            if seq - T >= sa.nbits:
                memset(sa.bitmap, 0, sa.nbits // 8)
            else:
                x = T + 1
                while x <= seq:
                    bit = x & (sa.nbits - 1)
                    sa.bitmap[bit >> 6] &= ~((<uint64_t>1) << (bit & 63))
                    x += 1
        fp_store_rel_u64(&hot.seq, seq)     # after the clears: see fp_load_acq_u64
    if sa.window:
        bit = seq & (sa.nbits - 1)
        sa.bitmap[bit >> 6] |= (<uint64_t>1) << (bit & 63)
    return True
