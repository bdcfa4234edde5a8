# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""TCP segmentation (TSO) and coalescing (GRO) for a TUN opened with IFF_VNET_HDR.

Every read and write on such a TUN starts with a 10-byte virtio_net_hdr
(include/uapi/linux/virtio_net.h, host byte order). Reading, the kernel may
hand us one TCP/IPv6 packet of up to 64 KiB with gso_type TCPV6 and gso_size =
the MSS (it skipped segmenting it because we said, with TUNSETOFFLOAD, that we
would): ``tso_begin``/``tso_next`` cut it into the segments the kernel would
have sent, each with its own sequence number, payload length and full TCP
checksum. Writing, ``gro_*`` merge consecutive in-order segments of one flow
into one super-packet with NEEDS_CSUM + TCPV6, as the kernel's own GRO would
(same flow, contiguous sequence numbers, identical headers but for PSH, all
segments the size of the first but the last); the merged packet goes out with
one writev() whose iovecs point into the batch slots: nothing is copied.

A segment is merged only after its TCP checksum verified: NEEDS_CSUM tells the
kernel the checksum is ours to vouch for, so a corrupt segment must not hide
in a merge (it is written on its own and the kernel drops it as usual).

The Python functions at the end (``split``, ``coalesce``) run the same code on
bytes for tests.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memcmp, memset

cdef extern from "fp_csum.h" nogil:
    uint64_t fp_csum_add(uint64_t sum, const uint8_t *p, size_t n)
    uint16_t fp_csum_fold(uint64_t sum)
    uint64_t fp_csum_pseudo6(const uint8_t *ip6, uint32_t l4_len, uint8_t nh)

cdef enum:
    IP6_LEN = 40
    NH_TCP = 6
    TCP_FIN = 0x01
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    TCP_CWR = 0x80


# big-endian loads and stores of header fields (includes/fp_bytes.h)
from fastpath.core.includes.fpbytes cimport (fp_ld_be16 as rd16, fp_ld_be32 as rd32,
                                             fp_st_be16 as wr16, fp_st_be32 as wr32)

cdef inline uint16_t host16(const uint8_t *p) noexcept nogil:
    """A virtio_net_hdr field (host byte order, possibly unaligned)."""
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline void put_host16(uint8_t *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)

cdef inline uint16_t csum_final(uint64_t sum) noexcept nogil:
    """Complemented checksum; 0 goes out as 0xffff, as the kernel does."""
    cdef uint16_t c = ~fp_csum_fold(sum)
    return c if c else 0xffff


cdef void vnet_plain(uint8_t *hdr) noexcept nogil:
    """The header of an ordinary packet: no offload asked of the kernel."""
    memset(hdr, 0, VNET_HDR_LEN)


cdef int tso_begin(fp_tso *t, int32_t n, int32_t max_segment) noexcept nogil:
    """Look at what read() put in t.buf (n bytes with the header). An ordinary
    packet is left at t.buf + VNET_HDR_LEN (t.len bytes), its checksum
    completed when the kernel left that to us; a TCPV6 super-packet becomes
    the state tso_next() cuts segments from. Anything else is TSO_BAD."""
    cdef uint8_t *h = t.buf
    cdef uint8_t *p = t.buf + VNET_HDR_LEN
    cdef uint8_t gso_type
    cdef int32_t start, off, tcp_len, mss
    cdef uint64_t sum
    t.next = 0
    t.index = 0
    if n < VNET_HDR_LEN:
        return TSO_BAD
    t.len = n - VNET_HDR_LEN
    gso_type = h[1]
    start = host16(h + 6)
    off = host16(h + 8)
    if gso_type == VNET_GSO_NONE:
        if h[0] & VNET_F_NEEDS_CSUM:
            # the field holds the pseudo-header sum; add the rest and complement
            if start + off + 2 > t.len or start < IP6_LEN:
                return TSO_BAD
            sum = rd16(p + start + off)
            wr16(p + start + off, 0)
            sum = fp_csum_add(sum, p + start, t.len - start)
            wr16(p + start + off, csum_final(sum))
        t.next = t.len
        return TSO_PLAIN
    if (gso_type & ~VNET_GSO_ECN) != VNET_GSO_TCPV6 or not (h[0] & VNET_F_NEEDS_CSUM):
        return TSO_BAD
    # Only what the kernel sends for TCP over IPv6 without extension headers.
    # hdr_len is recomputed: the kernel reports its linear length there.
    if (start != IP6_LEN or off != 16 or t.len < IP6_LEN + 20 or (p[0] >> 4) != 6
            or p[6] != NH_TCP or IP6_LEN + rd16(p + 4) != t.len):
        return TSO_BAD
    tcp_len = (p[IP6_LEN + 12] >> 4) * 4
    mss = host16(h + 4)
    if tcp_len < 20 or IP6_LEN + tcp_len > t.len or mss == 0:
        return TSO_BAD
    if IP6_LEN + tcp_len + mss > max_segment:
        return TSO_BAD
    t.hdr_len = IP6_LEN + tcp_len
    t.gso_size = mss
    t.next = t.hdr_len
    t.seq0 = rd32(p + IP6_LEN + 4)
    t.ecn = (gso_type & VNET_GSO_ECN) != 0
    if t.next >= t.len:          # no payload: one segment of headers alone
        t.next = t.len
        return TSO_PLAIN if tso_fix_alone(t) else TSO_BAD
    return TSO_SPLIT


