"""`fastpath run`: the forwarder process.

Owns the TUN queues, the SA table, the worker threads and the control loop:

    workers (threads, one per TUN queue pair)   fastpath.core.worker.Worker.run()
        loop without the GIL: read batch -> engine -> write; punts -> ring
    control loop (this thread, uvloop)          fastpath.control.ControlPlane
        punt rings, Binding Updates, sequence reservations, timers, signals,
        control socket, metrics

Start-up order matters: reservations are on disk before a worker may send,
routes are installed once the TUNs exist, and stop() undoes what start() did.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from fastpath.control import PUNT_RATE
from fastpath.core.engine import Engine
from fastpath.core.worker import Worker
from fastpath.netlink import QUEUE_LEN
from fastpath.seqstore import SequenceStore
from fastpath.tables import resolve_backend, sad_from_config

log = logging.getLogger("fastpath.forwarder")

DEFAULT_BATCH = 64


def parse_cpus(text: str | None) -> list[int] | None:
    """'2-5' / '2,4,6' / '1,3-4' -> [CPU numbers]; None stays None."""
    if not text:
        return None
    cpus: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"--cpu: {part!r} is not a CPU number or range") from None
        if a < 0 or b < a:
            raise ValueError(f"--cpu: bad range {part!r}")
        cpus.extend(range(a, b + 1))
    avail = os.sched_getaffinity(0)
    bad = [c for c in cpus if c not in avail]
    if bad:
        raise ValueError(f"--cpu: CPU(s) {bad} not available to this process (have {sorted(avail)})")
    return cpus


@dataclass
class Options:
    workers: int = 1
    batch: int = DEFAULT_BATCH
    home_if: str | None = None
    wire_if: str | None = None
    cpus: list[int] | None = None
    crypto: str = "auto"
    role: str = "home-agent"
    home_address: str | None = None     # mobile-node role: which MN of the config we are
    enable_forwarding: bool = False
    null_forwarder: bool = False        # benchmark: same loop, no transform
    offload: bool = True                # IFF_VNET_HDR + TSO/GRO on the home TUN
    queue_len: int = QUEUE_LEN          # txqueuelen of both TUNs
    realtime: bool | None = None        # SCHED_FIFO threads (home agent); None: the config's
    punt_rate: float = PUNT_RATE        # unauthenticated punts per second and worker (0: no limit)
    poll_ms: int = 200
    netns: str | None = None


class Forwarder:
    def __init__(self, cfg, opts: Options):
        self.cfg = cfg
        self.opts = opts
        self.home_if = opts.home_if or cfg.interfaces.home
        self.wire_if = opts.wire_if or cfg.interfaces.wire
        self.backend = resolve_backend(opts.crypto)
        self.sad = None
        self.seqstore = None
        self.host = None
        self.workers: list[Worker] = []
        self.engines: list[Engine] = []
        self.control_engine = None
        self.threads: list[threading.Thread] = []
        self.fds: list[int] = []
        self.wire_fd = -1
        self.home_fd = -1                # the control thread's writes to the home TUN
        self.home_vnet = False           # ... which then start with a virtio_net_hdr
        self.lock_fd = -1                # flock on the state directory: one run per directory

    # -- start / stop -----------------------------------------------------------
    def start(self) -> None:
        from fastpath.netlink import HostSetup
        from fastpath.tun import tun_queues
        cfg, opts = self.cfg, self.opts
        self.sad = sad_from_config(cfg, self.backend, role=opts.role,
                                   home_address=opts.home_address)
        outs = [sa for mn in self._my_nodes() for sa in mn.sas
                if (sa.direction == "out") == (opts.role == "home-agent")]
        state = Path(cfg.home_agent.state_dir)
        if opts.role == "mobile-node":
            state = state / f"mn-{self._my_nodes()[0].home_address}"
        self.lock_fd = lock_state_dir(state)
        mq = opts.workers > 1
        home = tun_queues(self.home_if, opts.workers, multi_queue=mq, vnet_hdr=opts.offload)
        if opts.offload:
            _enable_tso(home)
        wire = tun_queues(self.wire_if, opts.workers, multi_queue=mq)
        self.fds = home + wire
        self.wire_fd = wire[0]
        self.home_fd = home[0]
        self.home_vnet = opts.offload
        self.host = HostSetup(cfg, home_if=self.home_if, wire_if=self.wire_if,
                              enable_forwarding=opts.enable_forwarding, role=opts.role,
                              home_address=opts.home_address, queue_len=opts.queue_len,
                              state_dir=state)
        self.host.cleanup_leftovers()
        self.host.setup()
        for mn in self.sad.mobile_nodes():
            if mn["care_of_address"] is not None:
                self.host.bind(mn["home_address"])
        # after the checks that can refuse to start, before any worker may
        # send: a refused start burns no block of sequence numbers
        self.seqstore = _seqstore_for(state, self.sad, outs, opts.role)
        self.control_engine = Engine(self.sad, self.backend)
        # it decapsulates reassembled fragments, taking SA replay locks that
        # workers hold too: see Engine.lock_sleeps
        self.control_engine.lock_sleeps = True
        for i in range(opts.workers):
            eng = Engine(self.sad, self.backend, max_batch=opts.batch)
            w = Worker(eng, home[i], wire[i], opts.batch, max(2048, cfg.home_agent.mtu + 64),
                       opts.null_forwarder, min(cfg.home_agent.mtu, 9000), opts.offload)
            w.punt_rate = opts.punt_rate
            w.punt_burst = max(1.0, opts.punt_rate / 10)      # 100 ms of the rate
            self.engines.append(eng)
            self.workers.append(w)
        for i, w in enumerate(self.workers):
            cpu = opts.cpus[i % len(opts.cpus)] if opts.cpus else None
            t = threading.Thread(target=self._run_worker, args=(w, cpu), name=f"fp-worker-{i}",
                                 daemon=True)
            self.threads.append(t)
            t.start()
        log.info("forwarding: role %s, %d worker(s), batch %d, crypto %s, %s <-> %s, "
                 "home-side offload (TSO/GRO) %s", opts.role, opts.workers, opts.batch,
                 self.backend, self.home_if, self.wire_if, "on" if opts.offload else "off")

    def my_node(self):
        """Mobile-node role: this node's config entry."""
        return self._my_nodes()[0]

    def _my_nodes(self):
        if self.opts.role == "home-agent":
            return list(self.cfg.mobile_nodes)
        import ipaddress
        if self.opts.home_address is None:
            return list(self.cfg.mobile_nodes)[:1]
        want = ipaddress.IPv6Address(self.opts.home_address)
        return [mn for mn in self.cfg.mobile_nodes if mn.home_address == want]

    @staticmethod
    def _run_worker(w: Worker, cpu: int | None) -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})      # 0 = this thread on Linux
        w.run()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for t in self.threads:
            t.join(timeout=5)
        undone = self.host is not None
        if self.host is not None:
            self.host.close()
            self.host = None
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if self.lock_fd >= 0:            # last: another run may now take the directory
            os.close(self.lock_fd)
            self.lock_fd = -1
        if undone:
            log.info("stopped; what start-up set up (routes, proxy entries, sysctls) is undone")

    # -- views ---------------------------------------------------------------------
    def counters(self) -> dict:
        from fastpath.metrics import collect
        return collect(self)


def _enable_tso(fds: list[int]) -> None:
    """Let the kernel hand the home TUN unsegmented TCP/IPv6 (and leave
    checksums to us): the worker cuts the segments itself, tens per read()."""
    from fastpath.tun import TUN_F_CSUM, TUN_F_TSO6, set_offload
    for fd in fds:
        set_offload(fd, TUN_F_CSUM | TUN_F_TSO6)


LOCK_FILE = "fastpath.lock"


def lock_state_dir(state: Path) -> int:
    """Take the state directory for this run (flock, released when the
    process ends, however it ends). A second run on the same directory would
    share sequence reservations with the first (reused numbers) and remove
    its routes as leftovers, so it is refused before it touches anything."""
    import fcntl
    try:
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise OSError(f"[home_agent] state_dir {state}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise RuntimeError(f"[home_agent] state_dir {state}: another fastpath run (pid "
                           f"{holder}) is using it; stop that one first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _seqstore_for(state: Path, sad, outs, role: str) -> SequenceStore:
    return SequenceStore(state, sad, outs)
