# cython: language_level=3, boundscheck=False, wraparound=False
"""Packet batches: the unit of work of every engine call and of TUN I/O."""
import numpy as np
cimport numpy as cnp

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t
from libc.string cimport memcpy

cnp.import_array()

DEFAULT_MAX_PACKET = 2048
_HUGE = 2 << 20


def _slot_memory(int capacity, int slot_size, bint hugepages):
    """The slots, zeroed: numpy memory, or with `hugepages` a 2 MiB-aligned
    private anonymous mapping advised MADV_HUGEPAGE (plain pages where the
    kernel has no transparent huge pages)."""
    import mmap
    cdef Py_ssize_t size = <Py_ssize_t>capacity * slot_size, span, off
    if not hugepages or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros((capacity, slot_size), dtype=np.uint8)
    span = (size + _HUGE - 1) // _HUGE * _HUGE
    m = mmap.mmap(-1, span + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, dtype=np.uint8)      # keeps the mapping alive
    off = (-raw.ctypes.data) % _HUGE
    try:
        m.madvise(mmap.MADV_HUGEPAGE, off, span)
    except OSError:
        pass
    return raw[off:off + size].reshape(capacity, slot_size)


cdef void batch_copy(Batch dst, Batch src) noexcept nogil:
    """Batch.copy_from() without the GIL; src.count must fit dst (checked by
    the caller)."""
    cdef int i
    cdef int32_t n
    for i in range(src.count):
        n = src.c_len[i]
        if (src.c_off[i] < 0 or n < 0 or n > dst.max_packet
                or <int64_t>src.c_off[i] + n > src.slot_size):
            n = 0
        memcpy(dst.c_data + <Py_ssize_t>i * dst.slot_size + HEADROOM,
               src.c_data + <Py_ssize_t>i * src.slot_size + src.c_off[i], n)
        dst.c_off[i] = HEADROOM
        dst.c_len[i] = n
        dst.c_verdict[i] = 0
        dst.c_reason[i] = 0
        dst.c_sa[i] = -1
    dst.count = src.count


cdef class Batch:
    """`capacity` slots of HEADROOM + max_packet + TAILROOM bytes each.

    hugepages: put the slots in 2 MiB-aligned memory advised for transparent
    huge pages (one TLB entry for the whole batch instead of one per 4 KiB:
    a batch of 64 x 2 KiB slots spans 38 pages). Costs 2 MiB of memory per
    batch; for the few long-lived batches of a worker, not for throwaway ones.

    Input packets start at offset HEADROOM; the engine moves the offset and
    length as it prepends or strips headers, and sets a verdict per packet.
    All arrays are numpy views on one allocation: no Python object per packet
    on the hot path."""

    def __cinit__(self, int capacity=64, int max_packet=DEFAULT_MAX_PACKET, bint hugepages=False):
        if capacity < 1 or max_packet < 64:
            raise ValueError("batch capacity must be >= 1 and max_packet >= 64")
        self.capacity = capacity
        self.max_packet = max_packet
        # An odd number of cache lines per slot: with an even one the slots'
        # headers (and payloads, trailers) fall into a few L1 sets only (36
        # lines: 16 of 64 sets) and evict each other within a batch.
        self.slot_size = (HEADROOM + max_packet + TAILROOM + 63) & ~63
        if (self.slot_size >> 6) & 1 == 0:
            self.slot_size += 64
        self.data = _slot_memory(capacity, self.slot_size, hugepages)
        self.hugepages = hugepages
        self.offsets = np.full(capacity, HEADROOM, dtype=np.int32)
        self.lengths = np.zeros(capacity, dtype=np.int32)
        self.verdicts = np.zeros(capacity, dtype=np.uint8)
        self.reasons = np.zeros(capacity, dtype=np.uint8)
        self.sa_index = np.full(capacity, -1, dtype=np.int32)
        self.ivs = np.zeros((capacity, 16), dtype=np.uint8)
        self.c_data = <uint8_t *>cnp.PyArray_DATA(self.data)
        self.c_off = <int32_t *>cnp.PyArray_DATA(self.offsets)
        self.c_len = <int32_t *>cnp.PyArray_DATA(self.lengths)
        self.c_verdict = <uint8_t *>cnp.PyArray_DATA(self.verdicts)
        self.c_reason = <uint8_t *>cnp.PyArray_DATA(self.reasons)
        self.c_sa = <int32_t *>cnp.PyArray_DATA(self.sa_index)
        self.c_iv = <uint8_t *>cnp.PyArray_DATA(self.ivs)
        self.count = 0

    @property
    def headroom(self):
        return HEADROOM

    def set(self, int i, const uint8_t[::1] packet):
        """Put one packet in slot i (it becomes part of the batch if i >= count)."""
        cdef Py_ssize_t n = packet.shape[0]
        if i < 0 or i >= self.capacity:
            raise IndexError(i)
        if n > self.max_packet:
            raise ValueError(f"packet of {n} bytes exceeds the slot ({self.max_packet})")
        self.c_off[i] = HEADROOM
        self.c_len[i] = <int32_t>n
        self.c_verdict[i] = 0
        self.c_reason[i] = 0
        self.c_sa[i] = -1
        if n:
            memcpy(self.c_data + <Py_ssize_t>i * self.slot_size + HEADROOM, &packet[0], n)
        if i >= self.count:
            self.count = i + 1

    def load(self, packets):
        """Fill the batch from a sequence of bytes-like packets."""
        cdef int i = 0
        if len(packets) > self.capacity:
            raise ValueError(f"{len(packets)} packets for a batch of {self.capacity}")
        self.count = 0
        for p in packets:
            self.set(i, p)
            i += 1
        self.count = i

    def copy_from(self, Batch src not None):
        """Make this batch a copy of src's packets (each packet's bytes only,
        at the headroom offset): what a TUN read costs, for benchmarks and
        replaying one input many times."""
        if src.count < 0 or src.count > src.capacity or src.count > self.capacity:
            raise ValueError("source batch does not fit")
        with nogil:
            batch_copy(self, src)

    def set_iv(self, int i, const uint8_t[::1] iv):
        if i < 0 or i >= self.capacity:
            raise IndexError(i)
        if iv.shape[0] != 16:
            raise ValueError("CBC IVs are 16 bytes")
        memcpy(self.c_iv + i * 16, &iv[0], 16)

    def get(self, int i):
        """Slot i's current packet as bytes (b'' when dropped)."""
        if i < 0 or i >= self.count or self.count > self.capacity:
            raise IndexError(i)
        if self.c_verdict[i] == 0 and self.c_reason[i] != 0:
            return b""
        if (self.c_off[i] < 0 or self.c_len[i] < 0
                or <int64_t>self.c_off[i] + self.c_len[i] > self.slot_size):
            raise ValueError(f"slot {i}: offset/length outside the slot")
        return PyBytes_FromStringAndSize(
            <const char *>self.c_data + <Py_ssize_t>i * self.slot_size + self.c_off[i],
            self.c_len[i])

    def results(self):
        """[(verdict, reason, bytes)] for the packets of the batch (tests, replay)."""
        return [(int(self.c_verdict[i]), int(self.c_reason[i]), self.get(i))
                for i in range(self.count)]