cdef bint tso_fix_alone(fp_tso *t) noexcept nogil:
    cdef uint8_t *p = t.buf + VNET_HDR_LEN
    cdef int32_t l4 = t.len - IP6_LEN
    wr16(p + IP6_LEN + 16, 0)
    wr16(p + IP6_LEN + 16, csum_final(fp_csum_pseudo6(p, l4, NH_TCP) + fp_csum_add(0, p + IP6_LEN, l4)))
    return True


cdef int32_t tso_next(fp_tso *t, uint8_t *out) noexcept nogil:
    """Write the next segment to out (room for hdr_len + gso_size bytes) and
    return its length; 0 once the super-packet is used up."""
    cdef const uint8_t *p = t.buf + VNET_HDR_LEN
    cdef int32_t payload = t.len - t.next
    cdef int32_t l4, n
    cdef uint8_t *tcp = out + IP6_LEN
    if payload <= 0:
        return 0
    if payload > t.gso_size:
        payload = t.gso_size
    n = t.hdr_len + payload
    l4 = n - IP6_LEN
    memcpy(out, p, t.hdr_len)
    memcpy(out + t.hdr_len, p + t.next, payload)
    wr16(out + 4, <uint16_t>l4)
    wr32(tcp + 4, t.seq0 + <uint32_t>(t.next - t.hdr_len))
    if t.next + payload < t.len:
        tcp[13] &= ~(TCP_FIN | TCP_PSH)      # only the last segment ends a push
    if t.index > 0 and t.ecn:
        tcp[13] &= ~TCP_CWR
    wr16(tcp + 16, 0)
    wr16(tcp + 16, csum_final(fp_csum_pseudo6(out, l4, NH_TCP) + fp_csum_add(0, tcp, l4)))
    t.next += payload
    t.index += 1
    return n


cdef int32_t gro_candidate(const uint8_t *p, int32_t n) noexcept nogil:
    """TCP header length if p (n bytes) may join a merge: IPv6 without
    extension headers, TCP with ACK (and maybe PSH) only, payload, a length
    that matches the header and a valid checksum. 0 otherwise."""
    cdef int32_t tcp_len, flags
    if n <= IP6_LEN + 20 or (p[0] >> 4) != 6 or p[6] != NH_TCP or IP6_LEN + rd16(p + 4) != n:
        return 0
    tcp_len = (p[IP6_LEN + 12] >> 4) * 4
    flags = p[IP6_LEN + 13]
    if tcp_len < 20 or IP6_LEN + tcp_len >= n or (flags != TCP_ACK and flags != (TCP_ACK | TCP_PSH)):
        return 0
    if fp_csum_fold(fp_csum_pseudo6(p, n - IP6_LEN, NH_TCP) + fp_csum_add(0, p + IP6_LEN, n - IP6_LEN)) != 0xffff:
        return 0
    return tcp_len


cdef void gro_start(fp_gro *g, uint8_t *p, int32_t n, int32_t tcp_len) noexcept nogil:
    """Open a run with the candidate p (tcp_len from gro_candidate)."""
    g.first = p
    g.first_len = n
    g.tcp_len = tcp_len
    g.l4_len = n - IP6_LEN
    g.gso_size = n - IP6_LEN - tcp_len
    g.next_seq = rd32(p + IP6_LEN + 4) + <uint32_t>g.gso_size
    g.closed = (p[IP6_LEN + 13] & TCP_PSH) != 0
    g.segs = 1
    g.iov[0].iov_base = p - VNET_HDR_LEN
    g.iov[0].iov_len = n + VNET_HDR_LEN


