# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A forwarding worker: the loop one thread runs over its two TUN queues.

The whole loop runs without the GIL: read up to a batch from the home queue,
encapsulate, write; read up to a batch from the wire queue, decapsulate,
write; sleep in poll() when both are empty. Packets for the control plane
(punts, authenticated Binding Updates) go into a bounded single-producer
ring with an eventfd to wake the control thread; a full ring drops and
counts, it never blocks the worker.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from libc.errno cimport errno, EAGAIN, EINTR
from posix.unistd cimport read, write, close
from fastpath.core.includes.bucket cimport fp_bucket_take
from cpython.bytes cimport PyBytes_FromStringAndSize

from fastpath.core.batch cimport Batch, HEADROOM
from fastpath.core.engine cimport (Engine, fp_binding_rec, V_TO_WIRE, V_TO_HOME, V_PUNT,
                                   BINDING_MAX, R_FRAGMENT, R_NO_BINDING)
from fastpath.core.sad cimport SADatabase, issue_binding
from fastpath.core.includes.atomic cimport fp_load_u64, fp_store_u64
from fastpath.core.offload cimport (fp_tso, fp_gro, iovec, tso_begin, tso_next, gro_candidate,
                                    gro_start, gro_extends, gro_finish, vnet_plain,
                                    VNET_HDR_LEN, GSO_BUF, TSO_PLAIN, TSO_SPLIT, TSO_BAD)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from "<sys/uio.h>" nogil:
    long writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

cdef enum:
    RING_SLOTS = 1024       # a burst of BUs waits here while the control loop catches up
    PUNT_DATA = 2048        # the smallest slot: a worker's slots hold its largest packet
    KIND_PUNT = 1          # a wire-side packet the engine does not handle, unchanged
    KIND_BINDING = 2       # authenticated: an MH from a binding SA, an MPS from a prefix-discovery SA
    KIND_UNBOUND_HAO = 3   # a punt noted NO_BINDING: its Home Address option names no binding
    FRAG_BUF = 9216        # one fragment (at most the wire MTU we fragment for)
    PUNT_RATE = 10000      # default policing of unauthenticated punts, per worker and second
    PUNT_BURST = 1000
    SIDE_HOME = 0
    SIDE_WIRE = 1
    READ_ALL = 1 << 30     # a read round's cap: until EAGAIN or a full batch

cdef struct fp_punt:
    int32_t kind
    int32_t length
    int32_t sa
    int32_t mh_offset
    uint64_t seq
    uint8_t *data           # data_size bytes of the ring's buffer


