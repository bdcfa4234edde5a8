"""``fastpath`` command line (SPEC §6).

    fastpath check  -c FILE                 validate the config, print the SA table
    fastpath keys   -c FILE --wireshark     esp_sa lines for Wireshark / tshark
    fastpath replay -c FILE --in IN --out OUT   run the engine over a capture
    fastpath run    -c FILE [flags]         the forwarder (TUNs, workers, control loop)
    fastpath ctl    status|bindings|sas|counters   views of a running forwarder
    fastpath demo                           CN-HA-MN in network namespaces

``main(argv)`` returns the exit status: 0 on success, 2 on a usage,
configuration or capture-file problem (printed as ``fastpath: <message>`` on
stderr, never a traceback); replay returns 1 for a capture that ends early.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from typing import Sequence

from fastpath.config import SUMMARY_HEADER, Config, ConfigError, load
from fastpath.control import PUNT_RATE
from fastpath.netlink import QUEUE_LEN
from fastpath.pcap import PcapError

__all__ = ["main", "build_parser", "esp_sa_records", "esp_sa_lines",
           "ESP_SA_COLUMNS"]

PROG = "fastpath"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Column titles of Wireshark's ESP SA table (Preferences > Protocols > ESP >
# ESP SAs), in the order of the fields of its "esp_sa" file records.  The
# first 8 are understood by every Wireshark since 1.x; the last two (sequence
# number length "32-bit"/"64-bit", and the assumed ESN high bits) were added
# later: Wireshark 4.0 ignores them with a warning, newer versions fill them in
# with defaults ("32-bit", "0") when a record has only 8.  So records have 8
# fields unless an SA uses ESN (columns="auto").
ESP_SA_COLUMNS = ("Protocol", "Src IP", "Dest IP", "SPI", "Encryption",
                  "Encryption Key", "Authentication", "Authentication Key",
                  "SN", "ESN High Bits")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


# --------------------------------------------------------------------------
# Wireshark esp_sa records


def esp_sa_records(cfg: Config, *, any_coa: bool = False,
                   columns: int | None = None) -> list[tuple[str, ...]]:
    """One Wireshark ESP SA record per SA of ``cfg``, as tuples of strings.

    Addresses are the ones Wireshark matches on, i.e. its idea of the packet's
    source and destination:

    * transport-mode SAs (binding, prefix-discovery): Wireshark replaces the
      source with the Home Address option's address and the destination with
      the type 2 routing header's address, so the records name the HoA and the
      HA address - which also keeps them valid when the MN moves;
    * tunnel-mode SAs (return-routability, payload): the outer header, CoA and
      HA address; '*' (any) when no static CoA is configured or ``any_coa``.

    GCM keys are printed with their 4-byte salt appended, as Wireshark expects.
    ``columns`` is 8, 10, or None for 10 when some SA uses ESN and 8 otherwise.
    """
    if columns is None:
        columns = 10 if any(sa.esn for _, sa in cfg.sas()) else 8
    if columns not in (8, 10):
        raise ValueError(f"columns must be 8 or 10, not {columns}")
    ha = str(cfg.home_agent.address)
    out: list[tuple[str, ...]] = []
    for mn, sa in cfg.sas():
        if sa.mode == "transport":
            peer = str(mn.home_address)
        elif mn.care_of_address is not None and not any_coa:
            peer = str(mn.care_of_address)
        else:
            peer = "*"
        src, dst = (peer, ha) if sa.direction == "in" else (ha, peer)
        alg = sa.algorithm
        enc_key = sa.enc_key + sa.salt
        rec = ("IPv6", src, dst, f"0x{sa.spi:08x}",
               alg.wireshark_enc, "0x" + enc_key.hex() if enc_key else "",
               alg.wireshark_auth, "0x" + sa.auth_key.hex() if sa.auth_key else "")
        if columns == 10:
            rec += ("64-bit" if sa.esn else "32-bit", "0")
        out.append(rec)
    return out


def _uat_quote(field: str) -> str:
    # Wireshark's UAT files quote every field; '"', '\\' and non-printables are
    # written as \xNN escapes.
    esc = "".join(c if (c.isprintable() and c not in '"\\') else
                  f"\\x{ord(c):02x}" for c in field)
    return f'"{esc}"'


def esp_sa_lines(cfg: Config, *, any_coa: bool = False,
                 columns: int | None = None) -> list[str]:
    """The records of :func:`esp_sa_records` as lines of an ``esp_sa`` file."""
    return [",".join(_uat_quote(f) for f in rec)
            for rec in esp_sa_records(cfg, any_coa=any_coa, columns=columns)]


# --------------------------------------------------------------------------
# subcommands


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h)
              for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header).rstrip())
    print(fmt.format(*("-" * w for w in widths)).rstrip())
    for r in rows:
        print(fmt.format(*r).rstrip())


def cmd_check(args: argparse.Namespace) -> int:
    from fastpath import seqstore
    cfg = load(args.config)
    ha, ifs = cfg.home_agent, cfg.interfaces
    n_sa = sum(len(mn.sas) for mn in cfg.mobile_nodes)
    print(f"config        {cfg.path}")
    print(f"home agent    {ha.address}   home prefix {ha.home_prefix}   MTU {ha.mtu}")
    try:
        state = seqstore.describe(ha.state_dir)
    except RuntimeError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    print(f"state dir     {ha.state_dir}   {state}")
    print(f"interfaces    home {ifs.home}   wire {ifs.wire}   proxy NDP "
          f"{'on ' + ifs.home_link if ifs.home_link else 'off'}")
    if ha.allow_manual_aead:
        print("manual AEAD   allowed (lab/benchmark only: RFC 4106 §8.1, RFC 8221 §3)")
    print()
    if cfg.mobile_nodes:
        _print_table(SUMMARY_HEADER, cfg.summary_rows())
        print()
    print(f"OK: {len(cfg.mobile_nodes)} mobile node"
          f"{'s' if len(cfg.mobile_nodes) != 1 else ''}, {n_sa} SA"
          f"{'s' if n_sa != 1 else ''}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    columns = None if args.columns == "auto" else int(args.columns)
    records = esp_sa_records(cfg, any_coa=args.any_coa, columns=columns)
    lines = [",".join(_uat_quote(f) for f in rec) for rec in records]
    if not args.no_header:
        cols = ESP_SA_COLUMNS[:len(records[0]) if records else 8]
        print(f"# Wireshark ESP SAs for {cfg.path} (generated by fastpath keys).")
        print("# Contains secret keys. Save as the 'esp_sa' file of your Wireshark")
        print("# profile (e.g. ~/.config/wireshark/esp_sa), then enable ESP")
        print("# decryption; with tshark:")
        print("#   tshark -o esp.enable_encryption_decode:TRUE "
              "-o esp.enable_authentication_check:TRUE -r CAPTURE.pcap")
        print("#" + ",".join(_uat_quote(c) for c in cols))
    for line in lines:
        print(line)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        from fastpath import replay
    except ModuleNotFoundError as e:
        if e.name != "fastpath.replay":
            raise
        return _not_available("replay")
    rc = replay.main(args)
    return 0 if rc is None else int(rc)


def _not_available(cmd: str) -> int:
    print(f"{PROG} {cmd}: not available yet in this build "
          f"(tracked by the forwarder/control-plane issues)", file=sys.stderr)
    return 2


DEFAULT_CONTROL_SOCKET = "/run/fastpath.sock"


def cmd_run(args: argparse.Namespace) -> int:
    from fastpath.control import Listeners, run_forever
    from fastpath.forwarder import DEFAULT_BATCH, Forwarder, Options, parse_cpus
    cfg = load(args.config)
    try:
        opts = Options(workers=args.workers, batch=args.batch or DEFAULT_BATCH,
                       home_if=args.home_if, wire_if=args.wire_if, cpus=parse_cpus(args.cpu),
                       crypto=args.crypto, role=args.role, home_address=args.home_address,
                       enable_forwarding=args.enable_forwarding,
                       null_forwarder=args.null_forwarder, offload=args.offload,
                       queue_len=args.queue_len or QUEUE_LEN, realtime=args.realtime,
                       punt_rate=args.punt_rate)
        fwd = Forwarder(cfg, opts)
        # bound first: a port in use is an error before anything is set up
        listeners = Listeners(args.control_socket or DEFAULT_CONTROL_SOCKET, args.metrics)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{PROG} run: {e}", file=sys.stderr)
        return 2
    try:
        fwd.start()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{PROG} run: {e}", file=sys.stderr)
        listeners.close()
        try:
            fwd.stop()
        except Exception:               # nothing was started, or half of it
            pass
        return 2
    try:
        run_forever(fwd, listeners=listeners)
    finally:
        listeners.close()
        fwd.stop()
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    import json
    from fastpath.control import ctl_request
    path = args.socket or DEFAULT_CONTROL_SOCKET
    request = args.view
    if args.view == "move":
        if not args.coa:
            print(f"{PROG} ctl move: --coa ADDR is required", file=sys.stderr)
            return 2
        request = f"move {args.coa}"
    try:
        data = ctl_request(path, request)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"{PROG} ctl: {path}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(_ctl_text(args.view, data))
    return 0


def _show(v, empty: str = "-") -> str:
    """A value of a ctl view as text: dicts as k=v lists (nested ones in
    braces), lists comma-separated, None and empty ones as `empty`."""
    if v is None or v == {} or v == []:
        return empty
    if isinstance(v, dict):
        return ", ".join(f"{k}=" + (f"{{{_show(x)}}}" if isinstance(x, dict) else _show(x))
                         for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_show(x) for x in v)
    return str(v)


def _ctl_text(view: str, data) -> str:
    if view in ("status", "move"):
        return "\n".join(f"{k:14} {_show(v)}" for k, v in data.items())
    if view == "bindings":
        rows = data if isinstance(data, list) else []
        if not rows:
            return "no mobile nodes"
        keys = list(rows[0].keys())
        return "\n".join(["  ".join(f"{k:>16}" for k in keys)] +
                         ["  ".join(f"{_show(r.get(k)):>16}" for k in keys) for r in rows])
    if view == "sas":
        lines = [f"{'SPI':>10} {'dir':3} {'purpose':18} {'mode':9} {'home address':24} "
                 f"{'sequence':>12} {'packets':>10} {'bytes':>12}  drops"]
        for sa in data:
            d = sa["direction"]
            lines.append(f"{sa['spi']:#10x} {d:3} {sa['purpose']:18} {sa['mode']:9} "
                         f"{sa['home_address']:24} {sa['sequence']:>12} {sa['packets_' + d]:>10} "
                         f"{sa['bytes_' + d]:>12}  {_show(sa['drops'])}")
        return "\n".join(lines)
    tot = data["totals"]
    lines = ["packets by verdict: " + _show({k: v for k, v in tot["verdicts"].items() if v},
                                            "none"),
             "drops by reason:    " + _show({k: v for k, v in tot["drops"].items() if v}, "none")]
    for k, v in data.get("io", {}).items():
        lines.append(f"{k:19} {_show(v, '0')}")
    for k, v in data.get("control", {}).items():
        lines.append(f"control {k}: {_show(v, 'none')}")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from fastpath import demo
    return demo.main(seconds=args.seconds, rate=args.rate, size=args.size)


# --------------------------------------------------------------------------
# parser


def _positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return v


def _int_in(lo: int, hi: int, why: str):
    """An argparse type: an integer in [lo, hi]; `why` says where hi comes from."""
    def parse(text: str) -> int:
        v = _positive_int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range {lo}..{hi} ({why})")
        return v
    return parse


MAX_BATCH = 4096      # a batch is preallocated per worker: 4096 slots x 2 KiB = 8 MiB
MAX_WORKERS = 63      # the SA table has 64 engine slots (sad.pxd); one is the control thread's


def _ipv6_address(text: str) -> str:
    import ipaddress
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv6 address") from None


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return v


def _hostport(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9100 or [::1]:9100)")
    return text


def _add_common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="the home agent's TOML configuration file (SPEC §5)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="log verbosity on stderr (default: info for run, warning otherwise)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description=textwrap.dedent("""\
            fastpath: a userspace Mobile IPv6 home agent data plane.

            It tunnels traffic for registered home addresses to each mobile
            node's care-of address (ESP per RFC 3776 / RFC 4877, or plain
            IPv6-in-IPv6 per RFC 2473), decapsulates the reverse tunnel, and
            moves a binding when an ESP-protected Binding Update arrives.
            Keys are configured manually in a TOML file."""),
        epilog="Run 'fastpath COMMAND --help' for the flags of each command.")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help="log verbosity on stderr (default: info for run, which then says "
                        "what it set up, each binding change and why it stopped; warning "
                        "for the other commands)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # check
    sp = sub.add_parser(
        "check", formatter_class=_Formatter,
        help="validate a config file and print its SA table",
        description=textwrap.dedent("""\
            Validate a configuration file without touching the system and print
            the security association table: for each SA the mobile node's home
            address (HoA) and static care-of address (CoA), what the SA protects
            (binding = BU/BA, return-routability = HoTI/HoT, payload, prefix-
            discovery), its direction (in = MN to HA, out = HA to MN), SPI, mode
            (transport or tunnel, which follows the purpose, RFC 3776 §4),
            algorithm, whether extended sequence numbers are on, and the anti-
            replay window of inbound SAs. Keys are never printed.

            Exit status 0 when the file is valid, 2 with every problem listed
            (file:line: entry: field: reason) when it is not."""))
    _add_common(sp)
    sp.set_defaults(func=cmd_check)

    # keys
    sp = sub.add_parser(
        "keys", formatter_class=_Formatter,
        help="print Wireshark esp_sa lines to decrypt a capture",
        description=textwrap.dedent("""\
            Print one line per SA in the format of Wireshark's "esp_sa" file
            (Preferences > Protocols > ESP > ESP SAs), so Wireshark or tshark
            can decrypt and check the ESP traffic of a capture taken on the
            wire side:

              "IPv6","SRC","DST","0xSPI","ENCRYPTION","0xKEY","AUTHENTICATION","0xKEY"

            followed by "32-bit"/"64-bit","0" (sequence number length, ESN high
            bits) when --columns 10, or auto and some SA uses ESN.

            Binding SAs are transport mode and Wireshark matches them on the
            home address (it substitutes the Home Address option and the type 2
            routing header), so their lines name the HoA and the HA address.
            Tunnel-mode SAs match the outer header: the static CoA, or '*'
            (any) when the MN has none. AES-GCM keys include the 4-byte salt.

            The output contains secret keys."""))
    _add_common(sp)
    sp.add_argument("--wireshark", action="store_true",
                    help="Wireshark esp_sa format (the default and only format)")
    sp.add_argument("--any-coa", action="store_true",
                    help="match tunnel SAs from any care-of address ('*'): use it "
                         "for a capture in which the MN moves")
    sp.add_argument("--columns", choices=("auto", "8", "10"), default="auto",
                    help="fields per record: 8 (every Wireshark version), 10 (adds "
                         "the SN length and ESN high bits columns of newer versions, "
                         "needed to check ESN SAs), auto = 10 only when some SA "
                         "uses ESN (default: %(default)s)")
    sp.add_argument("--no-header", action="store_true",
                    help="print only the records, without the '#' comment lines")
    sp.set_defaults(func=cmd_keys)

    # replay
    sp = sub.add_parser(
        "replay", formatter_class=_Formatter,
        help="run the data plane over a pcap instead of TUN interfaces",
        description=textwrap.dedent("""\
            Feed a capture through the same engine the forwarder uses, in
            packet order: packets addressed to the HA address are wire-side
            input (ESP, IPv6-in-IPv6, Binding Updates), packets addressed to a
            home address are home-side input (to be tunnelled to the MN).
            Everything fastpath emits, on either side, is written to OUT in
            order; counters are printed at the end. Bindings start from the
            config's care_of_address; an authenticated Binding Update in the
            capture moves the binding for the packets after it, and its
            Binding Ack is written to OUT in its place (the capture's
            timestamps are the clock for lifetimes). Fragmented wire-side
            packets are reassembled first, as the forwarder does (RFC 8200,
            RFC 5722: overlaps discard the datagram; the report counts them).

            IN and OUT are classic pcap files of raw IPv6 packets
            (LINKTYPE_RAW), such as a capture on the fp-wire / fp-home TUNs.
            OUT appears only when the replay finished (it is written under a
            temporary name first) and may not be IN.

            Exit status: 0 done; 1 IN ends in a damaged record (the packets
            before it were processed and written; the report says where);
            2 nothing done (bad config, IN not a capture, OUT not writable)."""))
    _add_common(sp)
    sp.add_argument("--in", dest="input", required=True, metavar="IN",
                    help="capture to read (pcap, raw IPv6 packets)")
    sp.add_argument("--out", dest="output", required=True, metavar="OUT",
                    help="capture to write with every packet fastpath emits")
    sp.add_argument("--crypto", choices=("auto", "ipsecmb", "openssl"), default="auto",
                    help="crypto backend: intel-ipsec-mb, OpenSSL EVP, or auto = the "
                         "fastest available (default: %(default)s)")
    sp.add_argument("--batch", type=_int_in(1, MAX_BATCH, "preallocated per batch"),
                    default=argparse.SUPPRESS, metavar="N",
                    help=f"packets per engine batch, 1..{MAX_BATCH} (default: 64)")
    sp.set_defaults(func=cmd_replay)

    # run
    sp = sub.add_parser(
        "run", formatter_class=_Formatter,
        help="run the home agent data plane on the TUN interfaces",
        description=textwrap.dedent("""\
            Start the forwarder: open the home-side and wire-side TUNs, install
            the routes (and proxy NDP when [interfaces] home_link is set) for
            registered home addresses, and forward with N worker threads while
            a control thread handles Binding Updates, the control socket and
            metrics. Runs until SIGINT, SIGTERM or SIGHUP, then removes what it
            set up. One run per state_dir: a second one is refused, as is a
            --control-socket or --metrics port another run serves."""))
    _add_common(sp)
    sp.add_argument("--workers", type=_int_in(1, MAX_WORKERS, "engine slots of the SA table"),
                    default=1, metavar="N",
                    help=f"worker threads, one TUN queue each (multi-queue when N > 1; "
                         f"1..{MAX_WORKERS}; default: %(default)s)")
    sp.add_argument("--batch", type=_int_in(1, MAX_BATCH, "preallocated per worker"),
                    default=None, metavar="N",
                    help=f"packets read and processed per batch, 1..{MAX_BATCH} (default: 64); larger batches "
                         "fill intel-ipsec-mb's SIMD lanes better, smaller ones cut latency")
    sp.add_argument("--home-if", metavar="NAME", default=None,
                    help="home-side TUN name (overrides [interfaces] home)")
    sp.add_argument("--wire-if", metavar="NAME", default=None,
                    help="wire-side TUN name (overrides [interfaces] wire)")
    sp.add_argument("--cpu", metavar="LIST", default=None,
                    help="pin workers to these CPUs, e.g. 2-5 or 2,4,6")
    sp.add_argument("--control-socket", metavar="PATH", default=None,
                    help="unix socket for 'fastpath ctl' (read-only views, mode 0600; "
                         "default: /run/fastpath.sock)")
    sp.add_argument("--metrics", metavar="ADDR:PORT", type=_hostport, default=None,
                    help="serve counters in Prometheus text format on ADDR:PORT")
    sp.add_argument("--crypto", choices=("auto", "ipsecmb", "openssl"), default="auto",
                    help="crypto backend: intel-ipsec-mb, OpenSSL EVP, or auto = the "
                         "fastest available (default: %(default)s)")
    sp.add_argument("--role", choices=("home-agent", "mobile-node"), default="home-agent",
                    help="home-agent, or mobile-node: the mirror image for testing and the "
                         "demo, built from the same config file (SA directions swapped)")
    sp.add_argument("--home-address", metavar="HOA", type=_ipv6_address, default=None,
                    help="mobile-node role: which mobile node of the config this is "
                         "(default: the only one)")
    sp.add_argument("--enable-forwarding", action="store_true",
                    help="turn on net.ipv6.conf.all.forwarding if it is off (otherwise "
                         "fastpath refuses to start: decapsulated packets could not be routed)")
    sp.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                    help="home TUN with IFF_VNET_HDR: the kernel hands over TCP as 64 KiB "
                         "super-packets that the workers segment before encapsulation, and "
                         "decapsulated TCP segments of one flow are merged into one write "
                         "(GRO): far fewer syscalls per packet (default: on)")
    sp.add_argument("--queue-len", type=_positive_int, default=None, metavar="N",
                    help="packets the kernel queues at each TUN for the workers (txqueuelen; "
                         f"default: {QUEUE_LEN}). Bursts beyond it are dropped by the kernel "
                         "(tx_dropped of the link)")
    sp.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                    help="home agent: run the control thread at SCHED_FIFO 2 and the workers "
                         "at SCHED_FIFO 1, so a Binding Ack never waits for a CPU behind other "
                         "processes; a saturated worker then keeps its CPU (default: "
                         "[home_agent] realtime, true)")
    sp.add_argument("--punt-rate", type=_non_negative_float, default=PUNT_RATE, metavar="PPS",
                    help="control-plane policing: unauthenticated packets each worker hands "
                         "to the control thread per second (fragments to reassemble, ICMPv6 "
                         "and Mobility Headers in the clear); the rest are dropped and counted "
                         "(punt_policed). Authenticated Binding Updates are never policed. "
                         "0 = no limit (default: %(default)g)")
    sp.add_argument("--null-forwarder", action="store_true", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_run)

    # ctl
    sp = sub.add_parser(
        "ctl", formatter_class=_Formatter,
        help="read-only views of a running forwarder",
        description=textwrap.dedent("""\
            Ask a running forwarder over its control socket: 'status' (uptime,
            workers), 'bindings' (HoA -> CoA, lifetime left), 'sas' (SA table
            with sequence numbers) or 'counters' (packets, bytes and drops by
            reason, per SA and in total). Nothing of a home agent can be
            changed from here: its bindings move only on authenticated Binding
            Updates. 'move --coa ADDR' is for a forwarder in the mobile-node
            role (tests, the demo): it registers the new care-of address."""))
    _add_common(sp, config=False)
    sp.add_argument("--socket", metavar="PATH", default=None,
                    help="control socket of the forwarder (default: /run/fastpath.sock)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.add_argument("view", choices=("status", "bindings", "sas", "counters", "move"),
                    help="what to show; 'move' (mobile-node role only) tells a mobile node's "
                         "forwarder it now uses --coa")
    sp.add_argument("--coa", metavar="ADDR", default=None,
                    help="with 'move': the new care-of address")
    sp.set_defaults(func=cmd_ctl)

    # demo
    sp = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="CN-HA-MN demo in network namespaces",
        description=textwrap.dedent("""\
            Build a correspondent node, the home agent and a mobile node in
            network namespaces, run traffic through the HA, move the MN to a new
            care-of address mid-stream, print what happened and clean up.
            Needs root."""))
    _add_common(sp, config=False)
    sp.add_argument("--seconds", type=float, default=10.0, help="how long the CN streams (default: 10)")
    sp.add_argument("--rate", type=_positive_int, default=4000, help="datagrams per second (default: 4000)")
    sp.add_argument("--size", type=_positive_int, default=1000, help="datagram payload bytes (default: 1000)")
    sp.set_defaults(func=cmd_demo)
    return p


# --------------------------------------------------------------------------
# entry point


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_fastpath_cli", False):
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h._fastpath_cli = True  # type: ignore[attr-defined]
    h.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    root.addHandler(h)
    root.setLevel(getattr(logging, level.upper()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:           # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.log_level is None:
        args.log_level = "info" if args.command == "run" else "warning"
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as e:
        for p in e.problems:
            print(f"{PROG}: {p}", file=sys.stderr)
        if len(e.problems) > 1:
            print(f"{PROG}: {len(e.problems)} problems; nothing was started",
                  file=sys.stderr)
        return 2
    except PcapError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:           # e.g. 'fastpath keys ... | head -1'
        # Python flushes stdout at exit; point it at /dev/null so that
        # flush cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":           # pragma: no cover
    sys.exit(main())
