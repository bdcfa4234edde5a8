# The Security Association Database and binding table, as C structs.
#
# One table holds every SA. Each SA has a cold record (keys, selectors,
# config: read-only once added), a hot record on a cache line of its own
# (sequence counter, replay lock, packet and byte counters: written per
# packet) and its drop counters, apart (written per drop). Mobile
# nodes point at their SAs and at an *endpoint*: an immutable record with the
# CoA and the prebuilt outer IPv6 header. Moving a binding publishes a new
# endpoint index with one release-store; workers acquire-load it once per
# packet, so they see the old or the new record, never a mix.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcmp, memcpy
from fastpath.core.esp cimport fp_keys
from fastpath.core.includes.atomic cimport fp_load_acq_i32

cdef enum:
    N_REASONS = 13        # fastpath/verdicts.py Reason
    MAX_WORKERS = 64
    N_PURPOSES = 4
    PURPOSE_BINDING = 0
    PURPOSE_RR = 1        # return-routability
    PURPOSE_PAYLOAD = 2
    PURPOSE_PD = 3        # prefix-discovery
    DIR_IN = 0
    DIR_OUT = 1
    MODE_TRANSPORT = 0
    MODE_TUNNEL = 1
    ROLE_HA = 0           # home agent: tunnels to mobile nodes' CoAs
    ROLE_MN = 1           # mobile node: the mirror image, tunnels to its HA

cdef struct fp_endpoint:
    uint8_t hdr[40]       # outer IPv6 header template. HA: src = HA, dst = CoA; MN: src = CoA, dst = HA
    int32_t next_free     # free-list link, control thread only
    int32_t mtu           # path MTU toward the CoA: the configured MTU unless a PTB said less

# One cache line of the 64-byte aligned array: all a packet changes of its
# SA, on a line no other SA shares (workers write different SAs at once).
cdef struct fp_sa_hot:
    uint64_t seq          # out: last sequence number used; in: highest accepted (T)
    uint64_t seq_limit    # out: highest number this process may use (crash-safe reservation)
    uint64_t packets
    uint64_t bytes
    int32_t lock          # guards the replay bitmap on commit
    uint8_t _pad[28]

# An SA's drop counters, by reason: written only when a packet is dropped.
cdef struct fp_sa_drops:
    uint64_t n[N_REASONS]

cdef struct fp_sa:
    uint32_t spi
    uint8_t direction
    uint8_t mode
    uint8_t purpose
    uint8_t esn
    uint32_t window       # replay window in packets, 0 = off
    uint32_t nbits        # bitmap size, a power of two >= window
    uint64_t *bitmap
    int32_t mn
    uint8_t hoa[16]
    uint16_t esp_ovh      # tunnel-mode ESP bytes besides payload and padding: 48 + IV + ICV
    uint16_t esp_align    # the cipher's padding alignment. Both copied from keys: encap
                          # sizes packets without a cache miss on the keys
    fp_keys *keys

cdef struct fp_mn:
    uint8_t hoa[16]
    int32_t ep            # endpoint index, -1 = no binding (atomic)
    int32_t sa[N_PURPOSES][2]   # [purpose][direction] -> SA index or -1

cdef struct fp_epoch:
    uint64_t value        # odd while the worker is inside a batch
    uint64_t active
    uint8_t _pad[48]

cdef struct fp_sad:
    fp_sa *sas
    fp_sa_hot *hot
    fp_sa_drops *drops
    int32_t n_sas
    int32_t cap_sas
    fp_mn *mns
    int32_t n_mns
    int32_t cap_mns
    uint32_t *spi_keys    # open addressing, inbound SPIs; 0 = empty (SPIs 0..255 are reserved)
    int32_t *spi_vals
    uint32_t spi_mask
    int32_t *mn_slots     # open addressing on HoA -> MN index; -1 = empty
    uint32_t mn_mask
    fp_endpoint *eps
    int32_t cap_eps
    int32_t free_ep
    fp_epoch *epochs
    uint8_t ha[16]        # the home agent's address (ours, or our HA's in the MN role)
    uint32_t mtu
    uint8_t role


