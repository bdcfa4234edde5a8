# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-worker engine: classify -> frame -> crypto -> verdict, one batch
at a time, with the GIL released for the whole batch.

encap(): packets read on the home side, to be tunnelled to mobile nodes.
decap(): packets read on the wire side (ESP, IPv6-in-IPv6, anything else).
The rules are docs/engine-semantics.md; fastpath/ref/engine.py is the
pure-Python twin used as the test oracle.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc, abort
from libc.stdio cimport fprintf, stderr
from libc.string cimport memcpy, memmove, memcmp, memset

from fastpath.core.batch cimport Batch, HEADROOM, TAILROOM, batch_copy
from fastpath.core.esp cimport (fp_job, fp_keys, CryptoWorker, opens_alone, mb_gcm_open,
                                KIND_GCM, KIND_CBC_HMAC,
                                esp_frame_out, esp_frame_gcm, esp_frame_in, esp_ct_len,
                                esp_trailer)
from fastpath.core.sad cimport *
from fastpath.core.replay cimport esn_infer, replay_fresh, replay_commit_locked
from fastpath.core.includes.atomic cimport *
from fastpath.core.includes.fpbytes cimport fp_ld_u64, fp_ld_be32, fp_eq128, fp_copy40, fp_st_be16
from fastpath.core.includes.openssl cimport RAND_bytes
from fastpath.core.includes.bucket cimport fp_bucket_take
from fastpath.core.includes.ipsecmb cimport fp_mb_mgr
from cpython.bytes cimport PyBytes_FromStringAndSize

from fastpath.verdicts import REASON_NAMES, Verdict

# big-endian loads and stores of header fields (includes/fp_bytes.h)
from fastpath.core.includes.fpbytes cimport (fp_ld_be16 as rd16, fp_ld_be32 as rd32,
                                             fp_st_be16 as wr16)

cdef inline bint ipv6_in_slot(const uint8_t *p, int32_t off, int32_t n, int64_t lim) noexcept nogil:
    """The slot's offset and length (numpy arrays Python can write: never
    trusted) stay inside the slot, and p is an IPv6 header whose payload
    length matches n. p is only read once the bounds hold."""
    return (off >= HEADROOM and n >= 40 and <int64_t>off + n <= lim
            and (p[0] >> 4) == 6 and 40 + <int32_t>rd16(p + 4) == n)


cdef inline uint32_t csum_add(uint32_t sum, const uint8_t *p, int32_t n) noexcept nogil:
    cdef int32_t k = 0
    while k + 1 < n:
        sum += (<uint32_t>p[k] << 8) | p[k + 1]
        k += 2
    if k < n:
        sum += <uint32_t>p[k] << 8
    return sum


cdef inline uint16_t csum_fold(uint32_t sum) noexcept nogil:
    while sum >> 16:
        sum = (sum & 0xffff) + (sum >> 16)
    return <uint16_t>(~sum & 0xffff)


cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)


cdef inline int32_t run_of(fp_out_state *st, int32_t s) noexcept nogil:
    """SA s's reservation run in this batch, begun (with the endpoint just
    read, st.e) at its first packet, found through st.index. Its slot is
    taken from the product's top bits: SA indices that share their low bits
    do not share a slot, and which ones do cannot be known from outside (a
    sender choosing destinations could otherwise line them up in one probe
    chain)."""
    cdef fp_run_index *x = st.index
    cdef uint32_t i = (<uint32_t>s * x.mul) >> x.shift
    cdef int32_t r
    cdef fp_seq_run *rn
    while True:
        r = x.slot[i]
        if r < 0:
            break
        if st.runs[r].sa == s:
            return r
        i = (i + 1) & x.mask
    r = st.nruns
    st.nruns += 1
    x.slot[i] = r
    rn = &st.runs[r]
    rn.sa = s
    rn.ep = st.e
    rn.want = 0
    rn.at = i
    return r


cdef fp_job *_jobs_alloc(int n) noexcept nogil:
    """A zeroed job array on cache-line boundaries (a job is three lines)."""
    cdef size_t sz = ((<size_t>(n if n > 0 else 1) * sizeof(fp_job)) + 63) & ~(<size_t>63)
    cdef void *p = aligned_alloc(64, sz)
    if p != NULL:
        memset(p, 0, sz)
    return <fp_job *>p


cdef inline bint ipv6_ok(const uint8_t *p, int32_t n) noexcept nogil:
    """A whole IPv6 packet: version 6 and payload length matching."""
    return n >= 40 and (p[0] >> 4) == 6 and 40 + <int32_t>rd16(p + 4) == n


cdef inline bint is_mh_type(const uint8_t *p, int32_t n, uint8_t mh_type) noexcept nogil:
    """Inner packet is a Mobility Header of this type, found through the chain
    (Home Test, 3, at the HA; Home Test Init, 1, at the MN: they take the
    return-routability SA)."""
    cdef int32_t off = 40
    cdef uint8_t nh = p[6]
    cdef int i
    for i in range(MAX_EXT_HEADERS + 1):     # up to 8 extension headers, then the MH
        if nh == 135:
            return off + 3 <= n and p[off + 2] == mh_type
        if nh != 0 and nh != 43 and nh != 60:
            return False
        if off + 2 > n:
            return False
        nh = p[off]
        off += (<int32_t>p[off + 1] + 1) * 8
    return False


# Traffic class across the tunnel (RFC 4301 §5.1.2.1, RFC 6040 normal mode).
# Encapsulation copies the inner traffic class, DSCP and ECN field, into the
# outer header (the flow label stays 0). Decapsulation keeps the inner one,
# except that congestion marked on the way (outer CE) is passed on: an
# ECN-capable inner packet becomes CE, a not-ECN-capable one is dropped.
cdef inline void set_outer_tc(uint8_t *outer, const uint8_t *inner) noexcept nogil:
    outer[0] = 0x60 | (inner[0] & 0x0F)
    outer[1] = inner[1] & 0xF0


cdef inline bint ecn_decap(const uint8_t *outer, uint8_t *inner) noexcept nogil:
    """False: drop (outer CE, inner Not-ECT)."""
    if (outer[1] & 0x30) != 0x30:
        return True
    if (inner[1] & 0x30) == 0:
        return False
    inner[1] |= 0x30
    return True


cdef enum:
    # _finish_in lets an SA's replay lock go after this many packets (and
    # takes it again), and _decap_gcm_run ends its run: both hold it while
    # the packets are decrypted
    LOCK_HOLD_MAX = 64


# Inbound tunnel SA selectors for return routability (RFC 3776 §4.2), one
# rule per SA (worked out once per run of packets of one SA): the RR SA takes
# only HoTI (HoT at the MN); a payload SA does not take it when its node has
# an RR SA; otherwise there is nothing to check.
cdef enum:
    RR_NONE = 0
    RR_ONLY = 1
    RR_NEVER = 2


cdef inline int rr_rule_of(fp_sad *t, fp_sa *sa) noexcept nogil:
    if sa.purpose == PURPOSE_RR:
        return RR_ONLY
    if t.mns[sa.mn].sa[PURPOSE_RR][DIR_IN] >= 0:
        return RR_NEVER
    return RR_NONE


cdef int replay_or(const fp_sa *sa, const fp_sa_hot *hot, uint64_t seq,
                   int reason) noexcept nogil:
    """open_reason()'s drops: R_REPLAY when an earlier packet has taken seq
    meanwhile, else reason."""
    return reason if replay_fresh(sa, hot.seq, seq) else R_REPLAY


cdef inline int open_reason(fp_job *j, fp_sa *sa, fp_sa_hot *hot, int32_t *plen,
                            uint8_t *nxt) noexcept nogil:
    """The checks of an opened job, any mode, in packet order under the SA's
    lock: ICV, padding, replay window commit, dummy packet. R_NONE (the
    payload length in *plen, its next header in *nxt) or the reason to drop
    it. A packet whose sequence number an earlier packet of the batch has
    taken meanwhile is a replay, whatever else is wrong with it (RFC 4303
    §3.4.3 checks the window before the ICV). The checks return a reason
    and the callers record it, in one place: with a _verdict() call at each
    check, the compiler inlined none of them (about 3 ns a packet more at
    64 bytes, measured)."""
    if not j.ok:
        return replay_or(sa, hot, j.seq, R_ICV)
    plen[0] = esp_trailer(j, nxt)
    if plen[0] < 0:
        return replay_or(sa, hot, j.seq, R_BAD_PADDING)
    if not replay_commit_locked(sa, hot, j.seq):
        return R_REPLAY
    if nxt[0] == 59:
        return R_DUMMY
    return R_NONE


cdef inline int tunnel_reason(fp_job *j, int32_t plen, uint8_t nxt, uint64_t hi, uint64_t lo,
                              int hoa_at, int rr_rule, uint8_t rr_type) noexcept nogil:
    """The inner packet of a tunnel-mode job that passed open_reason() (hi,
    lo: the SA's HoA, at offset hoa_at of the inner packet): R_NONE when it
    goes home, or the reason to drop it."""
    if nxt != 41 or not ipv6_ok(j.ct, plen):
        return R_MALFORMED
    # RFC 4301 inbound selector: HA: from the HoA; MN: to the HoA.
    if not fp_eq128(j.ct + hoa_at, hi, lo):
        return R_POLICY
    # RFC 3776 §4.2: the return-routability SA carries Home Test Init (HoT
    # at the MN) and nothing else; where a node has one, that message may
    # not come on its payload SA.
    if rr_rule and is_mh_type(j.ct, plen, rr_type) != (rr_rule == RR_ONLY):
        return R_POLICY
    if not ecn_decap(j.esp - j.esp_off, j.ct):
        return R_CONGESTION
    return R_NONE


