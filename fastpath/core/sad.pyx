# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""SA table, binding endpoints and the grace period (see sad.pxd).

Everything here runs on the control side, with the GIL: adding SAs and
mobile nodes, moving a binding, waiting for the grace period, reading
counters. Workers only read the tables (sad.pxd inline lookups) and write
the hot records.
"""
import time

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, memcmp

from fastpath.core.esp cimport fp_keys, keys_init, keys_free
from fastpath.core.esp import KEYS_UNSUPPORTED
from fastpath.core.includes.atomic cimport *
from fastpath.core.includes.ipsecmb cimport fp_mb_mgr, fp_mb_new, fp_mb_free

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

from fastpath.algorithms import Algorithm
from fastpath.verdicts import REASON_NAMES

PURPOSES = {"binding": PURPOSE_BINDING, "return-routability": PURPOSE_RR,
            "payload": PURPOSE_PAYLOAD, "prefix-discovery": PURPOSE_PD}
PURPOSE_NAMES = {v: k for k, v in PURPOSES.items()}
DIRECTIONS = {"in": DIR_IN, "out": DIR_OUT}

cdef object _ISSUER = object()   # private token: only this module mints VerifiedBinding


cdef inline uint32_t _pow2_at_least(uint64_t n) noexcept:
    cdef uint64_t p = 1
    while p < n:
        p <<= 1
    return <uint32_t>p


cdef inline void *_aligned_zero(size_t n):
    cdef size_t sz = (n + 63) & ~(<size_t>63)
    cdef void *p = aligned_alloc(64, sz if sz else 64)
    if p == NULL:
        raise MemoryError()
    memset(p, 0, sz)
    return p


cdef class VerifiedBinding:
    def __cinit__(self, token):
        if token is not _ISSUER:
            raise TypeError("VerifiedBinding is issued by the engine for an authenticated "
                            "Binding Update; it cannot be constructed")

    @property
    def mobility_header(self):
        return self.packet[self.mh_offset:]

    def message(self):
        """The Mobility Header, parsed (and its checksum verified) once: the
        binding cache and move() read the same object, which Python code
        cannot replace. Raises fastpath.mh.MHError when malformed."""
        if self._message is None:
            from fastpath import mh
            self._message = mh.parse(self.mobility_header,
                                     *mh.pseudo_header_addresses(self.packet, self.mh_offset))
        return self._message

    def __repr__(self):
        import ipaddress
        return (f"<VerifiedBinding hoa={ipaddress.IPv6Address(self.home_address)} "
                f"src={ipaddress.IPv6Address(self.source)} spi=0x{self.spi:x} seq={self.esp_seq}>")


cdef VerifiedBinding issue_binding(object issuer, int32_t mn, const fp_sa *sa, uint64_t seq,
                                   const uint8_t *pkt, int length, int mh_offset):
    cdef VerifiedBinding vb = VerifiedBinding.__new__(VerifiedBinding, _ISSUER)
    vb.issuer = issuer
    vb.mn = mn
    vb.spi = sa.spi
    vb.esp_seq = seq
    vb.purpose = PURPOSE_NAMES[sa.purpose]
    vb.home_address = PyBytes_FromStringAndSize(<const char *>sa.hoa, 16)
    vb.source = PyBytes_FromStringAndSize(<const char *>pkt + 8, 16)
    vb.packet = PyBytes_FromStringAndSize(<const char *>pkt, length)
    vb.mh_offset = mh_offset
    vb.used = False
    return vb


def _addr(value, what):
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value)
    import ipaddress
    try:
        return ipaddress.IPv6Address(value).packed
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


cdef class SADatabase:
    """The SA table and binding endpoints shared by every worker.

    Capacities are fixed at creation: workers index the arrays without
    locks, so they never move."""

    def __cinit__(self, ha_address, int mtu=1500, int sa_capacity=64, int mn_capacity=32,
                  bint ipsecmb=True, str role="home-agent"):
        cdef int i
        cdef int arch = 0
        cdef bytes ha
        if sa_capacity < 1 or mn_capacity < 1:
            raise ValueError("capacities must be positive")
        ha = _addr(ha_address, "HA address")
        memcpy(self.t.ha, <const uint8_t *>ha, 16)
        self.t.mtu = mtu
        if role not in ("home-agent", "mobile-node"):
            raise ValueError(f"role is home-agent or mobile-node, not {role!r}")
        self.t.role = ROLE_HA if role == "home-agent" else ROLE_MN
        self.t.cap_sas = sa_capacity
        self.t.cap_mns = mn_capacity
        self.t.sas = <fp_sa *>calloc(sa_capacity, sizeof(fp_sa))
        assert sizeof(fp_sa_hot) == 64         # one line: see fp_sa_hot
        self.t.hot = <fp_sa_hot *>_aligned_zero(sa_capacity * sizeof(fp_sa_hot))
        self.t.drops = <fp_sa_drops *>calloc(sa_capacity, sizeof(fp_sa_drops))
        self.t.mns = <fp_mn *>calloc(mn_capacity, sizeof(fp_mn))
        self.t.spi_mask = _pow2_at_least(2 * sa_capacity) - 1
        self.t.spi_keys = <uint32_t *>calloc(self.t.spi_mask + 1, sizeof(uint32_t))
        self.t.spi_vals = <int32_t *>calloc(self.t.spi_mask + 1, sizeof(int32_t))
        self.t.mn_mask = _pow2_at_least(2 * mn_capacity) - 1
        self.t.mn_slots = <int32_t *>malloc((self.t.mn_mask + 1) * sizeof(int32_t))
        self.t.cap_eps = 2 * mn_capacity + 64
        self.t.eps = <fp_endpoint *>_aligned_zero(self.t.cap_eps * sizeof(fp_endpoint))
        self.t.epochs = <fp_epoch *>_aligned_zero(MAX_WORKERS * sizeof(fp_epoch))
        if (self.t.sas == NULL or self.t.drops == NULL or self.t.mns == NULL
                or self.t.spi_keys == NULL or self.t.spi_vals == NULL or self.t.mn_slots == NULL):
            raise MemoryError()
        for i in range(self.t.mn_mask + 1):
            self.t.mn_slots[i] = -1
        for i in range(self.t.cap_eps):
            self.t.eps[i].next_free = i + 1 if i + 1 < self.t.cap_eps else -1
        self.t.free_ep = 0
        self._retired = []
        # GCM key data must be prepared by a manager of the workers' type:
        # both come from init_mb_mgr_auto on the same CPU.
        self.mb = fp_mb_new(&arch) if ipsecmb else NULL

    def __dealloc__(self):
        cdef int i
        for i in range(self.t.n_sas):
            if self.t.sas[i].keys != NULL:
                keys_free(self.t.sas[i].keys)
                free(self.t.sas[i].keys)
            free(self.t.sas[i].bitmap)
        free(self.t.sas)
        free(self.t.hot)
        free(self.t.drops)
        free(self.t.mns)
        free(self.t.spi_keys)
        free(self.t.spi_vals)
        free(self.t.mn_slots)
        free(self.t.eps)
        free(self.t.epochs)
        fp_mb_free(<fp_mb_mgr *>self.mb)

    # -- building the table ------------------------------------------------
    @property
    def ha_address(self):
        return PyBytes_FromStringAndSize(<const char *>self.t.ha, 16)

    @property
    def mtu(self):
        return self.t.mtu

    @property
    def role(self):
        return "home-agent" if self.t.role == ROLE_HA else "mobile-node"

    @property
    def n_sas(self):
        return self.t.n_sas

    @property
    def n_mobile_nodes(self):
        return self.t.n_mns

    @property
    def ipsecmb_keys(self):
        """True when SAs carry intel-ipsec-mb key data (needed by that backend)."""
        return self.mb != NULL

    def add_mobile_node(self, hoa, coa=None):
        """Add a mobile node by home address, with an optional static binding
        (config `care_of_address`). Returns its index."""
        cdef bytes h = _addr(hoa, "home address")
        cdef bytes c
        cdef int32_t m
        cdef uint32_t i
        if sad_find_mn(&self.t, h) >= 0:
            raise ValueError(f"duplicate home address {_fmt(h)}")
        if self.t.n_mns >= self.t.cap_mns:
            raise ValueError(f"mobile node table full ({self.t.cap_mns})")
        m = self.t.n_mns
        memcpy(self.t.mns[m].hoa, <const uint8_t *>h, 16)
        self.t.mns[m].ep = -1
        for i in range(N_PURPOSES):
            self.t.mns[m].sa[i][0] = -1
            self.t.mns[m].sa[i][1] = -1
        if coa is not None:
            c = _addr(coa, "care-of address")
            self._publish(m, <const uint8_t *>c)
        self.t.n_mns += 1
        i = <uint32_t>hoa_hash(h) & self.t.mn_mask
        while self.t.mn_slots[i] >= 0:
            i = (i + 1) & self.t.mn_mask
        fp_store_rel_i32(&self.t.mn_slots[i], m)
        return m

    def add_sa(self, hoa, str purpose, str direction, uint32_t spi, algorithm,
               bytes enc_key=b"", bytes auth_key=b"", bytes salt=b"", bint esn=False,
               int replay_window=1024):
        """Add one SA of the mobile node `hoa`. Returns its index."""
        cdef bytes h = _addr(hoa, "home address")
        cdef int32_t m = sad_find_mn(&self.t, h)
        cdef int32_t s
        cdef fp_sa *sa
        cdef uint32_t i
        cdef int p, d
        if not isinstance(algorithm, Algorithm):
            from fastpath.algorithms import get
            algorithm = get(algorithm)
        if m < 0:
            raise ValueError(f"unknown home address {_fmt(h)}")
        if purpose not in PURPOSES or direction not in DIRECTIONS:
            raise ValueError(f"bad purpose/direction {purpose}/{direction}")
        p = PURPOSES[purpose]
        d = DIRECTIONS[direction]
        if spi < 256:
            raise ValueError(f"SPI 0x{spi:x} is reserved (RFC 4303 §2.1)")
        if self.t.mns[m].sa[p][d] >= 0:
            raise ValueError(f"{_fmt(h)} already has a {purpose} {direction} SA")
        if d == DIR_IN and sad_find_spi(&self.t, spi) >= 0:
            raise ValueError(f"duplicate inbound SPI 0x{spi:x}")
        if self.t.n_sas >= self.t.cap_sas:
            raise ValueError(f"SA table full ({self.t.cap_sas})")
        if replay_window < 0 or replay_window > 1 << 20:
            raise ValueError("replay window out of range")
        if (len(enc_key) != algorithm.enc_key_len or len(auth_key) != algorithm.auth_key_len
                or len(salt) != algorithm.salt_len):
            raise ValueError(f"key lengths do not fit {algorithm.name}")
        s = self.t.n_sas
        sa = &self.t.sas[s]
        memset(sa, 0, sizeof(fp_sa))
        sa.spi = spi
        sa.direction = d
        sa.purpose = p
        sa.mode = MODE_TUNNEL if p in (PURPOSE_RR, PURPOSE_PAYLOAD) else MODE_TRANSPORT
        sa.esn = esn
        sa.mn = m
        memcpy(sa.hoa, <const uint8_t *>h, 16)
        sa.esp_ovh = 48 + algorithm.iv_len + algorithm.icv_len
        sa.esp_align = algorithm.align
        if d == DIR_IN and replay_window > 0:
            sa.window = replay_window
            sa.nbits = _pow2_at_least(replay_window if replay_window > 64 else 64)
            sa.bitmap = <uint64_t *>calloc(sa.nbits // 64, sizeof(uint64_t))
            if sa.bitmap == NULL:
                raise MemoryError()
        sa.keys = <fp_keys *>_aligned_zero(sizeof(fp_keys))
        rc = keys_init(sa.keys, algorithm.kind, algorithm.hash, algorithm.icv_len,
                       algorithm.iv_len, algorithm.align,
                       <const uint8_t *>enc_key, len(enc_key),
                       <const uint8_t *>auth_key, len(auth_key),
                       <const uint8_t *>salt, <fp_mb_mgr *>self.mb)
        if rc == -2:
            raise ValueError(KEYS_UNSUPPORTED)
        if rc != 0:
            raise MemoryError()
        memset(&self.t.hot[s], 0, sizeof(fp_sa_hot))
        memset(&self.t.drops[s], 0, sizeof(fp_sa_drops))
        self.t.hot[s].seq_limit = <uint64_t>0xFFFFFFFFFFFFFFFF if esn else <uint64_t>0xFFFFFFFF
        self.t.n_sas += 1
        self.t.mns[m].sa[p][d] = s
        if d == DIR_IN:
            i = (spi * <uint32_t>0x9E3779B1) & self.t.spi_mask
            while self.t.spi_keys[i] != 0:
                i = (i + 1) & self.t.spi_mask
            fp_store_rel_i32(&self.t.spi_vals[i], s)
            self.t.spi_keys[i] = spi
        return s

    # -- bindings: the only way an endpoint changes -------------------------
    cdef int32_t _alloc_endpoint(self, const uint8_t *coa, int32_t mtu) except -2:
        cdef int32_t e = self.t.free_ep
        cdef uint8_t *h
        if e < 0:
            self.wait_grace(1.0)
            e = self.t.free_ep
            if e < 0:
                raise RuntimeError("no free endpoint record (workers stuck in a batch?)")
        self.t.free_ep = self.t.eps[e].next_free
        self.t.eps[e].mtu = mtu
        h = self.t.eps[e].hdr
        memset(h, 0, 40)
        h[0] = 0x60
        h[7] = 64              # outer hop limit (SPEC §2)
        if self.t.role == ROLE_HA:
            memcpy(h + 8, self.t.ha, 16)
            memcpy(h + 24, coa, 16)
        else:
            memcpy(h + 8, coa, 16)
            memcpy(h + 24, self.t.ha, 16)
        return e

    cdef int _publish(self, int32_t m, const uint8_t *coa, int32_t mtu=0) except -1:
        """Point mobile node m at a new endpoint record for `coa` (NULL: no
        binding) whose path MTU is `mtu` (0: the configured one)."""
        cdef int32_t old = self.t.mns[m].ep
        cdef int32_t e = -1
        if coa != NULL:
            e = self._alloc_endpoint(coa, mtu if mtu > 0 else <int32_t>self.t.mtu)
        fp_store_rel_i32(&self.t.mns[m].ep, e)
        if old >= 0:
            self._retired.append(old)   # freed after the next grace period
        return 0

    def move(self, VerifiedBinding binding not None, coa):
        """Move the mobile node of an authenticated Binding Update to `coa`.

        `coa` must be the care-of address the BU itself names: its Alternate
        Care-of Address option (inside ESP), or the outer source when the
        option is absent (RFC 3776 §4.3, RFC 6275 §9.5.1). Each binding is
        single-use. Every tunnel SA of that node (they share the endpoint)
        moves at once; sequence numbers and replay state are untouched. Call
        wait_grace() before sending the Binding Ack."""
        cdef bytes c = _addr(coa, "care-of address")
        self._check_binding(binding)
        if c != _named_coa(binding):
            raise ValueError("care-of address is not the one the Binding Update names")
        binding.used = True
        self._publish(binding.mn, c)

    def deregister(self, VerifiedBinding binding not None):
        """Remove the binding named by an authenticated BU (lifetime 0)."""
        self._check_binding(binding)
        _named_coa(binding)          # it must be a well-formed Binding Update
        binding.used = True
        self._publish(binding.mn, NULL)

    def _check_binding(self, VerifiedBinding binding):
        if binding.purpose != "binding":
            raise ValueError("only a Binding Update from a binding SA moves a binding")
        if binding.issuer is not self:
            raise ValueError("this Binding Update was verified by another SA table")
        if binding.used:
            raise ValueError("this Binding Update was already applied")
        if binding.mn < 0 or binding.mn >= self.t.n_mns:
            raise ValueError("binding names no mobile node of this table")

    def expire(self, hoa):
        """Remove a binding whose lifetime ran out (control-plane timer).
        Removing never sends traffic anywhere new, so it needs no BU."""
        cdef bytes h = _addr(hoa, "home address")
        cdef int32_t m = sad_find_mn(&self.t, h)
        if m < 0:
            raise KeyError(hoa)
        self._publish(m, NULL)

    def relocate(self, hoa, coa):
        """Mobile-node role only: this node moved to a new care-of address
        (its own business: the HA learns it from the Binding Update). Traffic
        to the HA leaves from `coa` once this returns and wait_grace() has."""
        cdef bytes h = _addr(hoa, "home address")
        cdef bytes c = _addr(coa, "care-of address")
        cdef int32_t m = sad_find_mn(&self.t, h)
        if self.t.role != ROLE_MN:
            raise PermissionError("a home agent moves bindings only on authenticated "
                                  "Binding Updates (SADatabase.move)")
        if m < 0:
            raise KeyError(hoa)
        self._publish(m, <const uint8_t *>c)

    def set_path_mtu(self, coa, int mtu):
        """The path MTU of the tunnel between care-of address `coa` and the
        home agent (an ICMPv6 Packet Too Big said so, or it aged out back to
        the configured MTU), clamped to [1280, configured MTU]: at a home
        agent, toward the mobile nodes at `coa`; at a mobile node, from its
        own care-of address `coa` (after a move the new path starts at the
        configured MTU). Each mobile node now at `coa` gets a new endpoint
        record - the same addresses, this MTU - published as a move is: a
        batch sees the old record or the new one, never half. No address
        changes here (only move() does that, for an authenticated Binding
        Update). Returns how many mobile nodes it touched."""
        cdef bytes c = _addr(coa, "care-of address")
        cdef int32_t m, e, n = 0
        mtu = max(1280, min(mtu, <int>self.t.mtu))
        for m in range(self.t.n_mns):
            e = self.t.mns[m].ep
            if (e >= 0 and self.t.eps[e].mtu != mtu
                    and memcmp(ep_coa(&self.t, e), <const char *>c, 16) == 0):
                self._publish(m, <const uint8_t *>c, mtu)
                n += 1
        return n

    cdef int32_t _endpoint_of(self, hoa) except -2:
        """The current endpoint record of a home address (-1: no binding)."""
        cdef bytes h = _addr(hoa, "home address")
        cdef int32_t m = sad_find_mn(&self.t, h)
        if m < 0:
            raise KeyError(hoa)
        return fp_load_acq_i32(&self.t.mns[m].ep)

    def path_mtu(self, hoa):
        """The tunnel MTU toward a home address's current CoA, or None."""
        cdef int32_t e = self._endpoint_of(hoa)
        return None if e < 0 else self.t.eps[e].mtu

    def care_of_address(self, hoa):
        """Current CoA of a home address, or None."""
        cdef int32_t e = self._endpoint_of(hoa)
        if e < 0:
            return None
        return PyBytes_FromStringAndSize(<const char *>ep_coa(&self.t, e), 16)

    # -- workers and the grace period ----------------------------------------
    def register_worker(self):
        cdef int i
        for i in range(MAX_WORKERS):
            if not self.t.epochs[i].active:
                self.t.epochs[i].active = 1
                return i
        raise RuntimeError(f"at most {MAX_WORKERS} workers")

    def unregister_worker(self, int w):
        self.t.epochs[w].active = 0

    def wait_grace(self, double timeout=1.0):
        """Return True once every worker has been outside a batch at least
        once since this call began (so none still holds an endpoint index read
        before it); then reclaim retired endpoints. False on timeout."""
        cdef uint64_t snap[MAX_WORKERS]
        cdef int i
        cdef bint done
        cdef double deadline = time.monotonic() + timeout
        cdef list retired = self._retired
        fp_fence()
        for i in range(MAX_WORKERS):
            snap[i] = fp_epoch_read(&self.t.epochs[i].value)
        while True:
            done = True
            for i in range(MAX_WORKERS):
                if (snap[i] & 1) and fp_epoch_read(&self.t.epochs[i].value) == snap[i]:
                    done = False
                    break
            if done:
                break
            if time.monotonic() > deadline:
                return False
            with nogil:
                fp_sleep_us(20)
        self._retired = []
        for e in retired:
            self.t.eps[<int32_t>e].next_free = self.t.free_ep
            self.t.free_ep = <int32_t>e
        return True

    # -- sequence numbers (crash-safe reservations live in the forwarder) ----
    def _sa_by_spi(self, uint32_t spi, direction=None):
        cdef int i
        for i in range(self.t.n_sas):
            if self.t.sas[i].spi == spi and (direction is None or
                                             self.t.sas[i].direction == DIRECTIONS[direction]):
                return i
        raise KeyError(f"no SA with SPI 0x{spi:x}")

    def sequence(self, uint32_t spi, direction="out"):
        return fp_load_u64(&self.t.hot[self._sa_by_spi(spi, direction)].seq)

    def resume_sequence(self, uint32_t spi, uint64_t last_used):
        """Start an outbound SA after `last_used` (restart past a reservation).
        Only moves forward: a sequence number is never handed out twice."""
        cdef int i = self._sa_by_spi(spi, "out")
        if last_used > fp_load_u64(&self.t.hot[i].seq):
            fp_store_u64(&self.t.hot[i].seq, last_used)

    def set_sequence_limit(self, uint32_t spi, uint64_t limit):
        """Highest sequence number workers may use on an outbound SA."""
        fp_store_u64(&self.t.hot[self._sa_by_spi(spi, "out")].seq_limit, limit)

    # -- read-only views -----------------------------------------------------
    def sas(self):
        """One dict per SA (no key material)."""
        cdef int i
        out = []
        for i in range(self.t.n_sas):
            out.append(self._sa_view(i))
        return out

    def _sa_view(self, int i):
        cdef fp_sa *sa = &self.t.sas[i]
        cdef fp_sa_hot *h = &self.t.hot[i]
        cdef uint64_t *n = self.t.drops[i].n
        cdef uint64_t v
        drops = {}
        for r in range(1, N_REASONS):
            v = fp_load_u64(&n[r])
            if v:
                drops[REASON_NAMES[r]] = v
        d = "in" if sa.direction == DIR_IN else "out"
        return {
            "index": i, "spi": sa.spi, "direction": d,
            "purpose": PURPOSE_NAMES[sa.purpose],
            "mode": "tunnel" if sa.mode == MODE_TUNNEL else "transport",
            "esn": bool(sa.esn), "replay_window": sa.window,
            "home_address": _fmt(PyBytes_FromStringAndSize(<const char *>sa.hoa, 16)),
            "sequence": fp_load_u64(&h.seq),
            "packets_" + d: fp_load_u64(&h.packets),
            "bytes_" + d: fp_load_u64(&h.bytes),
            "drops": drops,
        }

    def mobile_nodes(self):
        cdef int i
        out = []
        for i in range(self.t.n_mns):
            hoa = PyBytes_FromStringAndSize(<const char *>self.t.mns[i].hoa, 16)
            coa = self.care_of_address(hoa)
            out.append({"home_address": _fmt(hoa),
                        "care_of_address": _fmt(coa) if coa else None,
                        "path_mtu": self.path_mtu(hoa)})
        return out


def _fmt(b):
    import ipaddress
    return str(ipaddress.IPv6Address(bytes(b)))


def _named_coa(VerifiedBinding b):
    """The CoA a verified BU names: its Alternate CoA option, else the source."""
    from fastpath import mh
    msg = b.message()
    if not isinstance(msg, mh.BindingUpdate):
        raise ValueError(f"only a Binding Update moves a binding, not {type(msg).__name__}")
    alt = mh.alternate_coa(msg)
    return alt if alt is not None else b.source