cdef class PuntRing:
    """Single producer (one worker), single consumer (the control thread)."""
    cdef fp_punt *slots
    cdef uint64_t head          # written by the worker
    cdef uint64_t tail          # written by the control thread
    cdef readonly int fd        # eventfd: readable when something was pushed
    cdef uint64_t overflow
    cdef uint8_t *buf
    cdef readonly int32_t data_size

    def __cinit__(self, int data_size=PUNT_DATA):
        """data_size: the largest packet a slot holds (the worker's largest:
        a fragment of a jumbo-MTU wire must reach the control thread whole)."""
        cdef int i
        self.fd = -1
        self.data_size = max(data_size, PUNT_DATA)
        self.slots = <fp_punt *>calloc(RING_SLOTS, sizeof(fp_punt))
        self.buf = <uint8_t *>malloc(<size_t>RING_SLOTS * self.data_size)
        if self.slots == NULL or self.buf == NULL:
            raise MemoryError()
        for i in range(RING_SLOTS):
            self.slots[i].data = self.buf + <size_t>i * self.data_size
        self.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(errno, "eventfd")

    def __dealloc__(self):
        free(self.slots)
        free(self.buf)
        if self.fd >= 0:
            close(self.fd)

    cdef bint push(self, int32_t kind, const uint8_t *data, int32_t n, int32_t sa,
                   int32_t mh_offset, uint64_t seq) noexcept nogil:
        cdef uint64_t h = self.head
        cdef fp_punt *p
        if n > self.data_size or h - fp_load_u64(&self.tail) >= RING_SLOTS:
            self.overflow += 1
            return False
        p = &self.slots[h % RING_SLOTS]
        p.kind = kind
        p.length = n
        p.sa = sa
        p.mh_offset = mh_offset
        p.seq = seq
        memcpy(p.data, data, n)
        fp_store_u64(&self.head, h + 1)   # publish after the copy
        return True

    cdef void wake(self) noexcept nogil:
        cdef uint64_t one = 1
        write(self.fd, &one, 8)

    def drain(self, SADatabase sad not None, int limit=RING_SLOTS):
        """[("punt", bytes) | ("unbound_hao", bytes) | ("binding", VerifiedBinding)]
        in arrival order ("unbound_hao": a punt whose Home Address option
        names no binding with its source as care-of address, RFC 6275 §9.3.1)."""
        cdef uint64_t buf
        cdef uint64_t t = self.tail
        cdef fp_punt *p
        cdef list out = []
        read(self.fd, &buf, 8)
        while t < fp_load_u64(&self.head) and len(out) < limit:
            p = &self.slots[t % RING_SLOTS]
            if p.kind == KIND_BINDING:
                out.append(("binding", issue_binding(sad, sad.t.sas[p.sa].mn, &sad.t.sas[p.sa], p.seq,
                                                     p.data, p.length, p.mh_offset)))
            else:
                out.append(("unbound_hao" if p.kind == KIND_UNBOUND_HAO else "punt",
                            PyBytes_FromStringAndSize(<const char *>p.data, p.length)))
            t += 1
            fp_store_u64(&self.tail, t)
        return out

    @property
    def overflow_count(self):
        return self.overflow


cdef inline uint32_t frag_ident(uint32_t counter, const uint32_t *key) noexcept nogil:
    """The fragment Identification for the counter's value: a keyed bijection
    of 32 bits (xor, odd multiplies, xorshifts), so identifications stay
    unique for 2^32 fragmented packets yet do not count up where an
    off-path node could guess the next one and inject a fragment into the
    reassembly at the care-of address (RFC 7739 §5)."""
    cdef uint32_t x = counter ^ key[0]
    x *= key[1]
    x ^= x >> 16
    x *= key[2]
    x ^= x >> 15
    return x