cdef inline void unlock_and_count(fp_sa_hot *hot, uint64_t pk, uint64_t by) noexcept nogil:
    """End of a run of one SA's inbound packets: let its lock go, then add
    what the run accepted to its counters (one atomic add each)."""
    fp_spin_unlock(&hot.lock)
    if pk:
        fp_add_u64(&hot.packets, pk)
        fp_add_u64(&hot.bytes, by)

cdef bint no_error_about(const uint8_t *p, int32_t n) noexcept nogil:
    """RFC 4443 §2.4 (e): no ICMPv6 error about an ICMPv6 error (found
    behind hop-by-hop, routing and destination-options headers, a first
    fragment's header and the routing and destination-options headers after
    it too), nor to a source that names no single node (::,
    multicast). A chain that cannot be followed gets no error either. The
    reference: fastpath.ref.engine._no_error_about."""
    cdef int32_t off = 40, size, k
    cdef uint8_t nh = p[6]
    cdef bint frag = False
    if p[8] == 0xFF:
        return True
    for k in range(16):
        if p[8 + k] != 0:
            break
    else:
        return True
    # Hop-by-hop, routing and destination-options headers, and one fragment
    # header of offset 0: a first fragment holds the rest of the chain (RFC
    # 7112). Every one of them is at least 8 bytes.
    k = 0
    while nh == 0 or nh == 43 or nh == 60 or nh == 44:
        if k >= 8 or off + 8 > n:           # 8: the engine's limit on extension headers
            return True
        if nh == 0 and frag:
            return True                     # hop-by-hop after it: not a chain to follow
        if nh == 44:
            if frag:
                break
            if ((p[off + 2] << 8) | p[off + 3]) & 0xFFF8:
                return False                # a later fragment: its upper layer is not here
            frag = True
            size = 8
        else:
            size = (p[off + 1] + 1) * 8
            if off + size > n:
                return True
        nh = p[off]
        off += size
        k += 1
    if nh != 58:
        return False
    return off >= n or p[off] < 128


# Next headers that may stand between the IPv6 header and a Tunnel
# Encapsulation Limit: hop-by-hop 0, routing 43, fragment 44, AH 51,
# destination options 60 (one bit each).
cdef uint64_t TEL_CHAIN = ((<uint64_t>1) | (<uint64_t>1 << 43) | (<uint64_t>1 << 44)
                           | (<uint64_t>1 << 51) | (<uint64_t>1 << 60))

cdef inline bint tel_chain(uint8_t nh) noexcept nogil:
    """Whether a header of type `nh` can precede a Tunnel Encapsulation
    Limit: a packet whose first next header is not one has none."""
    return nh < 64 and ((TEL_CHAIN >> nh) & 1)


cdef int32_t tel_offset(const uint8_t *p, int32_t n) noexcept nogil:
    """Where the value of the packet's Tunnel Encapsulation Limit option
    (type 4, length 1; RFC 2473 §4.1.1) is: the first in a destination-
    options header, its extension headers examined left to right - hop-by-
    hop, routing, destination options, AH, and a fragment header of offset
    0 (a later fragment's chain is not here). An option running past its
    header ends that header's options, not the search (as Linux's ip6_tnl
    does). -1 when there is none or the chain runs past its end.
    Reference: fastpath.ref.ipv6.find_tel."""
    cdef int32_t off = 40, end, o
    cdef uint8_t nh = p[6]
    cdef int k = 0
    while tel_chain(nh) and k < MAX_EXT_HEADERS:
        if off + 8 > n:                     # none of these is shorter
            return -1
        if nh == 44:
            if ((p[off + 2] << 8) | p[off + 3]) & 0xFFF8:
                return -1
            end = off + 8
        elif nh == 51:
            end = off + (p[off + 1] + 2) * 4
        else:
            end = off + (p[off + 1] + 1) * 8
        if end > n:
            return -1
        o = off + 2
        while nh == 60 and o < end:
            if p[o] == 0:                   # Pad1
                o += 1
                continue
            if o + 2 > end or o + 2 + p[o + 1] > end:
                break
            if p[o] == 4 and p[o + 1] == 1:
                return o + 2
            o += 2 + p[o + 1]
        nh = p[off]
        off = end
        k += 1
    return -1


cdef inline void frame_outer(uint8_t *outer, const uint8_t *tmpl, const uint8_t *inner,
                             int32_t esp_len) noexcept nogil:
    """The outer IPv6 header of an ESP tunnel packet (RFC 3776 §3.4: HA and
    CoA, no options) from the endpoint's template, before its ESP header."""
    fp_copy40(outer, tmpl)
    set_outer_tc(outer, inner)          # (framing left the inner first bytes as they were)
    fp_st_be16(outer + 4, esp_len)
    outer[6] = 50


cdef int _frame_gcm_run(Batch b, fp_job *jobs, int k, int nj, fp_seq_run *rn, int r,
                        fp_keys *kk, uint32_t spi, const uint8_t *tmpl) noexcept nogil:
    """_frame_out() for jobs[k:] while they belong to reservation run r (an
    AES-GCM SA without ESN, explicit IV = sequence number) and it has
    numbers left; returns the first job it did not frame. The jobs must not
    have been moved (_frame_out's w == k). Headers: 56 bytes, outer 40, ESP
    8 and RFC 4106's 8-byte explicit IV (as esp_frame_gcm() writes them)."""
    cdef int32_t *c_off = b.c_off
    cdef int32_t *c_len = b.c_len
    cdef int32_t *c_sa = b.c_sa
    cdef uint8_t *c_verdict = b.c_verdict
    cdef uint64_t seq = rn.next, end = rn.end, pk = 0, by = 0
    cdef int32_t i, esp_len
    cdef uint8_t *p
    cdef fp_job *j = &jobs[k]
    while k < nj and j.run == r and seq != end:
        i = j.slot
        p = j.ct
        esp_len = esp_frame_gcm(j, kk, p, j.plen, spi, seq, False, 41, NULL)
        frame_outer(p - 56, tmpl, p, esp_len)
        c_off[i] -= 56
        c_len[i] = 40 + esp_len
        c_sa[i] = j.sa
        c_verdict[i] = V_TO_WIRE
        seq += 1
        pk += 1
        by += <uint64_t>j.plen
        k += 1
        j += 1
    rn.next = seq
    rn.pk += pk
    rn.by += by
    return k


# The run loops (_classify_esp_run, Engine._decap_gcm_run) take packets of one
# SA while each is the common case: IPv6 then ESP on that SA (tunnel mode, no
# ESN), no extension header, a length the SA can have, not already seen.
cdef struct run_shape:
    Py_ssize_t ss       # slot size
    int64_t lim         # a packet ends before this offset of its slot (tailroom)
    int32_t ovh         # outer header, ESP header, IV and ICV: all but the ciphertext
    int32_t hin         # outer header, ESP header and IV: where the inner packet starts
    int32_t amask       # the ciphertext's alignment - 1


cdef inline void run_shape_init(run_shape *r, Batch b, const fp_keys *kk) noexcept nogil:
    r.ss = b.slot_size
    r.lim = b.slot_size - TAILROOM
    r.ovh = 48 + kk.iv_len + kk.icv_len
    r.hin = 48 + kk.iv_len
    r.amask = kk.align - 1


cdef inline int32_t run_ct_len(const run_shape *r, const uint8_t *p, int32_t off, int32_t n,
                               uint32_t spi) noexcept nogil:
    """The ciphertext length of packet p (at offset off of its slot, n bytes)
    when it is the common case of a run of the SA with SPI spi, else -1."""
    cdef int32_t ct_len
    if not (ipv6_in_slot(p, off, n, r.lim) and p[6] == 50 and n >= 48
            and fp_ld_be32(p + 40) == spi):
        return -1
    ct_len = n - r.ovh
    if ct_len < 2 or (ct_len & r.amask) != 0:
        return -1
    return ct_len


cdef int _classify_esp_run(Batch b, int i, fp_job *j, int32_t s, fp_sa *sa,
                           fp_sa_hot *hot, uint32_t spi) noexcept nogil:
    """Engine._classify_in() for packets i, i+1, ... while each is the common
    case - IPv6 then ESP on SA s (tunnel mode, no ESN, SPI `spi`), of a
    possible length, not already seen - filling jobs from j; returns how
    many it took. Its few variables stay in registers."""
    cdef int32_t *c_off = b.c_off
    cdef int32_t *c_len = b.c_len
    cdef fp_keys *kk = sa.keys
    cdef run_shape r
    cdef int k = 0, count = b.count
    cdef int32_t n, off, ct_len
    cdef uint8_t *p
    cdef uint64_t seq
    run_shape_init(&r, b, kk)
    while i < count:
        off = c_off[i]
        n = c_len[i]
        p = b.c_data + i * r.ss + off
        ct_len = run_ct_len(&r, p, off, n, spi)
        if ct_len < 0:
            break
        seq = fp_ld_be32(p + 44)
        if not replay_fresh(sa, fp_load_acq_u64(&hot.seq), seq):
            break
        j.slot = i
        j.sa = s                     # tunnel mode: no nh_pos, hoa
        j.esp_off = 40               # (the outer header: ECN, see ecn_decap)
        esp_frame_in(j, kk, p + 40, ct_len, seq, False)
        c_off[i] = off + r.hin       # where the inner packet will start
        i += 1
        j += 1
        k += 1
    return k


