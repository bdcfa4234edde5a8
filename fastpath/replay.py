"""`fastpath replay`: run the engine over a capture instead of TUN devices.

Packets addressed to the HA are wire-side input (decap); packets addressed to
a configured home address are home-side input (encap). They are processed in
capture order, in batches of consecutive same-side packets, and every packet
the engine emits on either side is written to the output capture in order.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field

from fastpath import pcap, prefix
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.reassembly import Reassembler, fragment_header_offset
from fastpath.ref.ipv6 import fragment
from fastpath.tables import resolve_backend, sad_from_config
from fastpath.verdicts import Reason, Verdict

log = logging.getLogger("fastpath.replay")

WIRE, HOME = "wire", "home"
NH_DESTOPT = 60


@dataclass
class ReplayResult:
    packets_in: int = 0
    packets_out: int = 0
    skipped: int = 0                       # neither to the HA nor to a home address
    verdicts: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    binding_acks: int = 0
    binding_errors: int = 0                # RFC 6275 §9.2, §9.3.1: Binding Errors written
    binding_errors_not_sent: int = 0       # ... not: the source was not a unicast address
    unbound_home_address_options: int = 0  # packets whose HAO names no binding (§9.3.1)
    prefix_advertisements: int = 0        # answers to Mobile Prefix Solicitations
    prefix_unanswered: int = 0             # solicitations not answered (malformed, no SA)
    binding_statuses: Counter = field(default_factory=Counter)
    reassembly: dict = field(default_factory=dict)   # Reassembler.counters()
    cut_by_snaplen: int = 0                # records shorter than the packet on the wire
    input_error: str | None = None         # damaged input: what was read before it is kept


def _side(pkt: bytes, ha: bytes, homes: set[bytes]) -> str | None:
    if len(pkt) < 40 or pkt[0] >> 4 != 6:
        return WIRE if len(pkt) >= 40 and pkt[24:40] == ha else None
    dst = pkt[24:40]
    if dst == ha:
        return WIRE
    if dst in homes:
        return HOME
    return None


def _prefix_answer(engine, vb, cfg, res: ReplayResult) -> bytes | None:
    """The Mobile Prefix Advertisement for an authenticated solicitation
    (fastpath.prefix), counted; None when it is not answered."""
    ha = cfg.home_agent
    try:
        pkt = prefix.answer(engine, vb, ha.home_prefix, ha.address.packed)
    except (prefix.PrefixError, KeyError):
        pkt = None
    if pkt is None:
        res.prefix_unanswered += 1
    else:
        res.prefix_advertisements += 1
    return pkt


def _binding_error(ha: bytes, error, res: ReplayResult) -> bytes | None:
    """The Binding Error packet for `error`, counted; None (counted too)
    when its destination is not a unicast address to answer."""
    from fastpath.binding import build_binding_error_packet
    pkt = build_binding_error_packet(ha, error)
    if pkt is None:
        res.binding_errors_not_sent += 1
    else:
        res.binding_errors += 1
    return pkt


def replay(cfg, in_path, out_path, backend: str = "auto", batch_size: int = 64) -> tuple[ReplayResult, object]:
    from fastpath.binding import BindingCache, build_ba_packet, unknown_binding_error
    backend = resolve_backend(backend)
    sad = sad_from_config(cfg, backend)
    engine = Engine(sad, backend, max_batch=batch_size)
    cache = BindingCache(sad, cfg)
    ha = cfg.home_agent.address.packed
    homes = {mn.home_address.packed for mn in cfg.mobile_nodes}
    batch = Batch(batch_size, max_packet=max(2048, cfg.home_agent.mtu))
    # Wire-side fragments are reassembled before the engine sees them, as the
    # forwarder's control thread does; a reassembled packet bigger than a
    # slot is processed alone in a batch of its own size.
    reasm = Reassembler()
    res = ReplayResult()
    pending: list[float] = []
    side_of_batch: list[str | None] = [None]

    reader = pcap.read_packets(in_path)     # its header is checked before OUT is touched
    with reader, _Output(in_path, out_path) as out:
        def flush(batch=batch):
            if not pending:
                return
            if side_of_batch[0] == HOME:
                engine.encap(batch)
            else:
                engine.decap(batch)
            # Authenticated Binding Updates go to the binding cache, with the
            # capture's clock; a Binding Ack takes the BU's place in the output
            # (and a Mobile Prefix Advertisement a solicitation's).
            acks = {}
            for slot, vb in (engine.take_bindings() if side_of_batch[0] == WIRE else ()):
                if vb.purpose == "prefix-discovery":
                    acks[slot] = _prefix_answer(engine, vb, cfg, res)
                    continue
                decision = cache.process(vb, pending[slot])
                if decision.status is not None:
                    res.binding_statuses[decision.status] += 1
                if decision.ba is not None:
                    acks[slot] = build_ba_packet(engine, decision)
                    res.binding_acks += acks[slot] is not None
                elif decision.error is not None and decision.error.kind == "binding_error":
                    acks[slot] = _binding_error(ha, decision.error, res)
            for i, (v, r, data) in enumerate(batch.results()):
                res.verdicts[Verdict(v).name.lower()] += 1
                if v == Verdict.DROP:
                    res.drops[Reason(r).name.lower()] += 1
                elif v == Verdict.TO_WIRE:
                    # what the tunnel MTU cannot carry leaves fragmented (RFC 2473 §7.1)
                    for piece in fragment(data, cfg.home_agent.mtu, res.packets_out):
                        out.write(piece, pending[i])
                        res.packets_out += 1
                elif v == Verdict.TO_HOME:
                    out.write(data, pending[i])
                    res.packets_out += 1
                elif v == Verdict.PUNT and r == Reason.NO_BINDING:
                    # its Home Address option names no binding (RFC 6275
                    # §9.3.1): a Binding Error takes its place
                    error = unknown_binding_error(data)
                    res.unbound_home_address_options += 1
                    if error is not None:
                        acks[i] = _binding_error(ha, error, res)
                elif v == Verdict.PUNT:
                    cache.unprotected(data, pending[i])
                if acks.get(i) is not None:
                    out.write(acks[i], pending[i])
                    res.packets_out += 1
            pending.clear()
            batch.count = 0

        for ts, pkt in _until_damaged(reader, res):
            res.packets_in += 1
            side = _side(pkt, ha, homes)
            if side is None:
                res.skipped += 1
                continue
            reasm.expire(ts)
            if side == WIRE and fragment_header_offset(pkt) is not None:
                pkt = reasm.add(pkt, ts)
                if pkt is None:             # more to come, or discarded (counted)
                    continue
                if fragment_header_offset(pkt) is not None:
                    res.verdicts["drop"] += 1
                    res.drops["nested_fragment"] += 1
                    continue
                if len(pkt) > batch.max_packet:    # alone, in a slot of its size
                    flush()
                    side_of_batch[0] = WIRE
                    big = Batch(1, max_packet=len(pkt) + 64)
                    big.set(0, pkt)
                    pending.append(ts)
                    flush(big)
                    continue
            if len(pkt) > batch.max_packet:
                res.verdicts["drop"] += 1
                res.drops["too_big"] += 1
                continue
            for hoa in cache.expire_due(ts):
                log.info("binding of %s expired", ipaddress.IPv6Address(hoa))
            if side != side_of_batch[0] or len(pending) == batch_size:
                flush()
                side_of_batch[0] = side
            batch.set(len(pending), pkt)
            pending.append(ts)
            # A Binding Update (it carries a Home Address option) may move a
            # binding: what follows it must see the result, so end the batch.
            if side == WIRE and pkt[6] == NH_DESTOPT:
                flush()
        flush()
    res.reassembly = {k: v for k, v in reasm.counters().items() if v}
    res.cut_by_snaplen = reader.truncated
    return res, sad


def _until_damaged(reader, res: ReplayResult):
    """The reader's packets; a damaged record (a capture cut off mid-write,
    say) ends the input there, noted in `res`, instead of losing the output
    of everything before it."""
    try:
        yield from reader
    except pcap.PcapError as e:
        res.input_error = str(e)
        log.warning("input ends early: %s", e)


class _Output:
    """The output capture. A regular file is written under a temporary name
    and renamed into place only when the replay finished, so a failed run
    leaves no half-written OUT (and an existing OUT untouched); a device or a
    pipe (/dev/null, /dev/stdout) is written directly. OUT naming the input
    is refused: it would be truncated before it is read."""

    def __init__(self, in_path, out_path):
        if hasattr(out_path, "write"):          # a file object: the caller's to manage
            self.path, self.tmp = None, None
            self.writer = pcap.PcapWriter(out_path)
            return
        self.path = os.fspath(out_path)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise pcap.PcapError(f"{self.path}: {e.strerror}") from None
        if (st is not None and not hasattr(in_path, "read")
                and os.path.samestat(st, os.stat(in_path))):
            raise pcap.PcapError(f"{self.path}: this is the input capture; "
                                 "give --out another file")
        direct = st is not None and not stat.S_ISREG(st.st_mode)
        self.tmp = None if direct else f"{self.path}.{os.getpid()}.tmp"
        self.writer = pcap.PcapWriter(self.path if direct else self.tmp)

    def __enter__(self):
        return self.writer

    def __exit__(self, exc_type, *_):
        try:
            self.writer.close()
        except BaseException:
            if self.tmp:
                _unlink(self.tmp)
            if exc_type is None:
                raise
            return
        if self.tmp is None:
            return
        if exc_type is not None:
            _unlink(self.tmp)
            return
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            _unlink(self.tmp)
            raise pcap.PcapError(f"{self.path}: cannot write: {e.strerror}") from None


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def format_report(res: ReplayResult, sad) -> str:
    lines = [f"packets read: {res.packets_in}   written: {res.packets_out}   "
             f"not for this HA: {res.skipped}"]
    lines.append("verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(res.verdicts.items())))
    if res.drops:
        lines.append("drops: " + ", ".join(f"{k}={v}" for k, v in sorted(res.drops.items())))
    if res.reassembly:
        lines.append("fragments: " + ", ".join(f"{k}={v}" for k, v in sorted(res.reassembly.items())))
    if res.binding_statuses:
        lines.append("binding updates: " + ", ".join(
            f"status {k}={v}" for k, v in sorted(res.binding_statuses.items()))
            + f"; binding acks written: {res.binding_acks}")
    if res.binding_errors or res.binding_errors_not_sent:
        lines.append(f"binding errors written: {res.binding_errors} (malformed Mobility "
                     f"Headers, Home Address options without a binding: "
                     f"{res.unbound_home_address_options}); not written, the source not "
                     f"a unicast address: {res.binding_errors_not_sent}")
    if res.prefix_advertisements or res.prefix_unanswered:
        lines.append(f"mobile prefix solicitations answered: {res.prefix_advertisements}, "
                     f"not answered: {res.prefix_unanswered}")
    if res.cut_by_snaplen:
        lines.append(f"records cut by the capture's snapshot length: {res.cut_by_snaplen} "
                     "(processed as captured: ESP ones fail their ICV)")
    if res.input_error:
        lines.append(f"input ends early: {res.input_error}; the packets before it "
                     "were processed and written")
    lines.append("")
    lines.append(f"{'SPI':>10} {'dir':3} {'purpose':18} {'home address':24} {'packets':>8} {'bytes':>10}  drops")
    for sa in sad.sas():
        d = sa["direction"]
        drops = ", ".join(f"{k}={v}" for k, v in sa["drops"].items()) or "-"
        lines.append(f"{sa['spi']:#10x} {d:3} {sa['purpose']:18} {sa['home_address']:24} "
                     f"{sa['packets_' + d]:>8} {sa['bytes_' + d]:>10}  {drops}")
    return "\n".join(lines)


def main(args) -> int:
    from fastpath.config import load
    cfg = load(args.config)
    res, sad = replay(cfg, args.input, args.output, getattr(args, "crypto", "auto"),
                      getattr(args, "batch", 64))
    print(format_report(res, sad))
    return 1 if res.input_error else 0