cdef class Worker:
    """One thread's forwarding loop over one queue of each TUN."""
    cdef Engine engine
    cdef int home_fd
    cdef int wire_fd
    cdef int stop_fd
    cdef Batch home_batch
    cdef Batch wire_batch
    cdef readonly PuntRing punts
    cdef uint64_t stopping
    cdef readonly bint null_forwarder
    cdef uint64_t rx[2]
    cdef uint64_t tx[2]
    cdef uint64_t tx_errors[2]
    cdef uint64_t rx_errors[2]
    cdef uint64_t rx_oversize[2]
    cdef uint64_t batches[2]
    cdef uint64_t polls
    cdef int drained                  # bit per side: its last read found the queue empty
    cdef int lowrate                  # bit per side: one packet per wake-up lately (see _read_cap)
    cdef uint32_t lr_rounds[2]
    cdef readonly int mtu             # wire MTU: longer outer packets leave fragmented
    cdef uint32_t frag_id             # counter behind the fragment Identification ...
    cdef uint32_t frag_key[3]         # ... which leaves permuted: see frag_ident()
    cdef uint64_t fragmented
    cdef uint8_t frag_buf[FRAG_BUF]
    # IFF_VNET_HDR on the home TUN: TSO super-packets split on read, TCP
    # segments merged (GRO) on write; see offload.pyx
    cdef readonly bint home_vnet
    cdef fp_tso tso
    cdef bint tso_pending             # tso holds segments not yet in a batch
    cdef fp_gro gro
    cdef bint gro_open
    cdef uint64_t gso_packets
    cdef uint64_t gso_segments
    cdef uint64_t gro_packets
    cdef uint64_t gro_segments
    cdef uint64_t offload_errors
    # Control-plane policing: unauthenticated punts (fragments, ICMPv6, a
    # Mobility Header in the clear) cost the control thread Python time at a
    # real-time priority above the workers; past this rate they are dropped
    # here, in C, and counted. Authenticated Binding Updates are not policed.
    cdef public double punt_rate      # punts per second (0: no limit)
    cdef public double punt_burst
    cdef double punt_tokens
    cdef double punt_last
    cdef uint64_t punt_policed

    def __cinit__(self, Engine engine, int home_fd, int wire_fd, int batch=64,
                  int max_packet=2048, bint null_forwarder=False, int mtu=65535,
                  bint home_vnet=False):
        """null_forwarder: the same loop with no transform (home -> wire and
        wire -> home unchanged): the TUN I/O ceiling, for benchmarks.
        home_vnet: home_fd was opened with IFF_VNET_HDR (and TUNSETOFFLOAD
        TUN_F_CSUM | TUN_F_TSO6): every read and write there carries a
        virtio_net_hdr, reads may be TCP super-packets, writes merge TCP."""
        self.engine = engine
        self.home_fd = home_fd
        self.wire_fd = wire_fd
        self.home_batch = Batch(batch, max_packet, hugepages=True)
        self.wire_batch = Batch(batch, max_packet, hugepages=True)
        if engine is not None:
            engine.reserve(self.home_batch)
        self.punts = PuntRing(max_packet)
        self.null_forwarder = null_forwarder or engine is None
        self.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_fd < 0:
            raise OSError(errno, "eventfd")
        if mtu < 1280:
            raise ValueError("the wire MTU is at least 1280 (RFC 8200)")
        self.mtu = mtu
        rnd = __import__("os").urandom(16)
        self.frag_id = <uint32_t>int.from_bytes(rnd[:4], "big")
        self.frag_key[0] = <uint32_t>int.from_bytes(rnd[4:8], "big")
        self.frag_key[1] = <uint32_t>int.from_bytes(rnd[8:12], "big") | 1    # odd: invertible
        self.frag_key[2] = <uint32_t>int.from_bytes(rnd[12:16], "big") | 1
        self.home_vnet = home_vnet
        self.punt_rate = PUNT_RATE
        self.punt_burst = PUNT_BURST
        self.punt_tokens = PUNT_BURST
        if home_vnet:
            self.tso.buf = <uint8_t *>malloc(GSO_BUF)
            if self.tso.buf == NULL:
                raise MemoryError()

    def __dealloc__(self):
        if self.stop_fd >= 0:
            close(self.stop_fd)
        free(self.tso.buf)

    def run(self, int poll_ms=200):
        """Forward until stop(). Call from the worker's own thread."""
        with nogil:
            self._loop(poll_ms)

    def stop(self):
        cdef uint64_t one = 1
        fp_store_u64(&self.stopping, 1)
        write(self.stop_fd, &one, 8)

    def counters(self):
        names = ("home", "wire")
        return {
            "rx": {names[s]: self.rx[s] for s in range(2)},
            "tx": {names[s]: self.tx[s] for s in range(2)},
            "rx_errors": {names[s]: self.rx_errors[s] for s in range(2)},
            "tx_errors": {names[s]: self.tx_errors[s] for s in range(2)},
            "rx_oversize": {names[s]: self.rx_oversize[s] for s in range(2)},
            "batches": {names[s]: self.batches[s] for s in range(2)},
            "polls": self.polls,
            "fragmented": self.fragmented,
            "punt_overflow": self.punts.overflow,
            "gso_packets": self.gso_packets,
            "gso_segments": self.gso_segments,
            "gro_packets": self.gro_packets,
            "gro_segments": self.gro_segments,
            "offload_errors": self.offload_errors,
            "punt_policed": self.punt_policed,
        }

    cdef void _loop(self, int poll_ms) noexcept nogil:
        cdef pollfd fds[3]
        cdef int nh, nw
        cdef uint64_t buf
        fds[0].fd = self.home_fd
        fds[1].fd = self.wire_fd
        fds[2].fd = self.stop_fd
        fds[0].events = POLLIN
        fds[1].events = POLLIN
        fds[2].events = POLLIN
        cdef int ready = 3                # sides worth a read(): after poll(), the readable ones
        while not fp_load_u64(&self.stopping):
            # a side poll() did not report is empty: no read() to learn that
            self.drained = 3 & ~ready
            nh = self._read(self.home_fd, self.home_batch, SIDE_HOME) if ready & 1 else 0
            if nh:
                if self.null_forwarder:
                    self._mark(self.home_batch, V_TO_WIRE)
                    self._write(self.home_batch)
                else:
                    # The grace period covers the write too: a packet built
                    # with the old CoA is on the wire before the BA can be.
                    self.engine.epoch_enter()
                    self.engine.run_encap(self.home_batch)
                    self._write(self.home_batch)
                    self.engine.epoch_leave()
            nw = self._read(self.wire_fd, self.wire_batch, SIDE_WIRE) if ready & 2 else 0
            if nw:
                if self.null_forwarder:
                    self._mark(self.wire_batch, V_TO_HOME)
                    self._write(self.wire_batch)
                else:
                    self.engine.epoch_enter()
                    self.engine.run_decap(self.wire_batch)
                    self._punt(self.wire_batch)
                    self._write(self.wire_batch)
                    self.engine.epoch_leave()
            # Both queues ran dry (a read said EAGAIN): sleep in poll() now,
            # rather than going round again for two more empty reads.
            ready = 3
            if self.drained == 3:
                self.polls += 1
                if poll(fds, 3, poll_ms) > 0:
                    ready = (1 if fds[0].revents else 0) | (2 if fds[1].revents else 0)
        read(self.stop_fd, &buf, 8)

    cdef inline int _read_cap(self, int side) noexcept nogil:
        """How many read() calls this round may make. A side whose wake-ups
        bring one packet each (a low rate) reads once and leaves the rest to
        poll(), which returns at once if more is queued: that saves the
        read() that would only say EAGAIN, a quarter of the syscalls per
        packet. Every 8th round drains as usual, to notice the rate rising."""
        if (self.lowrate >> side) & 1:
            self.lr_rounds[side] += 1
            if self.lr_rounds[side] & 7:
                return 1
        return READ_ALL

    cdef inline void _read_done(self, int side, int cap, int reads, bint empty) noexcept nogil:
        """After a read round: a capped round leaves the side to poll(); a
        drained round picks the side's mode from how many reads it took."""
        if not empty:
            if cap == 1:
                self.drained |= 1 << side           # poll() tells whether more is queued
            else:
                self.lowrate &= ~(1 << side)        # a full batch: not a low rate
        elif reads <= 1:
            self.lowrate |= 1 << side
        else:
            self.lowrate &= ~(1 << side)

    cdef int _read(self, int fd, Batch b, int side) noexcept nogil:
        """Read up to a batch of packets (one read() each: TUN's unit)."""
        cdef int i = 0, reads = 0, cap
        cdef bint empty = False
        if side == SIDE_HOME and self.home_vnet:
            return self._read_vnet(fd, b)
        cdef long r
        cdef uint8_t *slot
        cap = self._read_cap(side)
        while i < b.capacity and reads < cap:
            slot = b.c_data + <Py_ssize_t>i * b.slot_size + HEADROOM
            r = read(fd, slot, b.max_packet)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    self.rx_errors[side] += 1
                self.drained |= 1 << side
                empty = True
                break
            if r == 0:
                self.drained |= 1 << side
                empty = True
                break
            reads += 1
            if r >= b.max_packet:           # may have been cut short: never forward it
                self.rx_oversize[side] += 1
                continue
            b.c_off[i] = HEADROOM
            b.c_len[i] = <int32_t>r
            b.c_verdict[i] = 0
            b.c_reason[i] = 0
            b.c_sa[i] = -1
            i += 1
        self._read_done(side, cap, reads, empty)
        b.count = i
        self.rx[side] += i
        if i:
            self.batches[side] += 1
        return i

    cdef inline void _slot_ready(self, Batch b, int i, int32_t n) noexcept nogil:
        b.c_off[i] = HEADROOM
        b.c_len[i] = n
        b.c_verdict[i] = 0
        b.c_reason[i] = 0
        b.c_sa[i] = -1

    cdef int _read_vnet(self, int fd, Batch b) noexcept nogil:
        """_read() for a home TUN with IFF_VNET_HDR: each read() may bring a
        TCP super-packet, cut into as many slots as it has segments; one cut
        short by a full batch carries on in the next batch."""
        cdef int i = 0, kind, reads = 0
        cdef int cap = self._read_cap(SIDE_HOME)
        cdef bint empty = False
        cdef long r
        cdef int32_t n
        cdef uint8_t *slot
        while i < b.capacity:
            slot = b.c_data + <Py_ssize_t>i * b.slot_size + HEADROOM
            if self.tso_pending:
                n = tso_next(&self.tso, slot)
                if n:
                    self._slot_ready(b, i, n)
                    self.gso_segments += 1
                    i += 1
                    continue
                self.tso_pending = False
            if reads == cap:
                break
            r = read(fd, self.tso.buf, GSO_BUF)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    self.rx_errors[SIDE_HOME] += 1
                self.drained |= 1 << SIDE_HOME
                empty = True
                break
            if r == 0:
                self.drained |= 1 << SIDE_HOME
                empty = True
                break
            reads += 1
            kind = tso_begin(&self.tso, <int32_t>r, b.max_packet - 1)
            if kind == TSO_SPLIT:
                self.tso_pending = True
                self.gso_packets += 1
            elif kind == TSO_PLAIN:
                if self.tso.len >= b.max_packet:
                    self.rx_oversize[SIDE_HOME] += 1
                    continue
                memcpy(slot, self.tso.buf + VNET_HDR_LEN, self.tso.len)
                self._slot_ready(b, i, self.tso.len)
                i += 1
            else:
                self.offload_errors += 1
        # (segments still pending keep the side busy: never left to poll())
        self._read_done(SIDE_HOME, cap if not self.tso_pending else READ_ALL, reads, empty)
        b.count = i
        self.rx[SIDE_HOME] += i
        if i:
            self.batches[SIDE_HOME] += 1
        return i

    cdef void _mark(self, Batch b, uint8_t verdict) noexcept nogil:
        cdef int i
        for i in range(b.count):
            b.c_verdict[i] = verdict

    cdef void _write(self, Batch b) noexcept nogil:
        cdef int i, tl
        cdef long w
        cdef uint8_t *p
        cdef int32_t n
        for i in range(b.count):
            p = b.c_data + <Py_ssize_t>i * b.slot_size + b.c_off[i]
            n = b.c_len[i]
            if b.c_verdict[i] == V_TO_WIRE:
                if n > self.mtu:
                    w = self._write_fragments(self.wire_fd, p, n, self.mtu)
                elif n > 1280 and b.c_reason[i] == R_FRAGMENT:   # below a PTB's path MTU
                    w = self._write_fragments(self.wire_fd, p, n, 1280)
                else:
                    w = write(self.wire_fd, p, n)
                self._count_tx(SIDE_WIRE, w, 1)
            elif b.c_verdict[i] == V_TO_HOME:
                if not self.home_vnet:
                    self._count_tx(SIDE_HOME, write(self.home_fd, p, n), 1)
                    continue
                if b.c_off[i] < VNET_HDR_LEN:        # no room for the header (never: headroom)
                    self.tx_errors[SIDE_HOME] += 1
                    continue
                # a TCP segment that continues the open run joins it; anything
                # else writes the run out first (order on the TUN is kept)
                tl = gro_candidate(p, n)
                if self.gro_open and tl and gro_extends(&self.gro, p, n, tl):
                    continue
                self._gro_flush()
                if tl:
                    gro_start(&self.gro, p, n, tl)
                    self.gro_open = True
                else:
                    vnet_plain(p - VNET_HDR_LEN)
                    self._count_tx(SIDE_HOME, write(self.home_fd, p - VNET_HDR_LEN, n + VNET_HDR_LEN), 1)
        self._gro_flush()

    cdef void _gro_flush(self) noexcept nogil:
        """Write the open run of merged TCP segments (one writev)."""
        cdef int k
        if not self.gro_open:
            return
        self.gro_open = False
        k = gro_finish(&self.gro)
        if k > 1:
            self.gro_packets += 1
            self.gro_segments += k
        self._count_tx(SIDE_HOME, writev(self.home_fd, self.gro.iov, k), k)

    cdef inline void _count_tx(self, int side, long w, int packets) noexcept nogil:
        if w < 0:
            self.tx_errors[side] += packets
        else:
            self.tx[side] += packets

    cdef long _write_fragments(self, int fd, const uint8_t *p, int32_t n,
                               int32_t mtu) noexcept nogil:
        """An outer packet longer than the wire MTU (only ever one that carries
        an inner packet of <= 1280 bytes: RFC 2473 §7.1) leaves as IPv6
        fragments (RFC 8200 §4.5). All after the fixed header is the
        fragmentable part: our outer header has at most a destination-options
        header (a Tunnel Encapsulation Limit), which travels in the first fragment."""
        cdef int32_t room = (mtu - 48) & ~7
        cdef int32_t off = 0, part
        cdef uint8_t *q = self.frag_buf
        cdef uint32_t ident = frag_ident(self.frag_id, self.frag_key)
        self.frag_id += 1
        self.fragmented += 1
        while off < n - 40:
            part = n - 40 - off
            if part > room:
                part = room
            memcpy(q, p, 40)
            q[4] = <uint8_t>((8 + part) >> 8)
            q[5] = <uint8_t>(8 + part)
            q[6] = 44
            q[40] = p[6]
            q[41] = 0
            q[42] = <uint8_t>(off >> 8)
            q[43] = <uint8_t>((off & 0xF8) | (1 if off + part < n - 40 else 0))
            q[44] = <uint8_t>(ident >> 24)
            q[45] = <uint8_t>(ident >> 16)
            q[46] = <uint8_t>(ident >> 8)
            q[47] = <uint8_t>ident
            memcpy(q + 48, p + 40 + off, part)
            if write(fd, q, 48 + part) < 0:
                return -1
            off += part
        return n

    cdef inline bint _punt_token(self) noexcept nogil:
        return self.punt_rate <= 0 or fp_bucket_take(&self.punt_tokens, &self.punt_last,
                                                     self.punt_rate, self.punt_burst)

    cdef void _punt(self, Batch b) noexcept nogil:
        cdef int i, k
        cdef bint pushed = False
        cdef fp_binding_rec *r
        for i in range(b.count):
            if b.c_verdict[i] == V_PUNT:
                if not self._punt_token():
                    self.punt_policed += 1
                    continue
                pushed |= self.punts.push(KIND_UNBOUND_HAO if b.c_reason[i] == R_NO_BINDING
                                          else KIND_PUNT,
                                          b.c_data + <Py_ssize_t>i * b.slot_size + b.c_off[i],
                                          b.c_len[i], -1, 0, 0)
        for k in range(self.engine.n_bindings):
            r = &self.engine.bindings[k]
            pushed |= self.punts.push(KIND_BINDING, r.data, r.length, r.sa, r.mh_offset, r.seq)
        self.engine.n_bindings = 0
        if pushed:
            self.punts.wake()