cdef class Engine:
    """One worker's engine over a shared SADatabase (attributes: engine.pxd).

    Not thread-safe: give each worker thread its own Engine (own crypto
    contexts, own ipsec-mb manager, own random buffer, own counters).

    lock_sleeps: take the per-SA replay lock with fp_spin_lock_or_sleep(),
    for an engine whose thread may preempt a worker on the worker's CPU (the
    control thread's, which decapsulates reassembled fragments: it runs at a
    higher SCHED_FIFO priority, and a pinned worker holding the lock could
    not run again while it spins)."""
    def __cinit__(self, SADatabase sad not None, str backend="auto", int max_batch=256):
        from fastpath.core.esp import ipsecmb_available
        if backend == "auto":
            backend = "ipsecmb" if (sad.ipsecmb_keys and ipsecmb_available()) else "openssl"
        if backend == "ipsecmb" and not sad.ipsecmb_keys:
            raise RuntimeError("the ipsec-mb backend needs an SADatabase built with ipsecmb=True "
                               "on a build that links intel-ipsec-mb")
        self.worker = -1                 # __dealloc__: no worker slot taken yet
        self.sad = sad
        self.t = &sad.t
        self.backend = backend
        self.crypto = CryptoWorker(sad.t.cap_sas, backend)
        self._per_batch_alloc(max_batch)
        self.rnd = <uint8_t *>malloc(RND_BYTES)
        if self.rnd == NULL:
            raise MemoryError()
        self.rnd_pos = RND_BYTES
        self.icmp_error_rate = 100.0
        self.icmp_error_burst = 100.0
        self.icmp_error_tokens = 100.0
        self.worker = sad.register_worker()

    def __dealloc__(self):
        if self.sad is not None and self.worker >= 0:
            self.sad.unregister_worker(self.worker)
        free(self.jobs)
        free(self.bindings)
        free(self.runs)
        free(self.run_index.slot)
        free(self.rnd)

    cdef int _reserve(self, Batch b) except -1:
        if b.count < 0 or b.count > b.capacity:
            raise ValueError(f"batch count {b.count} outside 0..{b.capacity}")
        if b.capacity > self.max_jobs:      # by capacity: a worker reserves with empty batches
            self._per_batch_alloc(b.capacity)
        return 0

    cdef int _per_batch_alloc(self, int n) except -1:
        """The work arrays for batches of up to n packets: jobs, bindings (the
        ones not yet taken are kept), and encap's reservation runs with their
        SA -> run index (fp_run_index)."""
        cdef uint32_t bits = 1, slots
        cdef uint32_t mul
        cdef fp_job *jobs
        cdef fp_binding_rec *bindings
        cdef fp_seq_run *runs
        cdef int32_t *run_at
        if n < 1 or n > MAX_JOBS:
            raise ValueError(f"batch size {n} outside 1..{MAX_JOBS}")
        while (<uint32_t>1 << bits) < 2 * <uint32_t>n:
            bits += 1
        slots = <uint32_t>1 << bits
        if RAND_bytes(<unsigned char *>&mul, sizeof(mul)) != 1:
            raise RuntimeError("RAND_bytes failed")
        jobs = _jobs_alloc(n)
        bindings = <fp_binding_rec *>calloc(n, sizeof(fp_binding_rec))
        runs = <fp_seq_run *>calloc(n, sizeof(fp_seq_run))
        run_at = <int32_t *>malloc(slots * sizeof(int32_t))
        if jobs == NULL or bindings == NULL or runs == NULL or run_at == NULL:
            free(jobs)
            free(bindings)
            free(runs)
            free(run_at)
            raise MemoryError()
        if self.n_bindings:
            memcpy(bindings, self.bindings, self.n_bindings * sizeof(fp_binding_rec))
        free(self.jobs)
        free(self.bindings)
        free(self.runs)
        free(self.run_index.slot)
        self.jobs = jobs
        self.bindings = bindings
        self.runs = runs
        memset(run_at, 0xFF, slots * sizeof(int32_t))
        self.run_index.slot = run_at
        self.run_index.mask = slots - 1
        self.run_index.mul = mul | 1
        self.run_index.shift = 32 - bits
        self.max_jobs = n
        return 0

    # -- entry points -------------------------------------------------------
    cdef void epoch_enter(self) noexcept nogil:
        """Start of a batch for the grace period: from here until epoch_leave()
        this worker may hold endpoint records read from the SA table."""
        fp_epoch_bump(&self.t.epochs[self.worker].value)

    cdef void epoch_leave(self) noexcept nogil:
        """End of a batch: the worker holds no endpoint any more. A worker
        calls it only once the batch's packets are written, so that no packet
        built before a swap can reach the wire after the Binding Ack."""
        fp_epoch_leave(&self.t.epochs[self.worker].value)

    cdef void run_encap(self, Batch b) noexcept nogil:
        """encap() for a caller without the GIL, inside its own
        epoch_enter()/epoch_leave() (the worker loop). The batch must fit
        (reserve() it once first)."""
        self._encap(b)

    cdef void run_decap(self, Batch b) noexcept nogil:
        self._decap(b)

    def reserve(self, Batch b not None):
        """Size the per-batch work arrays for batches like b (done by encap/decap)."""
        self._reserve(b)

    def encap(self, Batch b not None):
        """Tunnel a batch read on the home side. Sets verdicts in place."""
        self._reserve(b)
        with nogil:
            fp_epoch_bump(&self.t.epochs[self.worker].value)
            self._encap(b)
            fp_epoch_leave(&self.t.epochs[self.worker].value)

    def decap(self, Batch b not None):
        """Open a batch read on the wire side. Sets verdicts in place; BINDING
        verdicts can be taken with take_bindings() until the next decap."""
        self._reserve(b)
        with nogil:
            fp_epoch_bump(&self.t.epochs[self.worker].value)
            self._decap(b)
            fp_epoch_leave(&self.t.epochs[self.worker].value)

    def bench_loop(self, Batch w not None, list sources not None, int iterations,
                   bint run=True, bint decap=False, rot=None, int rot_offset=0):
        """For benchmarks: `iterations` times, restore w from
        sources[k % len(sources)] (what Batch.copy_from does) and, with
        rot (uint8 [R, >= w.capacity, 8]), overwrite the 8 bytes at
        rot_offset of every slot with rot[k % R]; then, with run, process w
        as a worker does - epoch_enter(), run_encap()/run_decap(),
        epoch_leave() - all without the GIL or a Python call per batch.
        run=False times the restoring alone. The caller times the call."""
        cdef Py_ssize_t k, P = len(sources), R = 0, x, rstride = 0
        cdef int i
        cdef const uint8_t *rp = NULL
        cdef void **srcs
        cdef Batch src
        cdef const uint8_t[:, :, ::1] rv
        if P == 0 or iterations < 0:
            raise ValueError("no source batch")
        for src in sources:
            if src is None or src.count > w.capacity or src.count < 0 or src.count > src.capacity:
                raise ValueError("a source batch does not fit")
            self._reserve(src)
        if rot is not None:
            rv = rot
            R = rv.shape[0]
            if R == 0 or rv.shape[1] < w.capacity or rot_offset < 0 or \
                    HEADROOM + rot_offset + 8 > w.slot_size:
                raise ValueError("rot does not fit the batch")
            rp = &rv[0, 0, 0]
            rstride = rv.shape[1] * 8
        srcs = <void **>malloc(P * sizeof(void *))
        if srcs == NULL:
            raise MemoryError()
        for x in range(P):
            srcs[x] = <void *>sources[x]          # the list keeps them alive
        with nogil:
            for k in range(iterations):
                batch_copy(w, <Batch>srcs[k % P])
                if rp != NULL:
                    for i in range(w.count):
                        memcpy(w.c_data + <Py_ssize_t>i * w.slot_size + HEADROOM + rot_offset,
                               rp + (k % R) * rstride + i * 8, 8)
                if run:
                    fp_epoch_bump(&self.t.epochs[self.worker].value)
                    if decap:
                        self._decap(w)
                    else:
                        self._encap(w)
                    fp_epoch_leave(&self.t.epochs[self.worker].value)
        free(srcs)

    def take_bindings(self):
        """The authenticated Mobility Headers of the last decap, as
        [(slot, VerifiedBinding)]. Each is issued once."""
        cdef int i
        cdef fp_binding_rec *r
        out = []
        for i in range(self.n_bindings):
            r = &self.bindings[i]
            out.append((r.slot, issue_binding(self.sad, self.t.sas[r.sa].mn, &self.t.sas[r.sa], r.seq,
                                              r.data, r.length, r.mh_offset)))
        self.n_bindings = 0
        return out

    def counters(self):
        """This worker's totals: drops by reason and packets by verdict."""
        return {
            "drops": {REASON_NAMES[r]: self.drops[r] for r in range(1, N_REASONS)},
            "verdicts": {Verdict(v).name.lower(): self.verdicts[v] for v in range(N_VERDICTS)},
        }

    # -- helpers ------------------------------------------------------------
    cdef void _verdict(self, Batch b, int i, int v, int reason, int32_t sa) noexcept nogil:
        b.c_verdict[i] = v
        b.c_reason[i] = reason
        b.c_sa[i] = sa
        self.verdicts[v] += 1
        if reason:
            self.drops[reason] += 1
            if sa >= 0:
                fp_add_u64(&self.t.drops[sa].n[reason], 1)

    cdef const uint8_t *_iv(self, Batch b, int i) noexcept nogil:
        """A CBC IV: unpredictable, drawn from a bulk RAND_bytes buffer."""
        if self.fixed_ivs:
            return b.c_iv + i * 16
        return self._iv_scratch()

    cdef bint _icmp_error_token(self) noexcept nogil:
        return fp_bucket_take(&self.icmp_error_tokens, &self.icmp_error_last, self.icmp_error_rate, self.icmp_error_burst)

    cdef void _too_big(self, Batch b, int i, uint8_t *p, int32_t n, int32_t s,
                       int32_t inner_mtu) noexcept nogil:
        """The packet does not fit the tunnel: answer its source with an ICMPv6
        Packet Too Big (RFC 2473 §7.1, RFC 4459, RFC 4443 §3.2); never for
        packets of 1280 bytes or less (IPv6's minimum MTU)."""
        if n <= 1280:
            self._verdict(b, i, V_DROP, R_TOO_BIG, s)
            return
        self._icmp_error(b, i, p, n, s, R_TOO_BIG, 2, inner_mtu if inner_mtu > 1280 else 1280)

    cdef void _icmp_error(self, Batch b, int i, uint8_t *p, int32_t n, int32_t s, int reason,
                          uint8_t kind, uint32_t word) noexcept nogil:
        """Refuse the packet under `reason` and answer its source with an
        ICMPv6 error of type `kind`, code 0, `word` after the checksum (RFC
        4443 §2.1), built in place around the packet's own first bytes;
        rate-limited, and never where RFC 4443 §2.4 (e) forbids an error
        (no_error_about): then only a drop."""
        cdef uint8_t *q = p - 48
        cdef int32_t plen = n if n < 1280 - 48 else 1280 - 48
        cdef uint32_t sum
        if no_error_about(p, n) or not self._icmp_error_token():
            self._verdict(b, i, V_DROP, reason, s)
            return
        memset(q, 0, 48)
        q[0] = 0x60
        wr16(q + 4, 8 + plen)
        q[6] = 58
        q[7] = 64
        memcpy(q + 8, <const uint8_t *>self.t.ha if self.t.role == ROLE_HA else p + 8, 16)
        memcpy(q + 24, p + 8, 16)
        q[40] = kind
        q[44] = <uint8_t>(word >> 24)
        q[45] = <uint8_t>(word >> 16)
        q[46] = <uint8_t>(word >> 8)
        q[47] = <uint8_t>word
        sum = csum_add(0, q + 8, 32)    # pseudo-header: addresses, length, next header
        sum += <uint32_t>(8 + plen) + 58
        sum = csum_add(sum, q + 40, 8 + plen)
        wr16(q + 42, csum_fold(sum))
        b.c_off[i] -= 48
        b.c_len[i] = 48 + plen
        self._verdict(b, i, V_TO_HOME, reason, s)

    def seal_mobility(self, hoa, bytes mh not None, peer, bint prefix_discovery=False):
        """A Mobility Header sealed in ESP transport mode on the mobile node's
        binding out SA (RFC 3776 §3.1), as one packet (control plane, not per
        packet); with prefix_discovery, an ICMPv6 message (a Mobile Prefix
        Advertisement, next header 58) on its prefix-discovery out SA (§3.3). Home agent: IPv6(HA -> peer CoA) . RH2(HoA) . ESP . MH (a
        Binding Ack), or IPv6(HA -> HoA) . ESP . MH when the peer is the home
        address itself (a node deregistering from its home link: no routing
        header, RFC 6275 §9.5.4). Mobile node: IPv6(peer = own CoA -> HA) .
        DestOpt(HAO = HoA) . ESP . MH (a Binding Update). Returns None when
        the SA's sequence numbers are exhausted."""
        from fastpath.core.sad import _addr
        cdef bytes h = _addr(hoa, "home address")
        cdef bytes c = _addr(peer, "peer address")
        cdef int32_t m = sad_find_mn(self.t, h)
        cdef int32_t s, esp_len
        cdef fp_sa *sa
        cdef fp_job j
        cdef uint64_t seq
        cdef bytearray buf
        cdef uint8_t *q
        cdef uint8_t *body
        cdef const uint8_t *ivp = NULL
        if m < 0:
            raise KeyError(f"unknown home address")
        s = self.t.mns[m].sa[PURPOSE_PD if prefix_discovery else PURPOSE_BINDING][DIR_OUT]
        if s < 0:
            raise KeyError("this mobile node has no %s out SA"
                           % ("prefix-discovery" if prefix_discovery else "binding"))
        sa = &self.t.sas[s]
        seq = fp_next_seq(&self.t.hot[s].seq, fp_load_u64(&self.t.hot[s].seq_limit))
        if seq == 0:
            fp_add_u64(&self.t.drops[s].n[R_SEQ_EXHAUSTED], 1)
            return None
        buf = bytearray(HEADROOM + 64 + len(mh) + TAILROOM)
        q = <uint8_t *>(<char *>buf)
        body = q + HEADROOM + 64                 # the MH; headers go in front of it
        memcpy(body, <const char *>mh, len(mh))
        if sa.keys.kind == KIND_CBC_HMAC:
            ivp = self._iv_scratch()
        memset(&j, 0, sizeof(fp_job))
        j.sa = s
        esp_len = esp_frame_out(&j, sa.keys, body, len(mh), sa.spi, seq, sa.esn,
                                58 if prefix_discovery else 135, ivp)
        self.crypto.seal(&j, 1)
        if not j.ok:
            raise RuntimeError("ESP seal failed")
        if self.t.role == ROLE_HA and c == h:
            q = j.esp - 40
            memset(q, 0, 40)
            q[0] = 0x60
            wr16(q + 4, esp_len)
            q[6] = 50
            q[7] = 64
            memcpy(q + 8, self.t.ha, 16)
            memcpy(q + 24, <const char *>h, 16)
            fp_add_u64(&self.t.hot[s].packets, 1)
            fp_add_u64(&self.t.hot[s].bytes, <uint64_t>len(mh))
            return PyBytes_FromStringAndSize(<const char *>q, 40 + esp_len)
        q = j.esp - 64
        memset(q, 0, 64)
        q[0] = 0x60
        wr16(q + 4, 24 + esp_len)
        q[7] = 64
        if self.t.role == ROLE_HA:
            q[6] = 43                            # Type 2 Routing Header carrying the HoA
            memcpy(q + 8, self.t.ha, 16)
            memcpy(q + 24, <const char *>c, 16)
            q[40] = 50
            q[41] = 2
            q[42] = 2
            q[43] = 1
            memcpy(q + 48, <const char *>h, 16)
        else:
            q[6] = 60                            # Destination Options with the HAO
            memcpy(q + 8, <const char *>c, 16)
            memcpy(q + 24, self.t.ha, 16)
            q[40] = 50
            q[41] = 2
            q[42] = 1                            # PadN of 4 bytes: the HAO sits at 8n+6
            q[43] = 2
            q[46] = 201
            q[47] = 16
            memcpy(q + 48, <const char *>h, 16)
        fp_add_u64(&self.t.hot[s].packets, 1)
        fp_add_u64(&self.t.hot[s].bytes, <uint64_t>len(mh))
        return PyBytes_FromStringAndSize(<const char *>q, 64 + esp_len)

    cdef const uint8_t *_iv_scratch(self) noexcept nogil:
        """16 unpredictable bytes from the bulk RAND_bytes buffer."""
        cdef int tries = 0
        if self.rnd_pos + 16 > RND_BYTES:
            # A CBC IV must be unpredictable (RFC 3602 §2): without fresh
            # random bytes no CBC packet may leave, so fail closed.
            while RAND_bytes(self.rnd, RND_BYTES) != 1:
                tries += 1
                if tries == 3:
                    fprintf(stderr, b"fastpath: RAND_bytes failed: no unpredictable CBC IVs, stopping\n")
                    abort()
            self.rnd_pos = 0
        self.rnd_pos += 16
        return self.rnd + self.rnd_pos - 16

    # -- outbound -------------------------------------------------------------
    cdef void _encap(self, Batch b) noexcept nogil:
        """Three passes over the batch: classify (lookups, MTU, plain tunnels),
        reserve sequence numbers (one atomic per SA, not per packet), frame and
        seal. Consecutive packets to one mobile node (a run) share its lookup,
        its endpoint read and its SA's parameters; counters are added once per
        SA."""
        cdef fp_out_state st
        cdef fp_seq_run *rn
        cdef uint64_t got
        cdef int r
        st.cached = False
        st.fast = False
        st.cur = -2
        st.run = -1
        st.nruns = 0
        st.nj = 0
        st.runs = self.runs
        st.index = &self.run_index
        # Fail closed: a packet leaves only once it has been framed (ESP,
        # sealed: _count_out drops a job that failed) or tunnelled in the clear.
        memset(b.c_verdict, V_DROP, b.count)
        memset(b.c_reason, R_NONE, b.count)
        # 1. classify
        self._classify_out(b, &st)
        if st.nj == 0:
            return
        # 2. reserve sequence numbers: unique and gap-free across workers
        for r in range(st.nruns):
            rn = &st.runs[r]
            rn.pk = 0
            rn.by = 0
            if rn.want == 0:                     # its packets were all dropped
                rn.next = 0
                rn.end = 0
                continue
            rn.next = fp_next_seqs(&self.t.hot[rn.sa].seq, fp_load_u64(&self.t.hot[rn.sa].seq_limit),
                                   rn.want, &got)
            rn.end = rn.next + got
        # 3. frame (dropping what got no number), seal, count
        self._frame_out(b, &st)

    cdef void _classify_out(self, Batch b, fp_out_state *st) noexcept nogil:
        """Pass 1: one job per packet to seal. The common packet - to the same
        mobile node as the one before, on its payload SA, fitting the MTU -
        takes a few compares; every other goes through _classify_one()."""
        cdef fp_job *jobs = self.jobs
        cdef int32_t *c_off = b.c_off
        cdef int32_t *c_len = b.c_len
        cdef uint8_t *slot = b.c_data
        cdef Py_ssize_t ss = b.slot_size
        cdef int64_t lim = b.slot_size - TAILROOM
        cdef int dst = 24 if self.t.role == ROLE_HA else 8
        cdef int i, r, nj = st.nj
        cdef int32_t n, off
        cdef uint8_t *p
        cdef fp_job *j
        # the fast path's state, in registers; copied back and forth around
        # _classify_one (want: fast packets not yet added to the run)
        cdef bint fast = False
        cdef int32_t fit = 0, s = -1, run = -1
        cdef uint64_t hi = 0, lo = 0
        cdef uint32_t want = 0
        for i in range(b.count):
            # offsets/lengths are numpy arrays Python can write: never trust them.
            off = c_off[i]
            n = c_len[i]
            p = slot + off
            slot += ss
            if not ipv6_in_slot(p, off, n, lim):
                self._verdict(b, i, V_DROP, R_MALFORMED, -1)
                continue
            # HA: tunnel to the mobile node the packet is for; MN: from our HoA.
            if fast and n <= fit and fp_eq128(p + dst, hi, lo) and not tel_chain(p[6]):
                j = &jobs[nj]
                nj += 1
                j.slot = i
                j.sa = s
                j.plen = n
                j.ct = p
                j.run = run
                want += 1
                continue
            if want:
                st.runs[run].want += want
                want = 0
            st.nj = nj
            self._classify_one(b, i, p, n, st)
            nj = st.nj
            fast = st.fast
            fit = st.fit
            s = st.cur
            run = st.run
            hi = st.hi
            lo = st.lo
        if want:
            st.runs[run].want += want
        st.nj = nj
        for r in range(st.nruns):                # the SA -> run index, empty again
            st.index.slot[st.runs[r].at] = -1

    cdef void _classify_one(self, Batch b, int i, uint8_t *p, int32_t n,
                            fp_out_state *st) noexcept nogil:
        """Pass 1 for one well-formed packet, every case: lookup (cached for
        the packets after it), SA choice, MTU, plain IPv6-in-IPv6."""
        cdef fp_sad *t = self.t
        cdef bint ha = t.role == ROLE_HA
        cdef const uint8_t *a = p + (24 if ha else 8)
        cdef int32_t m, s, mtu, tel
        cdef fp_sa *sa
        cdef fp_mn *mn
        cdef fp_job *j
        if not st.cached or not fp_eq128(a, st.hi, st.lo):
            st.fast = False
            m = sad_find_mn(t, a)
            if m < 0:
                st.cached = False
                self._verdict(b, i, V_DROP, R_NO_BINDING, -1)
                return
            mn = &t.mns[m]
            # One endpoint read per run of this mobile node within the batch:
            # old or new record, never torn, and it stays valid until the
            # batch ends (grace period).
            st.e = fp_load_acq_i32(&mn.ep)
            st.pay = mn.sa[PURPOSE_PAYLOAD][DIR_OUT]
            st.rr = mn.sa[PURPOSE_RR][DIR_OUT]
            st.hi = fp_ld_u64(a)
            st.lo = fp_ld_u64(a + 8)
            st.cached = True
            st.cur = -2
        if st.e < 0:
            self._verdict(b, i, V_DROP, R_NO_BINDING, -1)
            return
        s = st.pay
        if st.rr >= 0 and is_mh_type(p, n, 3 if ha else 1):
            s = st.rr
        if s != st.cur:
            # Per SA: the largest inner packet that fits the MTU (the same
            # decision as comparing the outer length), and its reservation.
            st.cur = s
            st.run = -1
            mtu = t.eps[st.e].mtu               # the configured MTU, or a PTB's lower one
            if s < 0:
                st.fit = mtu - 40
            else:
                sa = &t.sas[s]
                st.fit = ((mtu - sa.esp_ovh) & ~(sa.esp_align - 1)) - 2
                st.run = run_of(st, s)
        st.fast = st.rr < 0 and s >= 0
        # RFC 2473 §4.1.1: a packet whose Tunnel Encapsulation Limit is 0
        # may not enter another tunnel, ours of either kind. (A limit above 0
        # goes on in a plain tunnel's header; ESP tunnel mode keeps RFC 3776
        # §3.4's outer header and carries none.)
        tel = -1
        if tel_chain(p[6]):
            tel = tel_offset(p, n)
            if tel >= 0 and p[tel] == 0:
                self._icmp_error(b, i, p, n, s, R_ENCAP_LIMIT, 4, <uint32_t>tel)
                return
        if s < 0:
            self._plain_out(b, i, p, n, st, tel)
            return
        # A packet of up to 1280 bytes is tunnelled even when it does not fit:
        # its outer packet leaves fragmented (RFC 2473 §7.1; the worker
        # fragments).
        if n > st.fit:
            if n > 1280:
                self._too_big(b, i, p, n, s, st.fit)
                return
            # Tunnelled all the same; the outer packet leaves fragmented. The
            # worker cuts what exceeds the configured MTU by itself; below a
            # path MTU a PTB lowered, this tells it to cut at 1280 bytes.
            if t.eps[st.e].mtu < <int32_t>t.mtu:
                b.c_reason[i] = R_FRAGMENT
        j = &self.jobs[st.nj]
        st.nj += 1
        j.slot = i
        j.sa = s
        j.plen = n
        j.ct = p
        j.run = st.run
        st.runs[st.run].want += 1

    cdef void _plain_out(self, Batch b, int i, uint8_t *p, int32_t n,
                         fp_out_state *st, int32_t tel) noexcept nogil:
        """Plain IPv6-in-IPv6 (RFC 2473) for a mobile node without a payload
        SA. A packet that carries a Tunnel Encapsulation Limit (at offset
        `tel`, above 0: _classify_one refused 0; -1: none) - it is inside
        another tunnel, whose header carries it - gets it, one lower, in a
        destination-options header of ours (8 bytes more; RFC 2473 §5.1)."""
        cdef fp_sad *t = self.t
        cdef int32_t hl = 40, fit = st.fit
        cdef bint frag = False
        cdef uint8_t *outer
        if tel >= 0:
            hl = 48
            fit -= 8
        if n > fit:                            # as for ESP in _classify_one
            if n > 1280:
                self._too_big(b, i, p, n, -1, fit)
                return
            frag = t.eps[st.e].mtu < <int32_t>t.mtu
        outer = p - hl
        fp_copy40(outer, t.eps[st.e].hdr)
        set_outer_tc(outer, p)
        wr16(outer + 4, n + hl - 40)
        if tel < 0:
            outer[6] = 41
        else:
            outer[6] = 60
            outer[40] = 41
            outer[41] = 0
            outer[42] = 4                       # Tunnel Encapsulation Limit
            outer[43] = 1
            outer[44] = p[tel] - 1
            outer[45] = 1                       # PadN option: 1 zero byte of data
            outer[46] = 1
            outer[47] = 0
        b.c_off[i] -= hl
        b.c_len[i] = n + hl
        self._verdict(b, i, V_TO_WIRE, R_NONE, -1)
        if frag:
            b.c_reason[i] = R_FRAGMENT          # a note for the worker, not a drop

    cdef void _frame_out(self, Batch b, fp_out_state *st) noexcept nogil:
        """Pass 3: sequence number, ESP framing and outer header for every
        job, then seal and count. The parameters of the current reservation
        run (SA, keys, outer header template) are held across its packets."""
        cdef fp_sad *t = self.t
        cdef fp_job *jobs = self.jobs
        cdef int32_t *c_off = b.c_off
        cdef int32_t *c_len = b.c_len
        cdef int32_t *c_sa = b.c_sa
        cdef uint8_t *c_verdict = b.c_verdict
        cdef bint fixed = self.fixed_ivs, esn = False
        cdef int k, r, w = 0, cur = -1, kind = 0, nj = st.nj
        cdef int32_t i, s, hl = 0, esp_len
        cdef uint32_t spi = 0
        cdef uint64_t seq, nxt = 0, end = 0, pk = 0, by = 0
        cdef uint8_t *p
        cdef uint8_t *outer
        cdef const uint8_t *ivp
        cdef fp_sa *sa
        cdef fp_keys *kk = NULL
        cdef fp_job *j
        cdef fp_seq_run *rn
        cdef const uint8_t *tmpl = NULL     # the run's outer header template
        # (Measured, not kept: sealing ipsec-mb GCM jobs inside this loop.
        # Right after framing, the GCM call's loads wait on the framing's
        # stores: eng/bare 0.72 -> 0.47 at 64 B; 8 jobs later 0.72 -> 0.69;
        # 24 jobs later no change. The same in _classify_in() for decap:
        # right after framing 0.69 -> 0.61; 8 jobs later (commit 06f9a31,
        # reverted) perf showed (engine + _mb_run) / crypto 0.60 -> 0.49, but
        # alternating timed runs gave +5 % in two blocks and nothing in two
        # others and in the bench. seal()/open() take the batch as a pass.)
        k = 0
        while k < nj:
            j = &jobs[k]
            i = j.slot
            r = j.run
            if r == cur and nxt != end:
                seq = nxt                        # the run's next reserved number
                nxt += 1
                pk += 1
                by += <uint64_t>j.plen
            else:
                if cur >= 0:                     # leaving a run: keep where it stands
                    rn = &st.runs[cur]
                    rn.next = nxt
                    rn.pk = pk
                    rn.by = by
                s = j.sa
                rn = &st.runs[r]
                nxt = rn.next
                end = rn.end
                pk = rn.pk
                by = rn.by
                seq = 0
                if nxt != end:
                    seq = nxt
                    nxt += 1
                    pk += 1
                    by += <uint64_t>j.plen
                tmpl = t.eps[rn.ep].hdr
                cur = r
                sa = &t.sas[s]
                kk = sa.keys
                spi = sa.spi
                esn = sa.esn
                hl = 8 + kk.iv_len
                kind = kk.kind
                if seq == 0:
                    self._verdict(b, i, V_DROP, R_SEQ_EXHAUSTED, s)
                    k += 1
                    continue
            if w != k:
                jobs[w].slot = i
                jobs[w].sa = j.sa
                jobs[w].plen = j.plen
                jobs[w].ct = j.ct
                j = &jobs[w]
            w += 1
            p = j.ct
            if kind == KIND_GCM:
                esp_len = esp_frame_gcm(j, kk, p, j.plen, spi, seq, esn, 41,
                                        b.c_iv + i * 16 if fixed else NULL)
            else:
                ivp = NULL
                if kind == KIND_CBC_HMAC:
                    ivp = self._iv(b, i)
                esp_len = esp_frame_out(j, kk, p, j.plen, spi, seq, esn, 41, ivp)
            frame_outer(p - hl - 40, tmpl, p, esp_len)
            c_off[i] -= 40 + hl
            c_len[i] = 40 + esp_len
            c_sa[i] = j.sa
            c_verdict[i] = V_TO_WIRE
            k += 1
            # The rest of a GCM run (no ESN, IV = sequence number: the
            # common case) goes through a loop of its own, whose few
            # variables stay in registers.
            if kind == KIND_GCM and not esn and not fixed and w == k and r == cur:
                rn = &st.runs[r]
                rn.next = nxt
                rn.pk = pk
                rn.by = by
                k = _frame_gcm_run(b, jobs, k, nj, rn, r, kk, spi, tmpl)
                w = k
                nxt = rn.next
                pk = rn.pk
                by = rn.by
        if cur >= 0:
            rn = &st.runs[cur]
            rn.next = nxt
            rn.pk = pk
            rn.by = by
        if w == 0:
            return
        if self.crypto.seal(jobs, w) != 0:
            self._count_out(b, w)
            return
        # Every packet sealed: SA counters once per reservation run.
        for r in range(st.nruns):
            rn = &st.runs[r]
            if rn.pk:
                fp_add_u64(&t.hot[rn.sa].packets, rn.pk)
                fp_add_u64(&t.hot[rn.sa].bytes, rn.by)
        self.verdicts[V_TO_WIRE] += w

    cdef void _count_out(self, Batch b, int nj) noexcept nogil:
        """Verdicts and SA counters after sealing, one atomic add per run of
        one SA: the slow path, when a seal failed (the job is dropped)."""
        cdef int k, ok = 0
        cdef int32_t cur = -1, i
        cdef uint64_t pk = 0, by = 0
        cdef fp_job *j
        cdef fp_sa_hot *hot = NULL
        cdef uint8_t *c_verdict = b.c_verdict
        cdef int32_t *c_sa = b.c_sa
        for k in range(nj):
            j = &self.jobs[k]
            i = j.slot
            if not j.ok:
                self._verdict(b, i, V_DROP, R_MALFORMED, j.sa)
                continue
            c_verdict[i] = V_TO_WIRE            # (the reason stays: R_NONE or R_FRAGMENT)
            c_sa[i] = j.sa
            ok += 1
            if j.sa != cur:
                if cur >= 0:
                    fp_add_u64(&hot.packets, pk)
                    fp_add_u64(&hot.bytes, by)
                cur = j.sa
                hot = &self.t.hot[cur]
                pk = 0
                by = 0
            pk += 1
            by += <uint64_t>j.plen
        if cur >= 0:
            fp_add_u64(&hot.packets, pk)
            fp_add_u64(&hot.bytes, by)
        self.verdicts[V_TO_WIRE] += ok

    # -- inbound ----------------------------------------------------------------
    cdef void _decap(self, Batch b) noexcept nogil:
        """Classify and pre-check every packet (AES-GCM runs on ipsec-mb are
        also opened and finished there: _decap_gcm_run), open the ESP jobs
        that gain from it as a batch (open_batched), then open the rest and
        finish them all in packet order under their SA's replay lock (one
        lock and one counter update per run of one SA)."""
        cdef fp_in_state st
        cdef int nj
        self.n_bindings = 0
        st.s = -1
        st.spi = 0
        st.nj = 0
        st.batched = 0
        # Fail closed: a packet goes home only once a check has said so
        # (an ESP packet: when it is finished; the others: in pass 1).
        memset(b.c_verdict, V_DROP, b.count)
        memset(b.c_reason, R_NONE, b.count)
        self._classify_in(b, &st)
        nj = st.nj
        if nj == 0:
            return
        if st.batched:
            self.crypto.open_batched(self.jobs, nj)     # the rest: in _finish_in
        self._finish_in(b, nj)

    cdef void _classify_in(self, Batch b, fp_in_state *st) noexcept nogil:
        """Pass 1. Every packet the fast loops do not take goes through
        _classify_in_one(); after one that named a tunnel-mode SA without ESN,
        the packets that follow on that SA go through _classify_esp_run(), or
        for AES-GCM on ipsec-mb through _decap_gcm_run(), which finishes them
        there (with the first one's job)."""
        cdef int32_t *c_off = b.c_off
        cdef int32_t *c_len = b.c_len
        cdef Py_ssize_t ss = b.slot_size
        cdef int64_t lim = b.slot_size - TAILROOM
        cdef int i = 0, nj = st.nj, count = b.count
        cdef int32_t n, off, s
        cdef uint8_t *p
        cdef fp_sa *sa
        while i < count:
            # offsets/lengths are numpy arrays Python can write: never trust them.
            off = c_off[i]
            n = c_len[i]
            p = b.c_data + i * ss + off
            if not ipv6_in_slot(p, off, n, lim):
                self._verdict(b, i, V_DROP, R_MALFORMED, -1)
                i += 1
                continue
            st.nj = nj
            self._classify_in_one(b, i, p, n, st)
            i += 1
            s = st.s
            sa = &self.t.sas[s] if s >= 0 else NULL
            if sa == NULL or sa.esn or sa.mode != MODE_TUNNEL:
                nj = st.nj
                continue
            if opens_alone(self.crypto.backend, sa.keys):
                # The run, with the job of its first packet if it made one:
                # that packet is finished in the run (in packet order), so its
                # job is not kept for pass 3: nj stays where it was.
                i += self._decap_gcm_run(b, i, s, sa, &self.t.hot[s], st.spi,
                                         &self.jobs[nj] if st.nj > nj else NULL)
                continue
            nj = st.nj
            n = _classify_esp_run(b, i, &self.jobs[nj], s, sa, &self.t.hot[s], st.spi)
            i += n
            nj += n
            st.batched += n                  # (not opens_alone: pass 2 opens them)
        st.nj = nj

    cdef void _classify_in_one(self, Batch b, int i, uint8_t *p, int32_t n,
                               fp_in_state *st) noexcept nogil:
        """Pass 1 for one well-formed packet, every case: the extension
        header chain, ESP (SPI lookup, cached for the packets after it),
        plain IPv6-in-IPv6, or a punt."""
        cdef fp_sad *t = self.t
        cdef int cnt = 0
        cdef int32_t off = 40, hl, o, ol, nh_pos = 6, s, ct_len, esp_len
        cdef uint32_t spi
        cdef uint8_t nh = p[6]
        cdef const uint8_t *hoa = NULL
        cdef const uint8_t *rh2 = NULL
        cdef fp_sa *sa
        cdef fp_job *j
        cdef uint64_t seq, T
        cdef bint bad = False
        # Walk the extension chain: hop-by-hop, routing, destination options.
        # Only what RFC 8200 §4 lets a node skip is skipped: a hop-by-hop
        # header not first, a routing header still to be acted on (segments
        # left; at a mobile node, a Type 2 header naming one address is its
        # own, RFC 6275 §6.4) or an option this node would have to understand
        # (action bits not 00) ends the walk as `malformed`. Reference:
        # fastpath.ref.ipv6.walk_chain(strict=True).
        while nh == 0 or nh == 43 or nh == 60:
            if cnt == MAX_EXT_HEADERS or off + 8 > n or (nh == 0 and cnt != 0):
                bad = True
                break
            hl = (<int32_t>p[off + 1] + 1) * 8
            if off + hl > n:
                bad = True
                break
            if nh == 43 and p[off + 3] != 0:
                if t.role != ROLE_HA and p[off + 2] == 2 and hl == 24 and p[off + 3] == 1:
                    rh2 = p + off + 8     # Type 2 Routing Header (RFC 6275 §6.4)
                else:
                    bad = True
                    break
            if nh != 43:
                o = off + 2
                while o < off + hl:
                    if p[o] == 0:          # Pad1
                        o += 1
                        continue
                    if o + 2 > off + hl:
                        bad = True
                        break
                    ol = p[o + 1]
                    if o + 2 + ol > off + hl:
                        bad = True
                        break
                    if nh == 60 and p[o] == 201 and ol == 16:
                        hoa = p + o + 2   # Home Address option (RFC 6275 §6.3)
                    elif p[o] & 0xC0:
                        bad = True        # unrecognised, and not to be skipped
                        break
                    o += 2 + ol
                if bad:
                    break
            nh_pos = off
            nh = p[off]
            off += hl
            cnt += 1
        if bad:
            self._verdict(b, i, V_DROP, R_MALFORMED, -1)
            return
        # RFC 6275 §9.3.1 (ESP: below, by SA). A Binding Update is exempt:
        # one in the clear is punted as such (and moves nothing); so is a
        # fragment, whose whole packet is checked once reassembled (it may
        # be a BU from a new care-of address).
        if (hoa != NULL and t.role == ROLE_HA and nh != 50 and nh != 44
                and not (nh == 135 and off + 3 <= n and p[off + 2] == 5)
                and not coa_bound(t, hoa, p + 8)):
            self._unbound_hao(b, i)
            return
        if nh == 41:
            self._plain(b, i, p, n, off)
            return
        if nh != 50:
            # Fragments, Mobility Header in the clear, ICMPv6, ...: control plane.
            self._verdict(b, i, V_PUNT, R_NONE, -1)
            return
        esp_len = n - off
        if esp_len < 8:
            self._verdict(b, i, V_DROP, R_MALFORMED, -1)
            return
        # Consecutive packets of one SA (a run) share its lookup.
        spi = fp_ld_be32(p + off)
        s = st.s
        if spi != st.spi or s < 0:
            s = sad_find_spi(t, spi)
            st.s = s
            st.spi = spi
            if s < 0:
                self._verdict(b, i, V_DROP, R_UNKNOWN_SPI, -1)
                return
        sa = &t.sas[s]
        # RFC 6275 §9.3.1, not on a binding SA: a Binding Update is what
        # makes the binding (§9.3.1 exempts it; the cache checks it).
        if (hoa != NULL and t.role == ROLE_HA and sa.purpose != PURPOSE_BINDING
                and not coa_bound(t, hoa, p + 8)):
            self._unbound_hao(b, i)
            return
        ct_len = esp_ct_len(sa.keys, esp_len)
        if ct_len < 0:
            self._verdict(b, i, V_DROP, R_MALFORMED, s)
            return
        T = fp_load_acq_u64(&t.hot[s].seq)     # then the bitmap: see fp_atomic.h
        if sa.esn:
            seq = esn_infer(T, fp_ld_be32(p + off + 4), sa.window)
        else:
            seq = fp_ld_be32(p + off + 4)
        if not replay_fresh(sa, T, seq):
            self._verdict(b, i, V_DROP, R_REPLAY, s)
            return
        j = &self.jobs[st.nj]
        st.nj += 1
        if not opens_alone(self.crypto.backend, sa.keys):
            st.batched += 1
        j.slot = i
        j.sa = s
        j.esp_off = off
        j.nh_pos = nh_pos
        j.hoa = hoa if t.role == ROLE_HA else rh2
        esp_frame_in(j, sa.keys, p + off, ct_len, seq, sa.esn)
        if sa.mode == MODE_TUNNEL:
            # Where the inner packet will start (a drop's offset does not
            # matter; transport mode moves the header chain instead).
            b.c_off[i] += off + 8 + sa.keys.iv_len

    cdef void _unbound_hao(self, Batch b, int i) noexcept nogil:
        """RFC 6275 §9.3.1: a Home Address option must name a binding whose
        care-of address is the packet's source. One that does not is not
        processed: it goes to the control plane, which answers with a
        Binding Error (status 1), with the note NO_BINDING (not counted as
        a drop here: the control plane counts it)."""
        self._verdict(b, i, V_PUNT, R_NONE, -1)
        b.c_reason[i] = R_NO_BINDING

    cdef inline void _lock_sa(self, fp_sa_hot *hot) noexcept nogil:
        if self.lock_sleeps:
            fp_spin_lock_or_sleep(&hot.lock)     # see Engine.lock_sleeps
        else:
            fp_spin_lock(&hot.lock)

    cdef void _finish_in(self, Batch b, int nj) noexcept nogil:
        """Pass 3, in packet order: ICV verdict, padding, replay commit, inner
        packet checks. Runs of one SA take its replay lock once and add to its
        counters once. The jobs pass 2 left unopened (opens_alone: AES-GCM on
        ipsec-mb with ESN or in transport mode; the rest of AES-GCM there is
        finished by _decap_gcm_run) are opened here, within a run one packet
        ahead of the packet being finished: the
        checks then read a trailer whose decrypted bytes have long left the
        store buffer, while opening them all first would leave the batch's
        headers and trailers cold (measured, AES-GCM at 64 bytes: 3-4 ns a
        packet less than pass 2 opening everything). So an SA's lock is held
        while its packets are decrypted, never another SA's, and is let go
        every LOCK_HOLD_MAX packets: one SA's packets come on one TUN queue
        (the queue follows the outer addresses), so workers seldom wait on it."""
        cdef fp_sad *t = self.t
        cdef fp_job *jobs = self.jobs
        cdef int32_t *c_off = b.c_off
        cdef int32_t *c_len = b.c_len
        cdef int32_t *c_sa = b.c_sa
        cdef uint8_t *c_verdict = b.c_verdict
        cdef uint8_t *data = b.c_data
        cdef Py_ssize_t ss = b.slot_size
        cdef int hoa_at = 8 if t.role == ROLE_HA else 24
        cdef uint8_t rr_type = 1 if t.role == ROLE_HA else 3    # HoTI in / HoT in
        cdef int rr_rule = 0
        cdef int k, i, r, ok = 0
        cdef int32_t s, cur = -1, plen
        cdef uint8_t nxt
        cdef uint64_t pk = 0, by = 0, hi = 0, lo = 0
        cdef fp_sa *sa = NULL
        cdef fp_sa_hot *hot = NULL
        cdef fp_job *j
        cdef int backend = self.crypto.backend
        cdef fp_mb_mgr *mb = self.crypto.mb
        cdef void *gcm_ctx = self.crypto.gcm_ctx
        cdef bint ahead = False          # jobs[k] was opened by the iteration before
        cdef int held = 0                # packets under the lock since it was taken
        for k in range(nj):
            j = &jobs[k]
            s = j.sa
            if s != cur or held == LOCK_HOLD_MAX:
                if cur >= 0:
                    unlock_and_count(hot, pk, by)
                cur = s
                sa = &t.sas[s]
                hot = &t.hot[s]
                hi = fp_ld_u64(sa.hoa)
                lo = fp_ld_u64(sa.hoa + 8)
                rr_rule = rr_rule_of(t, sa)
                pk = 0
                by = 0
                held = 0
                self._lock_sa(hot)
            held += 1
            if not ahead and opens_alone(backend, j.keys):
                mb_gcm_open(mb, gcm_ctx, j)
            ahead = (k + 1 < nj and jobs[k + 1].sa == s
                     and opens_alone(backend, jobs[k + 1].keys))
            if ahead:
                mb_gcm_open(mb, gcm_ctx, &jobs[k + 1])
            i = j.slot
            r = open_reason(j, sa, hot, &plen, &nxt)
            if r != R_NONE:
                self._verdict(b, i, V_DROP, r, s)
                continue
            if sa.mode != MODE_TUNNEL:
                plen = self._finish_transport(b, j, sa, plen, nxt)
                if plen >= 0:
                    pk += 1
                    by += <uint64_t>plen
                continue
            r = tunnel_reason(j, plen, nxt, hi, lo, hoa_at, rr_rule, rr_type)
            if r != R_NONE:
                self._verdict(b, i, V_DROP, r, s)
                continue
            c_len[i] = plen                     # (offset: set in pass 1)
            c_sa[i] = s
            c_verdict[i] = V_TO_HOME
            ok += 1
            pk += 1
            by += <uint64_t>plen
        if cur >= 0:
            unlock_and_count(hot, pk, by)
        self.verdicts[V_TO_HOME] += ok

    cdef int _decap_gcm_run(self, Batch b, int i, int32_t s, fp_sa *sa, fp_sa_hot *hot,
                            uint32_t spi, fp_job *first) noexcept nogil:
        """Passes 1 to 3 at once for packets i, i+1, ... while each is the
        common case of a run (run_ct_len) on an SA whose jobs open alone
        (AES-GCM on intel-ipsec-mb); first: the job of the packet before
        them, or NULL. Returns how many packets it took after first, which
        with first are at most LOCK_HOLD_MAX. As a pipeline, under the SA's
        lock (taken only once there is a packet): packet k is checked
        against the window as it stands and framed while packet k - 1 is
        opened and packet k - 2 finished (why: docs/engine-semantics.md,
        Batches)."""
        cdef fp_sad *t = self.t
        cdef int32_t *c_off = b.c_off
        cdef int32_t *c_len = b.c_len
        cdef fp_keys *kk = sa.keys
        cdef run_shape rs
        cdef int k = 0, count = b.count, ring = 0, r
        cdef int limit = LOCK_HOLD_MAX - (1 if first != NULL else 0)
        cdef int32_t n, off, ct_len, plen
        cdef uint8_t *p
        cdef uint8_t nxt
        cdef uint64_t seq, pk = 0, by = 0
        cdef uint64_t hi = fp_ld_u64(sa.hoa), lo = fp_ld_u64(sa.hoa + 8)
        cdef int hoa_at = 8 if t.role == ROLE_HA else 24
        cdef uint8_t rr_type = 1 if t.role == ROLE_HA else 3
        cdef int rr_rule = rr_rule_of(t, sa)
        cdef fp_mb_mgr *mb = self.crypto.mb
        cdef void *gcm_ctx = self.crypto.gcm_ctx
        cdef fp_job jobs[3]              # a ring: just framed, to open, to finish
        cdef fp_job *framed
        cdef fp_job *to_open = first
        cdef fp_job *to_finish = NULL
        cdef bint taking = True, locked = False
        run_shape_init(&rs, b, kk)
        while True:
            framed = NULL
            if taking and i < count and k < limit:
                taking = False
                off = c_off[i]
                n = c_len[i]
                p = b.c_data + i * rs.ss + off
                ct_len = run_ct_len(&rs, p, off, n, spi)
                seq = fp_ld_be32(p + 44) if ct_len >= 0 else 0
                if ct_len >= 0 and replay_fresh(sa, fp_load_acq_u64(&hot.seq), seq):
                    framed = &jobs[ring]
                    ring = 0 if ring == 2 else ring + 1
                    framed.slot = i
                    framed.sa = s
                    framed.esp_off = 40
                    esp_frame_in(framed, kk, p + 40, ct_len, seq, False)
                    c_off[i] = off + rs.hin
                    i += 1
                    k += 1
                    taking = True
            if not locked:
                if to_open == NULL and framed == NULL:
                    return 0                 # no run after all: no lock taken
                self._lock_sa(hot)
                locked = True
            if to_open != NULL:
                mb_gcm_open(mb, gcm_ctx, to_open)
            if to_finish != NULL:
                r = open_reason(to_finish, sa, hot, &plen, &nxt)
                if r == R_NONE:
                    r = tunnel_reason(to_finish, plen, nxt, hi, lo, hoa_at, rr_rule, rr_type)
                if r != R_NONE:
                    self._verdict(b, to_finish.slot, V_DROP, r, s)
                else:
                    c_len[to_finish.slot] = plen    # (offset: set when framed)
                    b.c_sa[to_finish.slot] = s
                    b.c_verdict[to_finish.slot] = V_TO_HOME
                    pk += 1
                    by += <uint64_t>plen
            to_finish = to_open
            to_open = framed
            if to_finish == NULL and to_open == NULL:
                break
        unlock_and_count(hot, pk, by)
        self.verdicts[V_TO_HOME] += pk
        return k

    cdef void _plain(self, Batch b, int i, uint8_t *p, int32_t n, int32_t off) noexcept nogil:
        # IPv6-in-IPv6 without ESP: the outer source must be the registered CoA
        # of the inner source's home address (RFC 6275 §10.4.5).
        cdef uint8_t *inner = p + off
        cdef int32_t m, e
        cdef fp_mn *mn
        cdef bint ha = self.t.role == ROLE_HA
        if not ipv6_ok(inner, n - off):
            self._verdict(b, i, V_DROP, R_MALFORMED, -1)
            return
        m = sad_find_mn(self.t, inner + (8 if ha else 24))
        if m < 0:
            self._verdict(b, i, V_DROP, R_NO_BINDING, -1)
            return
        mn = &self.t.mns[m]
        e = fp_load_acq_i32(&mn.ep)
        if e < 0:
            self._verdict(b, i, V_DROP, R_NO_BINDING, -1)
            return
        if mn.sa[PURPOSE_PAYLOAD][DIR_IN] >= 0:
            self._verdict(b, i, V_DROP, R_POLICY, -1)     # its payload must come under ESP
            return
        if mn.sa[PURPOSE_RR][DIR_IN] >= 0 and is_mh_type(inner, n - off, 1 if ha else 3):
            self._verdict(b, i, V_DROP, R_POLICY, -1)     # ... and so must its HoTI / HoT
            return
        # HA: from the registered CoA; MN: from our home agent.
        if memcmp(p + 8, self.t.eps[e].hdr + 24, 16) != 0:
            self._verdict(b, i, V_DROP, R_POLICY, -1)
            return
        if not ecn_decap(p, inner):
            self._verdict(b, i, V_DROP, R_CONGESTION, -1)
            return
        b.c_off[i] += off
        b.c_len[i] = n - off
        self._verdict(b, i, V_TO_HOME, R_NONE, -1)

    cdef int32_t _finish_transport(self, Batch b, fp_job *j, fp_sa *sa, int32_t plen,
                                   uint8_t nxt) noexcept nogil:
        """_finish_in() for a transport-mode SA (a BU or a Mobile Prefix
        Solicitation at the HA, a BA at the MN): the packet with ESP removed
        goes to the control plane. Returns the bytes counted, or -1 when it
        was dropped."""
        cdef int i = j.slot
        cdef int32_t s = j.sa
        cdef int32_t hl, newlen
        cdef uint8_t *p
        cdef uint8_t *q
        cdef fp_binding_rec *r
        # Transport mode (binding SA): the HAO (at the HA; the Type 2 Routing
        # Header at the MN) must name this SA's mobile node. At the HA a BU
        # without HAO comes from the home address itself: a mobile node back
        # on its home link deregistering (RFC 6275 §11.5.4; RFC 3776 §4.1's
        # selector is the home address either way).
        if j.hoa == NULL:
            if (self.t.role != ROLE_HA
                    or memcmp(j.esp - j.esp_off + 8, sa.hoa, 16) != 0):
                self._verdict(b, i, V_DROP, R_POLICY, s)
                return -1
        elif memcmp(j.hoa, sa.hoa, 16) != 0:
            self._verdict(b, i, V_DROP, R_POLICY, s)
            return -1
        if sa.purpose == PURPOSE_PD:
            # The prefix-discovery SA carries Mobile Prefix Solicitations
            # (ICMPv6 type 146) to the home agent and nothing else (RFC 3776
            # §3.3); a BU on it must not move the binding (§4.1). The mobile-
            # node role does not do prefix discovery.
            if self.t.role != ROLE_HA or nxt != 58 or plen < 1 or j.ct[0] != 146:
                self._verdict(b, i, V_DROP, R_POLICY, s)
                return -1
        elif nxt != 135:
            self._verdict(b, i, V_DROP, R_MALFORMED, s)
            return -1
        elif sa.purpose != PURPOSE_BINDING:
            self._verdict(b, i, V_DROP, R_POLICY, s)
            return -1
        hl = 8 + sa.keys.iv_len
        newlen = j.esp_off + plen
        if newlen > BINDING_MAX:
            self._verdict(b, i, V_DROP, R_MALFORMED, s)
            return -1
        # Remove ESP: slide the IPv6 header chain up against the payload.
        p = j.esp - j.esp_off
        q = p + hl
        memmove(q, p, j.esp_off)
        q[j.nh_pos] = nxt
        wr16(q + 4, newlen - 40)
        b.c_off[i] += hl
        b.c_len[i] = newlen
        r = &self.bindings[self.n_bindings]
        self.n_bindings += 1
        r.slot = i
        r.sa = s
        r.seq = j.seq
        r.length = newlen
        r.mh_offset = j.esp_off
        memcpy(r.data, q, newlen)
        self._verdict(b, i, V_BINDING, R_NONE, s)
        return newlen
