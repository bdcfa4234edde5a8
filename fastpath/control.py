"""The control plane of a running forwarder: one uvloop event loop.

It never blocks the workers: they hand packets over through per-worker
rings (fastpath.core.worker.PuntRing) and it reads them when their eventfd
fires. It handles Binding Updates (fastpath.binding), reassembles the outer
IPv6 fragments the workers punt and decapsulates the result itself
(fastpath.reassembly; the slow path), moves sequence-number reservations
forward, expires bindings, answers the read-only control socket (`fastpath
ctl`), serves Prometheus metrics, and stops on SIGINT/SIGTERM/SIGHUP/SIGQUIT.
"""
from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import time
from collections import Counter

from fastpath import metrics, prefix
from fastpath.binding import (BindingCache, build_ba_packet, build_binding_error_packet,
                              unknown_binding_error)
from fastpath.reassembly import Reassembler, fragment_header_offset
from fastpath.ref.ipv6 import reply_problem
from fastpath.verdicts import Reason, Verdict

log = logging.getLogger("fastpath.control")

# Control-plane policing: unauthenticated packets (fragments, ICMPv6, a Mobility
# Header in the clear) one worker hands this thread per second; the worker
# drops the rest in C (punt_policed). This thread runs above the workers
# (SCHED_FIFO 2) and spends Python time on each: ~10 us per fragment.
PUNT_RATE = 10000.0
PUNT_CPU_SHARE = 0.2      # of each second of this thread, at most this on punts (then shed)
REASSEMBLY_CHECK_S = 1.0  # how often stale fragments are dropped (they wait 60 s)
DROP_LOG_S = 10.0         # how often new drops are summed up in the log
PMTU_HOLD_S = 10.0        # a CoA's path MTU is lowered at most this often
PMTU_AGE_S = 600.0        # ... and goes back to the configured MTU after this (RFC 8201 §4)
BINDING_ERRORS_PER_S = 10.0   # Binding Errors sent, at most, per bucket (RFC 6275 §9.3.3 rate limit)
# The Binding Error buckets: answers to authenticated messages, and to
# unauthenticated packets (so forged packets cannot use up the first)
BE_AUTHENTICATED = "authenticated"
BE_UNAUTHENTICATED = "unauthenticated"
MAX_REASSEMBLED = 40 + 65535   # the largest packet reassembly can produce
CTL_COMMANDS = ("status", "bindings", "sas", "counters")


_LOG_PER_S = 20               # binding lines per second at INFO; the rest are summed up
_log_window = [0.0, 0, 0]     # [window start, lines in it, lines held back]


def _log_decision(d) -> None:
    """One line per Binding Update that changed or refused something (moves
    and refusals at INFO, refreshes and discards at DEBUG), at most
    _LOG_PER_S a second: a burst of thousands of BUs must not make the
    control thread a log writer (each line costs more than the BU)."""
    if d is None or not log.isEnabledFor(logging.INFO):
        return
    if not (d.moved or d.deregistered or (d.status is not None and d.status >= 128)):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Binding Update for %s: %s status %s %s", d.home_address.hex(), d.action,
                      d.status, d.reason)
        return
    now = time.monotonic()
    w = _log_window
    if now - w[0] >= 1.0:
        if w[2]:
            log.info("%d more binding changes or refusals in the last second not logged "
                     "(see fastpath ctl counters)", w[2])
        w[0], w[1], w[2] = now, 0, 0
    if w[1] >= _LOG_PER_S:
        w[2] += 1
        return
    w[1] += 1
    hoa = ipaddress.IPv6Address(d.home_address)
    if d.moved or d.deregistered:
        what = ("deregistered" if d.deregistered else
                f"moved to {ipaddress.IPv6Address(d.care_of_address)}")
        log.info("binding %s %s (BU sequence %s, lifetime %d s, Binding Ack %s)", hoa, what,
                 d.sequence, 4 * d.lifetime, "sent" if d.ba is not None else "not sent")
    else:
        log.info("Binding Update for %s refused: status %d%s", hoa, d.status,
                 f" ({d.reason})" if d.reason else "")