cdef inline uint64_t hoa_hash(const uint8_t *a) noexcept nogil:
    # Every input bit must reach the low (slot) bits: home addresses often
    # differ only in their last byte (::10, ::11, ...). MurmurHash3's 64-bit
    # finaliser over both halves does that.
    cdef uint64_t hi, lo, x
    memcpy(&hi, a, 8)
    memcpy(&lo, a + 8, 8)
    x = lo ^ (hi * <uint64_t>0x9E3779B97F4A7C15)
    x ^= x >> 33
    x *= <uint64_t>0xff51afd7ed558ccd
    x ^= x >> 33
    x *= <uint64_t>0xc4ceb9fe1a85ec53
    return x ^ (x >> 33)


cdef inline int32_t sad_find_mn(const fp_sad *t, const uint8_t *hoa) noexcept nogil:
    """HoA -> mobile node index, or -1. O(1) expected."""
    cdef uint32_t i = <uint32_t>hoa_hash(hoa) & t.mn_mask
    cdef int32_t m
    while True:
        m = fp_load_acq_i32(&t.mn_slots[i])
        if m < 0:
            return -1
        if memcmp(t.mns[m].hoa, hoa, 16) == 0:
            return m
        i = (i + 1) & t.mn_mask


cdef inline const uint8_t *ep_coa(const fp_sad *t, int32_t e) noexcept nogil:
    """The CoA of an endpoint record: its outer destination at the HA, source at the MN."""
    return t.eps[e].hdr + (24 if t.role == ROLE_HA else 8)


cdef inline bint coa_bound(const fp_sad *t, const uint8_t *hoa, const uint8_t *coa) noexcept nogil:
    """Whether home address `hoa` is bound to care-of address `coa` (the
    binding cache check of RFC 6275 §9.3.1). Home agent tables."""
    cdef int32_t m = sad_find_mn(t, hoa)
    cdef int32_t e
    if m < 0:
        return False
    e = fp_load_acq_i32(&t.mns[m].ep)
    return e >= 0 and memcmp(ep_coa(t, e), coa, 16) == 0


cdef inline int32_t sad_find_spi(const fp_sad *t, uint32_t spi) noexcept nogil:
    """Inbound SPI -> SA index, or -1. O(1) expected."""
    cdef uint32_t i = (spi * <uint32_t>0x9E3779B1) & t.spi_mask
    cdef uint32_t k
    if spi == 0:              # reserved (RFC 4303 §2.1); also our empty-slot marker
        return -1
    while True:
        k = t.spi_keys[i]
        if k == 0:
            return -1
        if k == spi:
            return fp_load_acq_i32(&t.spi_vals[i])
        i = (i + 1) & t.spi_mask


cdef class VerifiedBinding:
    """A Mobility Header that arrived on a mobile node's binding SA with a
    valid ICV, a fresh ESP sequence number and a HAO equal to the SA's HoA
    (or, with purpose "prefix-discovery", a Mobile Prefix Solicitation that
    arrived so on its prefix-discovery SA: it moves nothing).

    Only the engine issues these (Python code cannot construct one), and it
    is the only thing SADatabase.move() accepts: no other path moves an SA."""
    cdef readonly str purpose           # the SA's: "binding" or "prefix-discovery"
    cdef readonly bytes home_address
    cdef readonly bytes source          # outer source address (the CoA unless an Alternate CoA says otherwise)
    cdef readonly bytes packet          # IPv6 header chain + MH, ESP removed
    cdef readonly int mh_offset         # where the Mobility Header starts in packet
    cdef readonly uint32_t spi
    cdef readonly uint64_t esp_seq
    cdef int32_t mn
    cdef bint used
    cdef object issuer                  # the SADatabase whose SA verified it
    cdef object _message                # the parsed Mobility Header, once parsed


cdef VerifiedBinding issue_binding(object issuer, int32_t mn, const fp_sa *sa, uint64_t seq,
                                   const uint8_t *pkt, int length, int mh_offset)


cdef class SADatabase:
    cdef fp_sad t
    cdef object _mb_keymgr          # holds the key-setup manager alive (capsule-less: see .pyx)
    cdef void *mb                   # intel-ipsec-mb manager used only to prepare key data
    cdef list _retired              # endpoint indices waiting for a grace period
    cdef int32_t _alloc_endpoint(self, const uint8_t *coa, int32_t mtu) except -2
    cdef int _publish(self, int32_t mn, const uint8_t *coa, int32_t mtu=*) except -1
    cdef int32_t _endpoint_of(self, hoa) except -2
