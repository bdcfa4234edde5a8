"""Counters of a running forwarder (SPEC §7): one snapshot for `fastpath ctl
counters`, and the same numbers in Prometheus text format for --metrics."""
from __future__ import annotations

from fastpath.reassembly import COUNTERS as REASSEMBLY_COUNTERS
from fastpath.verdicts import REASON_NAMES

DROP_REASONS = [r for r in REASON_NAMES if r != "none"]


def collect(fwd) -> dict:
    """Totals over the engines (the workers', and the control thread's, which
    decapsulates reassembled fragments), per-SA counters, worker I/O,
    control-plane counters."""
    totals = {"drops": {r: 0 for r in DROP_REASONS}, "verdicts": {}}
    engines = list(fwd.engines)
    if getattr(fwd, "control_engine", None) is not None:
        engines.append(fwd.control_engine)
    for eng in engines:
        c = eng.counters()
        for r, n in c["drops"].items():
            totals["drops"][r] += n
        for v, n in c["verdicts"].items():
            totals["verdicts"][v] = totals["verdicts"].get(v, 0) + n
    io: dict = {}
    for w in fwd.workers:
        for k, v in w.counters().items():
            if isinstance(v, dict):
                d = io.setdefault(k, {})
                for side, n in v.items():
                    d[side] = d.get(side, 0) + n
            else:
                io[k] = io.get(k, 0) + v
    out = {"totals": totals, "io": io, "sas": fwd.sad.sas() if fwd.sad is not None else []}
    control = getattr(fwd, "control", None)
    if control is not None:
        out["control"] = control.counters()
    if fwd.sad is not None:
        mns = fwd.sad.mobile_nodes()
        out["state"] = {"mobile_nodes": len(mns),
                        "bindings": sum(1 for mn in mns if mn["care_of_address"] is not None),
                        "start_time": getattr(control, "started", None)}
    return out


def _line(name: str, value, **labels) -> str:
    if labels:
        lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        return f"{name}{{{lab}}} {value}"
    return f"{name} {value}"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(snapshot: dict) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines = []

    def family(name, kind, help_):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")

    state = snapshot.get("state", {})
    if state.get("start_time") is not None:
        family("fastpath_start_time_seconds", "gauge", "When the forwarder started (Unix time).")
        lines.append(_line("fastpath_start_time_seconds", round(state["start_time"], 3)))
    if "mobile_nodes" in state:
        family("fastpath_mobile_nodes", "gauge", "Mobile nodes in the configuration.")
        lines.append(_line("fastpath_mobile_nodes", state["mobile_nodes"]))
        family("fastpath_bindings", "gauge", "Mobile nodes with a registered care-of address "
                                             "(their traffic is tunnelled).")
        lines.append(_line("fastpath_bindings", state["bindings"]))
    family("fastpath_drops_total", "counter", "Packets dropped, by reason (SPEC §7).")
    for r, n in snapshot["totals"]["drops"].items():
        lines.append(_line("fastpath_drops_total", n, reason=r))
    family("fastpath_packets_total", "counter", "Packets handled by the engines, by verdict.")
    for v, n in snapshot["totals"]["verdicts"].items():
        lines.append(_line("fastpath_packets_total", n, verdict=v))
    family("fastpath_sa_packets_total", "counter", "Packets per SA and direction.")
    for sa in snapshot["sas"]:
        d = sa["direction"]
        lines.append(_line("fastpath_sa_packets_total", sa["packets_" + d], spi=f"0x{sa['spi']:08x}",
                           direction=d, purpose=sa["purpose"], home_address=sa["home_address"]))
    family("fastpath_sa_bytes_total", "counter", "Bytes per SA and direction.")
    for sa in snapshot["sas"]:
        d = sa["direction"]
        lines.append(_line("fastpath_sa_bytes_total", sa["bytes_" + d], spi=f"0x{sa['spi']:08x}",
                           direction=d))
    family("fastpath_sa_drops_total", "counter", "Drops per SA, by reason.")
    for sa in snapshot["sas"]:
        for r, n in sa["drops"].items():
            lines.append(_line("fastpath_sa_drops_total", n, spi=f"0x{sa['spi']:08x}", reason=r))
    family("fastpath_sa_sequence", "gauge", "Last sequence number used (out) or accepted (in).")
    for sa in snapshot["sas"]:
        lines.append(_line("fastpath_sa_sequence", sa["sequence"], spi=f"0x{sa['spi']:08x}",
                           direction=sa["direction"]))
    io = snapshot.get("io", {})
    for key in ("rx", "tx", "rx_errors", "tx_errors", "rx_oversize"):
        name = f"fastpath_tun_{key}_total"
        family(name, "counter", f"TUN {key.replace('_', ' ')} by side.")
        for side, n in io.get(key, {}).items():
            lines.append(_line(name, n, side=side))
    family("fastpath_punt_overflow_total", "counter", "Packets for the control plane dropped: ring full.")
    lines.append(_line("fastpath_punt_overflow_total", io.get("punt_overflow", 0)))
    for key, help_ in (("fragmented", "Outer packets sent as IPv6 fragments."),
                       ("gso_packets", "TSO super-packets read from the home TUN."),
                       ("gso_segments", "Segments cut from TSO super-packets."),
                       ("gro_packets", "Merged TCP writes to the home TUN."),
                       ("gro_segments", "Segments carried by merged TCP writes."),
                       ("offload_errors", "Home TUN reads with an offload request we refuse "
                                          "(dropped)."),
                       ("punt_policed", "Unauthenticated packets for the control plane dropped "
                                        "above --punt-rate (fragments, ICMPv6, ...).")):
        family(f"fastpath_{key}_total", "counter", help_)
        lines.append(_line(f"fastpath_{key}_total", io.get(key, 0)))
    control = dict(snapshot.get("control", {}))
    reassembly = control.pop("reassembly", {})
    family("fastpath_control_total", "counter", "Control-plane events (BUs by status, CoA swaps, ...).")
    for k, n in sorted(_flatten(control).items()):
        lines.append(_line("fastpath_control_total", n, event=k))
    # Reassembly of outer fragments in the control thread (fastpath.reassembly):
    # one family per counter, each with its own help text.
    for key, help_ in REASSEMBLY_COUNTERS.items():
        name = f"fastpath_reassembly_{key}_total"
        family(name, "counter", help_)
        lines.append(_line(name, reassembly.get(key, 0)))
    family("fastpath_reassembly_datagrams", "gauge",
           "Datagrams being reassembled (discarded ones held until their timeout included).")
    lines.append(_line("fastpath_reassembly_datagrams", reassembly.get("datagrams_in_progress", 0)))
    family("fastpath_reassembly_bytes", "gauge", "Bytes of fragments held for reassembly.")
    lines.append(_line("fastpath_reassembly_bytes", reassembly.get("buffered_bytes", 0)))
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float)):
            out[key] = v
    return out
