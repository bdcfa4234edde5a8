# Segmentation and coalescing below the TUN bound (IFF_VNET_HDR): the kernel
# hands the home side TCP "super-packets" of up to 64 KiB (TSO) that we cut
# into MSS-sized segments before encapsulation, and we hand it runs of
# consecutive TCP segments of one flow as one super-packet (GRO) after
# decapsulation. One read()/write() then carries tens of packets.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef enum:
    VNET_HDR_LEN = 10           # struct virtio_net_hdr (the TUN default size)
    VNET_F_NEEDS_CSUM = 1
    VNET_GSO_NONE = 0
    VNET_GSO_TCPV6 = 4
    VNET_GSO_ECN = 0x80
    GSO_BUF = 65536 + 256       # one read: the header + the largest IPv6 packet
    GRO_MAX_SEGS = 64           # segments merged into one write at most
    GRO_MAX_L4 = 65535 - 40     # so the merged IPv6 payload length still fits

    # tso_begin() results
    TSO_PLAIN = 0               # one ordinary packet (checksum completed if asked)
    TSO_SPLIT = 1               # segments follow: call tso_next()
    TSO_BAD = -1                # malformed or unsupported offload request

cdef struct fp_tso:
    # A super-packet being cut into segments. `buf` holds the virtio_net_hdr
    # and the packet as read; the segments are copied out of it.
    uint8_t *buf
    int32_t len                 # packet bytes after the header
    int32_t hdr_len             # IPv6 + TCP headers repeated in every segment
    int32_t gso_size            # payload bytes per segment (the MSS)
    int32_t next                # offset of the next segment's payload; len when done
    int32_t index               # segments emitted so far
    uint32_t seq0               # TCP sequence number of the first segment
    bint ecn                    # CWR only on the first segment (RFC 3168 §6.1.2)

cdef struct fp_gro:
    # A run of TCP segments of one flow being merged into one write. The first
    # segment supplies the headers; the others contribute their payloads.
    uint8_t *first              # the first segment (IPv6 header), in its slot
    int32_t first_len
    int32_t tcp_len             # TCP header length of the flow's segments
    int32_t gso_size            # payload of the first segment: the MSS of the run
    int32_t l4_len              # TCP header + all payload so far
    uint32_t next_seq           # sequence number the next segment must carry
    bint closed                 # a short or PSH segment ended the run
    int32_t segs
    iovec iov[GRO_MAX_SEGS]

cdef int tso_begin(fp_tso *t, int32_t n, int32_t max_segment) noexcept nogil
cdef int32_t tso_next(fp_tso *t, uint8_t *out) noexcept nogil
cdef int32_t gro_candidate(const uint8_t *p, int32_t n) noexcept nogil
cdef bint gro_extends(fp_gro *g, const uint8_t *p, int32_t n, int32_t tcp_len) noexcept nogil
cdef void gro_start(fp_gro *g, uint8_t *p, int32_t n, int32_t tcp_len) noexcept nogil
cdef int gro_finish(fp_gro *g) noexcept nogil
cdef void vnet_plain(uint8_t *hdr) noexcept nogil
