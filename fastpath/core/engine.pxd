# The per-worker engine (engine.pyx): classify -> frame -> crypto -> verdict.
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from fastpath.core.batch cimport Batch
from fastpath.core.esp cimport fp_job, CryptoWorker
from fastpath.core.sad cimport SADatabase, fp_sad, fp_sa, fp_sa_hot, N_REASONS

cdef enum:
    V_DROP = 0
    V_TO_WIRE = 1
    V_TO_HOME = 2
    V_PUNT = 3
    V_BINDING = 4
    N_VERDICTS = 5
    R_NONE = 0
    R_UNKNOWN_SPI = 1
    R_REPLAY = 2
    R_ICV = 3
    R_BAD_PADDING = 4
    R_POLICY = 5
    R_MALFORMED = 6
    R_NO_BINDING = 7
    R_TOO_BIG = 8
    R_SEQ_EXHAUSTED = 9
    R_DUMMY = 10
    R_CONGESTION = 11
    R_ENCAP_LIMIT = 12
    R_FRAGMENT = 8          # with TO_WIRE, not a drop: fragment at 1280 (a lowered path MTU)
    MAX_EXT_HEADERS = 8
    BINDING_MAX = 2048      # largest decapsulated BU/MH packet handed to the control plane
    RND_BYTES = 16384       # CBC IVs drawn in bulk
    MAX_JOBS = 1 << 20      # the largest batch an engine takes


# One SA's sequence-number reservation in a batch (encap): every SA the batch
# sends on has one, so that numbers are taken with one atomic per SA per batch.
cdef struct fp_seq_run:
    int32_t sa          # the SA
    int32_t ep          # endpoint read when the run began: all its packets use it
    uint32_t want       # its packets in this batch
    uint32_t at         # its slot in the fp_run_index
    uint64_t next       # next number granted to it
    uint64_t end        # one past the last granted
    uint64_t pk         # its packets framed, and their bytes (counted once sealed)
    uint64_t by

# SA -> its run in the batch (encap): open addressing at the top bits of the SA
# index times the engine's random odd multiplier; -1 = empty, and empty again
# after pass 1. At least twice as many slots as runs.
cdef struct fp_run_index:
    int32_t *slot
    uint32_t mask
    uint32_t mul
    uint32_t shift

# encap classification state of one batch: the mobile node of the previous
# packet, and whether the next packet to it can take the fast path.
cdef struct fp_out_state:
    uint64_t hi         # the cached mobile node's HoA
    uint64_t lo
    int32_t e           # its endpoint (read once per run of it), payload and RR out SAs
    int32_t pay
    int32_t rr
    int32_t cur         # the SA whose fit and run are below
    int32_t fit         # largest inner packet that fits the MTU on it
    int32_t run         # its sequence-number reservation
    bint cached
    bint fast           # cached MN, bound, no RR SA, ESP payload SA
    int nruns
    int nj
    fp_seq_run *runs    # the engine's, one per packet at most
    fp_run_index *index # the engine's

# decap classification state of one batch: the SA of the previous ESP packet.
cdef struct fp_in_state:
    uint32_t spi
    int32_t s           # its index, -1: none
    int nj
    int batched         # jobs pass 2 opens (the others: pass 3, see opens_alone)

cdef struct fp_binding_rec:
    int32_t slot
    int32_t sa
    int32_t length
    int32_t mh_offset
    uint64_t seq
    uint8_t data[BINDING_MAX]


@cython.final
cdef class Engine:
    cdef SADatabase sad
    cdef fp_sad *t
    cdef CryptoWorker crypto
    cdef readonly int worker
    cdef readonly str backend
    cdef int max_jobs
    cdef fp_job *jobs
    cdef fp_binding_rec *bindings
    cdef fp_seq_run *runs               # encap's reservations (fp_out_state)
    cdef fp_run_index run_index
    cdef int n_bindings
    cdef uint8_t *rnd
    cdef int rnd_pos
    cdef public bint fixed_ivs          # take CBC IVs from batch.ivs (tests)
    cdef public bint lock_sleeps        # replay locks: sleep when contended (control thread)
    cdef public double icmp_error_rate  # ICMPv6 errors (Packet Too Big, Parameter Problem) per second
    cdef public double icmp_error_burst
    cdef double icmp_error_tokens
    cdef double icmp_error_last
    cdef uint64_t drops[N_REASONS]
    cdef uint64_t verdicts[N_VERDICTS]


    cdef int _reserve(self, Batch b) except -1
    cdef int _per_batch_alloc(self, int n) except -1
    cdef void epoch_enter(self) noexcept nogil
    cdef void epoch_leave(self) noexcept nogil
    cdef void run_encap(self, Batch b) noexcept nogil
    cdef void run_decap(self, Batch b) noexcept nogil
    cdef inline void _verdict(self, Batch b, int i, int v, int reason, int32_t sa) noexcept nogil
    cdef inline const uint8_t *_iv(self, Batch b, int i) noexcept nogil
    cdef inline const uint8_t *_iv_scratch(self) noexcept nogil
    cdef bint _icmp_error_token(self) noexcept nogil
    cdef void _too_big(self, Batch b, int i, uint8_t *p, int32_t n, int32_t s,
                       int32_t inner_mtu) noexcept nogil
    cdef void _icmp_error(self, Batch b, int i, uint8_t *p, int32_t n, int32_t s, int reason,
                          uint8_t kind, uint32_t word) noexcept nogil
    cdef void _plain_out(self, Batch b, int i, uint8_t *p, int32_t n,
                         fp_out_state *st, int32_t tel) noexcept nogil
    cdef void _encap(self, Batch b) noexcept nogil
    cdef void _classify_out(self, Batch b, fp_out_state *st) noexcept nogil
    cdef void _classify_one(self, Batch b, int i, uint8_t *p, int32_t n,
                            fp_out_state *st) noexcept nogil
    cdef void _frame_out(self, Batch b, fp_out_state *st) noexcept nogil
    cdef void _count_out(self, Batch b, int nj) noexcept nogil
    cdef void _decap(self, Batch b) noexcept nogil
    cdef void _plain(self, Batch b, int i, uint8_t *p, int32_t n, int32_t off) noexcept nogil
    cdef void _unbound_hao(self, Batch b, int i) noexcept nogil
    cdef void _classify_in(self, Batch b, fp_in_state *st) noexcept nogil
    cdef void _classify_in_one(self, Batch b, int i, uint8_t *p, int32_t n,
                               fp_in_state *st) noexcept nogil
    cdef inline void _lock_sa(self, fp_sa_hot *hot) noexcept nogil
    cdef void _finish_in(self, Batch b, int nj) noexcept nogil
    cdef int _decap_gcm_run(self, Batch b, int i, int32_t s, fp_sa *sa, fp_sa_hot *hot,
                            uint32_t spi, fp_job *first) noexcept nogil
    cdef int32_t _finish_transport(self, Batch b, fp_job *j, fp_sa *sa, int32_t plen,
                                   uint8_t nxt) noexcept nogil
