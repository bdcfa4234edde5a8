# The per-worker engine (engine.pyx): classify -> frame -> crypto -> verdict.
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from fastpath.core.batch cimport Batch
from fastpath.core.esp cimport fp_job, CryptoWorker
from fastpath.core.sad cimport SADatabase, fp_sad, N_REASONS

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
    MAX_EXT_HEADERS = 8
    BINDING_MAX = 2048      # largest decapsulated BU/MH packet handed to the control plane
    RND_BYTES = 16384       # CBC IVs drawn in bulk


cdef struct fp_seq_run:
    int32_t sa          # the SA
    uint32_t want       # its packets in this batch
    uint64_t next       # next number granted to it
    uint64_t end        # one past the last granted

cdef enum:
    SEQ_RUNS = 8        # distinct SAs reserved per batch; more fall back to one by one

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
    cdef int n_bindings
    cdef uint8_t *rnd
    cdef int rnd_pos
    cdef public bint fixed_ivs          # take CBC IVs from batch.ivs (tests)
    cdef public double ptb_rate         # ICMPv6 Packet Too Big per second (token bucket)
    cdef public double ptb_burst
    cdef double ptb_tokens
    cdef double ptb_last
    cdef uint64_t run_packets           # decap: packets/bytes of the current SA run
    cdef uint64_t run_bytes
    cdef uint64_t drops[N_REASONS]
    cdef uint64_t verdicts[N_VERDICTS]


    cdef int _reserve(self, Batch b) except -1
    cdef void epoch_enter(self) noexcept nogil
    cdef void epoch_leave(self) noexcept nogil
    cdef void run_encap(self, Batch b) noexcept nogil
    cdef void run_decap(self, Batch b) noexcept nogil
    cdef inline void _verdict(self, Batch b, int i, int v, int reason, int32_t sa) noexcept nogil
    cdef inline const uint8_t *_iv(self, Batch b, int i) noexcept nogil
    cdef inline const uint8_t *_iv_scratch(self) noexcept nogil
    cdef bint _ptb_token(self) noexcept nogil
    cdef void _too_big(self, Batch b, int i, uint8_t *p, int32_t n, int32_t s,
                       int32_t inner_mtu) noexcept nogil
    cdef void _encap(self, Batch b) noexcept nogil
    cdef void _count_out(self, Batch b, int nj) noexcept nogil
    cdef void _decap(self, Batch b) noexcept nogil
    cdef void _plain(self, Batch b, int i, uint8_t *p, int32_t n, int32_t off) noexcept nogil
    cdef void _finish_open(self, Batch b, fp_job *j) noexcept nogil
    cdef void _end_run(self, int32_t s) noexcept nogil