class Listeners:
    """The control socket and the metrics port, bound before the forwarder
    starts: a bad address, a port in use or a socket another run is serving
    is then a clear error at start-up, with nothing to undo. The control
    socket is bound under a temporary name and appears at its path only when
    publish()ed, once the forwarder is up: its existence means "ready"."""

    def __init__(self, control_socket: str | None = None, metrics_addr: str | None = None):
        self.ctl = self.metrics = None
        self.ctl_path = control_socket
        self._ctl_bound = None            # where the socket file is now
        self.metrics_addr = metrics_addr
        try:
            if control_socket:
                self._ctl_bound = f"{control_socket}.{os.getpid()}.new"
                self.ctl = _bind_ctl(control_socket, self._ctl_bound)
            if metrics_addr:
                self.metrics = _bind_metrics(metrics_addr)
        except BaseException:
            self.close()
            raise

    def publish(self) -> None:
        if self.ctl is not None and self._ctl_bound != self.ctl_path:
            os.replace(self._ctl_bound, self.ctl_path)
            self._ctl_bound = self.ctl_path

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
            try:
                os.unlink(self._ctl_bound)
            except FileNotFoundError:
                pass


def _bind_ctl(path: str, bind_at: str) -> socket.socket:
    """A listening Unix socket for `path`, bound at `bind_at`, mode 0600 (the
    views show SPIs and addresses). A socket file at `path` left by a killed
    run will be replaced; one that a live process answers on is an error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OSError(f"--control-socket {path}: {e.strerror}") from None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"--control-socket {path}: exists and is not a socket; "
                          "refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            pass    # nobody answers: left by a killed run, publish() replaces it
        else:
            raise OSError(f"--control-socket {path}: another fastpath run is serving it; "
                          "stop it first or give this one another --control-socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        try:
            os.unlink(bind_at)          # only ever ours: the name carries our pid
        except FileNotFoundError:
            pass
        sock.bind(bind_at)
        sock.listen(16)
    except OSError as e:
        sock.close()
        raise OSError(f"--control-socket {path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    os.chmod(bind_at, 0o600)
    sock.setblocking(False)
    return sock


def _bind_metrics(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except (socket.gaierror, ValueError):
        raise OSError(f"--metrics {addr}: {host!r} is not a numeric IPv4 or IPv6 "
                      "address") from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise OSError(f"--metrics {addr}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


class ControlPlane:
    def __init__(self, fwd, *, control_socket: str | None = None, metrics_addr: str | None = None,
                 listeners: Listeners | None = None):
        """`listeners` already bound (fastpath run binds them before starting
        the forwarder); without, they are bound from `control_socket` and
        `metrics_addr` here."""
        self.fwd = fwd
        self.listeners = listeners or Listeners(control_socket, metrics_addr)
        self.events = Counter()
        self.started = time.time()
        self._be_buckets: dict = {}       # Binding Error token buckets: _binding_error_token
        self.stop_event: asyncio.Event | None = None
        self.bindings = None
        self.registration = None          # mobile-node role: our home registration
        self._extending = False
        self.scheduling = None            # what fastpath.sched applied (home agent)
        self.reassembler = Reassembler()  # outer fragments from the wire (both roles)
        self._slow_batch = None           # one slot for a reassembled packet (made on first use)
        self._punt_window = 0.0           # start of the current second of punt work ...
        self._punt_spent = 0.0            # ... and the CPU seconds spent on punts in it
        self._drops_seen: dict = {}       # totals at the last _log_drops()
        self._exhausted_seen: dict = {}   # SPI -> seq_exhausted drops at the last one
        self._pmtu: dict = {}             # CoA -> (lowered path MTU, when): see _packet_too_big
        fwd.control = self
        if fwd.opts.role == "home-agent":
            self.bindings = BindingCache(fwd.sad, fwd.cfg, on_bind=self._on_bind,
                                         on_unbind=self._on_unbind)
            self.bindings.defer_grace = True     # one wait per drained burst
        else:
            from fastpath.mobile import HomeRegistration
            mn = fwd.my_node()
            self.registration = HomeRegistration(mn.home_address.packed,
                                                 fwd.cfg.home_agent.address.packed,
                                                 mn.binding_lifetime_max)

    # -- wiring ------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.scheduling = self._scheduling()
        freeze_startup_heap()
        # HUP (the terminal went away) and QUIT stop as cleanly as TERM: their
        # default action would leave routes, proxy entries and sysctls behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._signal, sig)
        for w in self.fwd.workers:
            loop.add_reader(w.punts.fd, self._drain, w)
        servers = []
        if self.listeners.ctl is not None:
            servers.append(await asyncio.start_unix_server(self._serve_ctl,
                                                           sock=self.listeners.ctl))
            self.listeners.publish()
            log.info("control socket %s", self.listeners.ctl_path)
        if self.listeners.metrics is not None:
            servers.append(await asyncio.start_server(self._serve_metrics,
                                                      sock=self.listeners.metrics))
            log.info("metrics on http://%s/metrics", self.listeners.metrics_addr)
        # reservations are checked every 20-100 ms, as they ask (seqstore.plan):
        # an idle forwarder wakes ~10 times a second, not 100
        timers = [asyncio.ensure_future(self._every(self._sequence_check_s,
                                                    self._extend_sequences)),
                  asyncio.ensure_future(self._every(REASSEMBLY_CHECK_S, self._expire_fragments)),
                  asyncio.ensure_future(self._every(DROP_LOG_S, self._log_drops)),
                  asyncio.ensure_future(self._every(DROP_LOG_S, self._age_path_mtu))]
        if self.bindings is not None:
            timers.append(asyncio.ensure_future(self._every(1.0, self._expire)))
        if self.registration is not None:
            coa = self.fwd.sad.care_of_address(self.registration.hoa)
            if coa is not None:
                self._send_bu(self.registration.move(coa, time.monotonic()))
            timers.append(asyncio.ensure_future(self._every(0.1, self._registration_timer)))
        try:
            await self.stop_event.wait()
        finally:
            for t in timers:
                t.cancel()
            for w in self.fwd.workers:
                loop.remove_reader(w.punts.fd)
            for s in servers:
                s.close()
            self.listeners.close()

    def _scheduling(self) -> dict | None:
        """A home agent's control thread (this one) and workers run at low
        real-time priorities unless the config says otherwise (fastpath.sched)."""
        realtime = self.fwd.opts.realtime
        if realtime is None:
            realtime = getattr(self.fwd.cfg.home_agent, "realtime", True)
        if self.fwd.opts.role != "home-agent" or not realtime:
            return None
        from fastpath import sched
        return sched.prioritise(getattr(self.fwd, "threads", []))

    def _policies(self) -> dict:
        from fastpath.sched import policy
        out = {"control": "%s %d" % policy(0), "workers": []}
        for t in getattr(self.fwd, "threads", []):
            try:
                out["workers"].append("%s %d" % policy(t.native_id))
            except (OSError, TypeError):     # not running
                out["workers"].append(None)
        return out

    def _signal(self, sig) -> None:
        log.info("%s: stopping", signal.Signals(sig).name)
        self.stop_event.set()

    def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    async def _every(self, period, fn) -> None:
        """fn() every `period` seconds (a number, or a function that says how
        long to wait next) until cancelled."""
        while True:
            await asyncio.sleep(period() if callable(period) else period)
            try:
                fn()
            except Exception:            # a timer must not die silently
                log.exception("%s failed", fn.__name__)

    # -- packets from the workers ------------------------------------------------
    def _drain(self, worker) -> None:
        # Authenticated Binding Updates first: a burst of unauthenticated
        # punts drained with them must not delay their Binding Acks.
        decisions = []
        punts = []
        for kind, item in worker.punts.drain(self.fwd.sad):
            if kind == "binding":
                decisions.append(self._binding_update(item))
            else:
                punts.append((kind, item))
        for kind, item in punts:
            if self._punt_over_budget():
                self.events["punt.shed"] += 1
                continue
            t0 = time.perf_counter()
            if kind == "unbound_hao":
                self._unbound_hao(item)
            else:
                self._punt(item, decisions)
            self._punt_spent += time.perf_counter() - t0
        self._finish_decisions(decisions)

    def _punt_over_budget(self) -> bool:
        """The workers police how many punts arrive (--punt-rate); this bounds
        what they cost: at most PUNT_CPU_SHARE of each second of this thread,
        which runs above the workers, goes to unauthenticated packets, however
        expensive each one is made to be."""
        now = time.monotonic()
        if now - self._punt_window >= 1.0:
            self._punt_window, self._punt_spent = now, 0.0
        return self._punt_spent >= PUNT_CPU_SHARE

    def _finish_decisions(self, decisions: list) -> None:
        if self.bindings is not None and decisions:
            # one grace period for every move of this burst, then the BAs
            self.bindings.finish_grace(decisions)
            for d in decisions:
                if d is not None and d.ba is not None:
                    self._send_ba(d)
                if d is not None and d.error is not None:
                    self._send_error(d.error)
                _log_decision(d)

    def _punt(self, pkt: bytes, decisions: list) -> None:
        """A wire-side packet the engine handed over unchanged. Binding
        decisions it leads to are appended to `decisions` (the caller sends
        their Binding Acks after one grace period)."""
        # Outer fragments (the peer's tunnel MTU was too small, RFC 2473
        # §7.1): reassembled here, then decapsulated as if a worker read them.
        if fragment_header_offset(pkt) is not None:
            whole = self.reassembler.add(pkt, time.monotonic())
            if whole is not None:
                self._decap_reassembled(whole, decisions)
            return
        # A Mobility Header in the clear is a Binding Update that was not
        # protected: it moves nothing (RFC 3776 §6.2); other packets to the HA
        # address (ICMPv6, ...) are counted and not answered.
        if self.bindings is not None and self.bindings.unprotected(pkt, time.monotonic()):
            self.events["punt.binding_update_in_clear"] += 1
            return
        nh = pkt[6] if len(pkt) > 6 else -1
        self.events[f"punt.next_header_{nh}"] += 1
        if nh == 58:
            self._packet_too_big(pkt)

    def _packet_too_big(self, pkt: bytes) -> None:
        """An ICMPv6 Packet Too Big about one of our tunnel packets (it quotes
        an outer header between the HA address and a care-of address - from
        the HA at a home agent, to it at a mobile node - longer than the MTU
        it reports) lowers the path MTU of the tunnel at that care-of address
        (RFC 8201): larger inner packets then get a Packet Too Big of their
        own from the engine (RFC 2473 §7.1, RFC 4459) and their senders
        adapt, instead of being lost on the narrow path. It is
        unauthenticated, so it only ever lowers, at most once per
        PMTU_HOLD_S per CoA, never below 1280, and ages out after PMTU_AGE_S
        (RFC 8201 §4)."""
        if len(pkt) < 48 + 40 or pkt[40] != 2:
            return
        mtu = int.from_bytes(pkt[44:48], "big")
        quoted = pkt[48:]
        cfg_mtu = self.fwd.cfg.home_agent.mtu
        ha = self.fwd.cfg.home_agent.address.packed
        at_ha = self.fwd.opts.role == "home-agent"
        if (quoted[0] >> 4 != 6 or (quoted[8:24] if at_ha else quoted[24:40]) != ha
                or quoted[6] not in (41, 50)
                or 40 + int.from_bytes(quoted[4:6], "big") <= mtu):
            return
        self.events["punt.packet_too_big"] += 1
        coa = quoted[24:40] if at_ha else quoted[8:24]
        now = time.monotonic()
        mtu = max(1280, min(mtu, cfg_mtu))
        held = self._pmtu.get(coa)
        if mtu >= cfg_mtu or (held is not None and (mtu >= held[0]
                                                    or now - held[1] < PMTU_HOLD_S)):
            return
        n = self.fwd.sad.set_path_mtu(coa, mtu)
        if not at_ha and n == 0:
            return                # a packet from a care-of address we have left
        self._pmtu[coa] = (mtu, now)
        self.events["path_mtu.lowered"] += 1
        if at_ha:
            log.warning("ICMPv6 Packet Too Big from %s: path MTU toward care-of address %s is "
                        "now %d (configured %d; %d mobile node(s) there)",
                        ipaddress.IPv6Address(pkt[8:24]), ipaddress.IPv6Address(coa), mtu,
                        cfg_mtu, n)
        else:
            log.warning("ICMPv6 Packet Too Big from %s: path MTU from care-of address %s to "
                        "the home agent is now %d (configured %d)",
                        ipaddress.IPv6Address(pkt[8:24]), ipaddress.IPv6Address(coa), mtu,
                        cfg_mtu)

    def _age_path_mtu(self) -> None:
        """A lowered path MTU goes back to the configured one after
        PMTU_AGE_S: the path may have widened (RFC 8201 §4); if it has not,
        the next Packet Too Big lowers it again."""
        now = time.monotonic()
        for coa, (mtu, since) in list(self._pmtu.items()):
            if now - since < PMTU_AGE_S:
                continue
            del self._pmtu[coa]
            self.fwd.sad.set_path_mtu(coa, self.fwd.cfg.home_agent.mtu)
            self.events["path_mtu.aged_out"] += 1
            log.info("path MTU toward care-of address %s back to the configured %d "
                     "(lowered to %d %.0f s ago)", ipaddress.IPv6Address(coa),
                     self.fwd.cfg.home_agent.mtu, mtu, now - since)

    def _decap_reassembled(self, pkt: bytes, decisions: list) -> None:
        """One reassembled wire-side packet through the control thread's own
        engine (Engine.decap on a one-slot batch: the worker's code, verdicts
        and counters), and its result handled as a worker would: the inner
        packet to the home TUN, an authenticated Mobility Header to the
        binding path, a punt to _punt(); drops are counted by the engine
        (the control engine's totals are part of `fastpath ctl counters`)."""
        if fragment_header_offset(pkt) is not None:
            # a Fragment header inside a reassembled packet: nothing sends
            # that, and reassembling again would let one datagram loop here
            self.events["reassembled.nested_fragment"] += 1
            return
        from fastpath.core.batch import Batch
        if self._slow_batch is None:
            self._slow_batch = Batch(1, MAX_REASSEMBLED)
        b = self._slow_batch
        b.load([pkt])
        eng = self.fwd.control_engine
        eng.decap(b)
        [(v, reason, out)] = b.results()
        if v == Verdict.TO_HOME:
            self._write_home(out)
        elif v == Verdict.BINDING:
            for _slot, vb in eng.take_bindings():
                self.events["reassembled.binding"] += 1
                decisions.append(self._binding_update(vb))
        elif v == Verdict.PUNT and reason == Reason.NO_BINDING:
            self._unbound_hao(out)
        elif v == Verdict.PUNT:
            self._punt(out, decisions)

    def _write_home(self, pkt: bytes) -> None:
        """Write one decapsulated packet to the home TUN (queue 0; a TUN
        write is one whole packet, so sharing the queue with worker 0 is
        safe). With IFF_VNET_HDR it is preceded by an all-zero
        virtio_net_hdr: an ordinary packet, checksums complete."""
        if self.fwd.home_vnet:
            from fastpath.tun import VNET_HDR_LEN
            pkt = bytes(VNET_HDR_LEN) + pkt
        self._write(self.fwd.home_fd, pkt, "reassembled.to_home", "reassembled.home_write_error",
                    "reassembled packet not written to the home TUN", logging.DEBUG)

    def _write(self, fd: int, pkt: bytes, sent: str, failed: str, what: str,
               level: int = logging.WARNING) -> None:
        """One packet the control thread sends itself, counted either way (a
        TUN write is one whole packet: the workers' queues are not disturbed)."""
        try:
            os.write(fd, pkt)
            self.events[sent] += 1
        except OSError as e:
            self.events[failed] += 1
            log.log(level, "%s: %s", what, e)

    def _binding_update(self, vb):
        if vb.purpose == "prefix-discovery":
            self._prefix_solicitation(vb)
            return None
        if self.registration is not None:
            self._binding_ack(vb)
            return None
        if self.bindings is None:
            self.events["binding.unprocessed"] += 1
            return None
        return self.bindings.process(vb, time.monotonic())

    def _send_error(self, error) -> None:
        """RFC 6275 §9.2: a Binding Error for an authenticated Mobility Header
        of a type or form this node does not handle, rate-limited (§9.3.3).
        The Parameter Problem §9.2 also asks for is not sent: it would carry
        the decrypted message, which arrived under ESP, in the clear."""
        if error.kind != "binding_error":
            self.events["binding.param_problem_not_sent"] += 1
            return
        if self._binding_error_token(error.destination, BE_AUTHENTICATED):
            self._write_binding_error(error)

    def _unbound_hao(self, pkt: bytes) -> None:
        """A packet the engine did not process because its Home Address
        option names no binding with the packet's source as care-of address
        (RFC 6275 §9.3.1): answered with a Binding Error, status 1. The
        token is taken first: finding the option again walks every option
        byte in Python, which only the rate-limited few may cost."""
        self.events["hao.unknown_binding"] += 1
        if not self._binding_error_token(pkt[8:24], BE_UNAUTHENTICATED):
            return
        error = unknown_binding_error(pkt)
        if error is None:
            self.events["hao.option_not_found"] += 1
            return
        self._write_binding_error(error)

    def _binding_error_token(self, destination: bytes, bucket: str) -> bool:
        """One Binding Error to `destination` may go now; counts why when
        not. Rate-limited (§9.3.3) in two buckets of BINDING_ERRORS_PER_S,
        BE_AUTHENTICATED and BE_UNAUTHENTICATED. The bucket is looked at
        first (while it is empty nothing else is done); then no token is
        spent on a destination that is not to be answered (§9.3.3: not a
        unicast address)."""
        if bucket not in (BE_AUTHENTICATED, BE_UNAUTHENTICATED):
            raise ValueError(f"no Binding Error bucket {bucket!r}")
        now = time.monotonic()
        tokens, last = self._be_buckets.get(bucket, (BINDING_ERRORS_PER_S, now))
        tokens = min(BINDING_ERRORS_PER_S, tokens + (now - last) * BINDING_ERRORS_PER_S)
        ok = False
        if tokens < 1.0:
            self.events["binding.error_rate_limited"] += 1
        elif reply_problem(destination, self.fwd.cfg.home_agent.address.packed) is not None:
            self.events["binding.error_bad_source"] += 1
        else:
            tokens -= 1.0
            ok = True
        self._be_buckets[bucket] = (tokens, now)
        return ok

    def _write_binding_error(self, error) -> None:
        pkt = build_binding_error_packet(self.fwd.cfg.home_agent.address.packed, error)
        if pkt is None:     # (not a unicast address: _binding_error_token refused it already)
            self.events["binding.error_bad_source"] += 1
            return
        self._write(self.fwd.wire_fd, pkt, "binding.error_sent", "binding.error_write_error",
                    "Binding Error not sent")

    def _prefix_solicitation(self, vb) -> None:
        """An authenticated Mobile Prefix Solicitation (the engine issues
        these at a home agent only): answered with the home prefix."""
        self.events["prefix.solicitations"] += 1
        ha = self.fwd.cfg.home_agent
        try:
            pkt = prefix.answer(self.fwd.control_engine, vb, ha.home_prefix, ha.address.packed)
        except prefix.BadSource as e:
            self.events["prefix.bad_source"] += 1
            log.debug("Mobile Prefix Solicitation from %s not answered: %s",
                      ipaddress.IPv6Address(vb.home_address), e)
            return
        except prefix.PrefixError as e:
            self.events["prefix.malformed"] += 1
            log.debug("Mobile Prefix Solicitation from %s not answered: %s",
                      ipaddress.IPv6Address(vb.home_address), e)
            return
        except KeyError:
            self.events["prefix.no_out_sa"] += 1
            log.warning("Mobile Prefix Solicitation from %s not answered: no prefix-discovery "
                        "out SA in the config", ipaddress.IPv6Address(vb.home_address))
            return
        if pkt is None:
            self.events["prefix.seq_exhausted"] += 1
            return
        self._write(self.fwd.wire_fd, pkt, "prefix.advertisements_sent", "prefix.write_error",
                    "Mobile Prefix Advertisement not sent")

    def _send_ba(self, decision) -> None:
        pkt = build_ba_packet(self.fwd.control_engine, decision)
        if pkt is None:
            self.events["binding.ba_not_sent"] += 1
            return
        self._write(self.fwd.wire_fd, pkt, "binding.ba_sent", "binding.ba_write_error",
                    "Binding Ack not sent")

    # -- mobile-node role --------------------------------------------------------------
    def _binding_ack(self, vb) -> None:
        from fastpath import mh
        try:
            msg = mh.parse(vb.mobility_header, self.registration.ha, self.registration.hoa)
        except mh.MHError:
            self.events["registration.malformed"] += 1
            return
        if not isinstance(msg, mh.BindingAck):
            self.events["registration.unexpected_mh"] += 1
            return
        done = self.registration.on_ack(msg, time.monotonic())
        self.events[f"registration.ba_status_{msg.status}"] += 1
        if done:
            log.info("registered with the home agent (sequence %d, lifetime %d s)",
                     msg.sequence, msg.lifetime * 4)

    def _send_bu(self, sent) -> None:
        pkt = self.fwd.control_engine.seal_mobility(self.registration.hoa, sent.mh, sent.coa)
        if pkt is None:
            self.events["registration.seq_exhausted"] += 1
            return
        self._write(self.fwd.wire_fd, pkt, "registration.bu_sent", "registration.bu_write_error",
                    "Binding Update not sent")

    def _registration_timer(self) -> None:
        sent = self.registration.due(time.monotonic())
        if sent is not None:
            self._send_bu(sent)

    def move(self, coa: bytes) -> None:
        """Mobile-node role: we are now at `coa` (moving is the MN's own
        business). Traffic leaves from it after the grace period; a Binding
        Update tells the home agent."""
        if self.registration is None:
            raise PermissionError("a home agent moves bindings only on authenticated "
                                  "Binding Updates")
        if self.fwd.host is not None:
            self.fwd.host.relocate(coa)
        self.fwd.sad.relocate(self.registration.hoa, coa)
        self.fwd.sad.wait_grace(1.0)
        self.events["registration.moves"] += 1
        self._send_bu(self.registration.move(coa, time.monotonic()))

    def _on_bind(self, hoa: bytes) -> None:
        if self.fwd.host is not None:
            self.fwd.host.bind(hoa)

    def _on_unbind(self, hoa: bytes) -> None:
        if self.fwd.host is not None:
            self.fwd.host.unbind(hoa)

    # -- timers --------------------------------------------------------------------
    def _sequence_check_s(self) -> float:
        store = self.fwd.seqstore
        return store.next_check_s if store is not None else 1.0

    def _extend_sequences(self) -> None:
        # The reservation is fsync'd before the workers may use it; an fsync
        # takes milliseconds, so it runs off the loop (Binding Updates must not
        # wait behind it), and only when a limit must move: the check itself
        # is cheap, and a hop to the executor at every check cost an idle
        # forwarder hundreds of wake-ups a second. One commit at a time: the
        # store is not shared otherwise.
        if self.fwd.seqstore is None or self._extending:
            return
        moves = self.fwd.seqstore.plan()
        if not moves:
            return
        self._extending = True
        fut = asyncio.get_running_loop().run_in_executor(None, self.fwd.seqstore.commit, moves)
        fut.add_done_callback(self._extended)

    def _extended(self, fut) -> None:
        self._extending = False
        try:
            if fut.result():
                self.events["sequence.reservations"] += 1
        except Exception:
            log.exception("sequence reservation failed")
            self.events["sequence.reservation_errors"] += 1

    def _expire_fragments(self) -> None:
        self.reassembler.expire(time.monotonic())

    def _log_drops(self) -> None:
        """Every DROP_LOG_S, one line with the drops since the last one, by
        reason (nothing when there were none): at INFO, at WARNING when an SA
        ran out of sequence numbers (traffic is being lost until the
        reservation moves or, at 2^32-1 / 2^64-1, until the SA is rekeyed)."""
        snap = metrics.collect(self.fwd)
        drops = snap["totals"]["drops"]
        new = {r: n - self._drops_seen.get(r, 0) for r, n in drops.items()
               if n > self._drops_seen.get(r, 0)}
        self._drops_seen = dict(drops)
        if new:
            log.info("drops in the last %g s: %s (per SA: fastpath ctl sas)", DROP_LOG_S,
                     ", ".join(f"{r}={n}" for r, n in sorted(new.items())))
        for sa in snap["sas"]:
            n = sa["drops"].get("seq_exhausted", 0)
            if n > self._exhausted_seen.get(sa["spi"], 0):
                log.warning("SA 0x%08x (%s %s, HoA %s): %d packets dropped, no sequence number "
                            "left (at %d); at the end of the sequence space the SA needs a "
                            "new key", sa["spi"], sa["purpose"], sa["direction"],
                            sa["home_address"], n - self._exhausted_seen.get(sa["spi"], 0),
                            sa["sequence"])
                self._exhausted_seen[sa["spi"]] = n

    def _expire(self) -> None:
        for hoa in self.bindings.expire_due(time.monotonic()):
            self.events["binding.expired"] += 1

    # -- views ---------------------------------------------------------------------
    def counters(self) -> dict:
        out = dict(self.events)
        if self.bindings is not None and hasattr(self.bindings, "counters"):
            out["bindings"] = self.bindings.counters()
        out["reassembly"] = self.reassembler.counters()
        return out

    def view(self, what: str):
        fwd = self.fwd
        if what == "status":
            return {"role": fwd.opts.role, "pid": os.getpid(),
                    "uptime_s": round(time.time() - self.started, 1),
                    "workers": len(fwd.workers), "batch": fwd.opts.batch,
                    "crypto": fwd.backend, "home_if": fwd.home_if, "wire_if": fwd.wire_if,
                    "mobile_nodes": fwd.sad.n_mobile_nodes, "sas": fwd.sad.n_sas,
                    "scheduling": self._policies()}
        if what == "bindings":
            if self.bindings is not None:
                return self.bindings.entries(time.monotonic())
            return fwd.sad.mobile_nodes()
        if what == "sas":
            return fwd.sad.sas()
        if what == "counters":
            return metrics.collect(fwd)
        raise KeyError(what)

    # -- control socket: read-only, mode 0600 ----------------------------------------
    async def _serve_ctl(self, reader, writer) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
            words = line.split()
            if line in CTL_COMMANDS:
                reply = {"ok": self.view(line)}
            elif len(words) == 2 and words[0] == "move" and self.registration is not None:
                # Only a mobile node's own forwarder takes this: it moves itself.
                try:
                    self.move(ipaddress.IPv6Address(words[1]).packed)
                    reply = {"ok": {"moved_to": words[1]}}
                except (ValueError, OSError) as e:
                    reply = {"error": str(e)}
            elif words and words[0] == "move" and self.registration is None:
                reply = {"error": "refused: a home agent's bindings move only on an "
                                  "authenticated Binding Update ('move' is for a forwarder "
                                  "in the mobile-node role)"}
            else:
                reply = {"error": f"unknown request {line!r}; one of {', '.join(CTL_COMMANDS)}"
                                  + (", move COA" if self.registration is not None else "")}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _serve_metrics(self, reader, writer) -> None:
        try:
            req = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = req.decode(errors="replace").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1] in ("/metrics", "/"):
                body = metrics.prometheus(metrics.collect(self.fwd)).encode()
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
            else:
                body = b"not found\n"
                head = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
            writer.write(head + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def freeze_startup_heap() -> int:
    """What start-up allocated (config, SA table, modules) lives as long as
    the process: move it out of the collector's generations, so that a full
    collection while a Binding Update waits walks only what came later
    (~19 ms -> ~1 ms in the home agent of bench swap). Returns how many
    objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def ctl_request(path: str, what: str, timeout: float = 5.0):
    """Client side of the control socket (fastpath ctl)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise OSError("no forwarder answers here: is 'fastpath run' running, and with "
                          "this --control-socket?") from None
        except PermissionError:
            raise OSError("permission denied: the control socket is mode 0600, owned by "
                          "the forwarder's user") from None
        except socket.timeout:
            raise OSError(f"the forwarder did not accept within {timeout:g} s") from None
        s.sendall(what.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise OSError("the forwarder closed the connection without an answer")
    reply = json.loads(data)
    if "error" in reply:
        raise RuntimeError(reply["error"])
    return reply["ok"]


def run_forever(fwd, *, control_socket=None, metrics_addr=None, listeners=None) -> None:
    """Run the control loop (uvloop when available) until a signal."""
    cp = ControlPlane(fwd, control_socket=control_socket, metrics_addr=metrics_addr,
                      listeners=listeners)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(cp.run())