cdef bint gro_extends(fp_gro *g, const uint8_t *p, int32_t n, int32_t tcp_len) noexcept nogil:
    """Append candidate p to the run if it is the flow's next segment."""
    cdef const uint8_t *f = g.first
    cdef int32_t payload = n - IP6_LEN - tcp_len
    if g.closed or g.segs >= GRO_MAX_SEGS or tcp_len != g.tcp_len or payload > g.gso_size:
        return False
    if g.l4_len + payload > GRO_MAX_L4 or rd32(p + IP6_LEN + 4) != g.next_seq:
        return False
    # same version/class/flow label, next header and hop limit, same addresses
    if memcmp(p, f, 4) != 0 or memcmp(p + 6, f + 6, 34) != 0:
        return False
    # same ports, acknowledgment, data offset, window, urgent pointer and options;
    # the flags may differ only by PSH (checked by gro_candidate: ACK[|PSH])
    if (memcmp(p + IP6_LEN, f + IP6_LEN, 4) != 0 or memcmp(p + IP6_LEN + 8, f + IP6_LEN + 8, 5) != 0
            or memcmp(p + IP6_LEN + 14, f + IP6_LEN + 14, 2) != 0
            or memcmp(p + IP6_LEN + 18, f + IP6_LEN + 18, tcp_len - 18) != 0):
        return False
    g.iov[g.segs].iov_base = <void *>(p + IP6_LEN + tcp_len)
    g.iov[g.segs].iov_len = payload
    g.segs += 1
    g.l4_len += payload
    g.next_seq += <uint32_t>payload
    if payload < g.gso_size or (p[IP6_LEN + 13] & TCP_PSH):
        g.closed = True
        g.first[IP6_LEN + 13] |= p[IP6_LEN + 13] & TCP_PSH
    return True


cdef int gro_finish(fp_gro *g) noexcept nogil:
    """Write the virtio_net_hdr in front of the first segment and fix its
    headers for the merged length; the run is g.iov[0:return value]."""
    cdef uint8_t *h = g.first - VNET_HDR_LEN
    cdef uint8_t *p = g.first
    memset(h, 0, VNET_HDR_LEN)
    if g.segs == 1:
        return 1
    h[0] = VNET_F_NEEDS_CSUM
    h[1] = VNET_GSO_TCPV6
    put_host16(h + 2, <uint16_t>(IP6_LEN + g.tcp_len))     # hdr_len
    put_host16(h + 4, <uint16_t>g.gso_size)                # gso_size
    put_host16(h + 6, IP6_LEN)                             # csum_start
    put_host16(h + 8, 16)                                  # csum_offset
    wr16(p + 4, <uint16_t>g.l4_len)
    # NEEDS_CSUM: the field carries the pseudo-header sum, the kernel adds the rest
    wr16(p + IP6_LEN + 16, fp_csum_fold(fp_csum_pseudo6(p, g.l4_len, NH_TCP)))
    return g.segs


# --- the same code on bytes, for tests --------------------------------------------

def split(bytes packet, int max_segment=65535):
    """(kind, [segments]) for what a vnet-header TUN read returned: kind is
    "plain" (one packet, checksum completed if asked), "split" or "bad"."""
    cdef fp_tso t
    cdef bytearray buf = bytearray(packet)
    cdef bytearray seg = bytearray(max(max_segment, 1))
    cdef int32_t n
    cdef int kind
    t.buf = <uint8_t *><char *>buf
    kind = tso_begin(&t, len(packet), max_segment)
    if kind == TSO_BAD:
        return "bad", []
    if kind == TSO_PLAIN:
        return "plain", [bytes(buf[VNET_HDR_LEN:VNET_HDR_LEN + t.len])]
    out = []
    while True:
        n = tso_next(&t, <uint8_t *><char *>seg)
        if n == 0:
            break
        out.append(bytes(seg[:n]))
    return "split", out


def coalesce(packets):
    """Merge a list of IPv6 packets as the worker merges one batch bound for
    the home TUN: [bytes written], each a virtio_net_hdr + packet."""
    cdef fp_gro g
    cdef list slots = []
    cdef list out = []
    cdef bytearray s
    cdef uint8_t *p
    cdef int32_t n, tl
    cdef bint open_run = False
    for pkt in packets:
        s = bytearray(VNET_HDR_LEN) + bytearray(pkt)
        slots.append(s)                       # keeps the buffers alive for the iovecs

    for s in slots:
        p = <uint8_t *><char *>s + VNET_HDR_LEN
        n = len(s) - VNET_HDR_LEN
        tl = gro_candidate(p, n)
        if open_run and tl and gro_extends(&g, p, n, tl):
            continue
        if open_run:
            out.append(_gathered(&g))
            open_run = False
        if tl:
            gro_start(&g, p, n, tl)
            open_run = True
        else:
            vnet_plain(p - VNET_HDR_LEN)
            out.append(bytes(s))
    if open_run:
        out.append(_gathered(&g))
    return out


cdef bytes _gathered(fp_gro *g):
    cdef int k = gro_finish(g), i
    cdef bytearray b = bytearray()
    for i in range(k):
        b += (<const char *>g.iov[i].iov_base)[:g.iov[i].iov_len]
    return bytes(b)
