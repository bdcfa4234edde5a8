# A batch of packets in preallocated slots (numpy-backed), with headroom so
# outer headers are prepended in place and tailroom for the ESP trailer/ICV.
from libc.stdint cimport uint8_t, int32_t

cdef enum:
    HEADROOM = 128     # outer IPv6 (40) + ESP header (8) + IV (16), with room to spare
    TAILROOM = 128     # padding (<= 17) + ICV (<= 32) + ESN high bits (4)

cdef class Batch:
    cdef readonly int capacity
    cdef readonly int slot_size
    cdef readonly int max_packet
    cdef public int count
    cdef readonly bint hugepages
    cdef readonly object data        # uint8 [capacity, slot_size]
    cdef readonly object offsets     # int32: packet start within its slot
    cdef readonly object lengths     # int32: packet length
    cdef readonly object verdicts    # uint8: fastpath.verdicts.Verdict
    cdef readonly object reasons     # uint8: fastpath.verdicts.Reason
    cdef readonly object sa_index    # int32: SA that handled the packet, -1 none
    cdef readonly object ivs         # uint8 [capacity, 16]: CBC IVs when injected
    cdef uint8_t *c_data
    cdef int32_t *c_off
    cdef int32_t *c_len
    cdef uint8_t *c_verdict
    cdef uint8_t *c_reason
    cdef int32_t *c_sa
    cdef uint8_t *c_iv


cdef void batch_copy(Batch dst, Batch src) noexcept nogil
