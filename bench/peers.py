"""--peers of `python -m bench forward`: other userspace tunnels in the same
topology, measured the same way as fastpath (issue 3 item 7).

    CN ── HA (peer daemon) ── router ── MN (peer daemon)
    fwd_gen / iperf3 -c                  fwd_sink / iperf3 -s bound to the HoA

wireguard-go  one wireguard-go (a TUN, ChaCha20-Poly1305 over UDP) in the HA
              namespace and one in the MN namespace, set up with `wg`; the HA
              routes the HoA into its TUN, the MN the CN's prefix.
c-null        the reference, not a peer: bench/fwd_null.c (poll, read, write;
              no transform) at both ends on fastpath's TUN names, carried by
              the null run's policy routes; fixed rate only. fastpath (its
              own null forwarder too) is compared with it without a target.
strongswan    charon with the kernel-libipsec plugin (strongSwan's userspace
              ESP: a TUN named ipsec0, ESP in its own process) at both ends,
              IKEv2 with a pre-shared key between the HA address and the CoA
              through the router, one CHILD_SA aes128gcm16 in tunnel mode,
              CN prefix <=> HoA/128. kernel-libipsec always encapsulates ESP
              in UDP (port 4500): it has no raw ESP socket.

Each daemon runs where fastpath does (the HA's on the HA's CPU, the MN's with
the rest). Underlay: the HA address on the HA's lo, the CoA on the MN's mn0,
the HoA on the MN's lo (all removed afterwards). Per peer, after a probe:

  fixed  the generator at --rate for each --size: CPU time of the HA daemon
         and of the MN daemon (all threads, schedstat) per packet the sink
         received in the window; the HA daemon's read+write syscalls per
         packet;
  tcp    one iperf3 stream CN -> HoA: Gbit/s, and per packet through the HA's
         TUN (both directions), CPU and syscalls.

The daemons are not installed by the bench: a missing one is skipped with
the Debian packages to install. Their configuration files, keys and logs live
in the bench's temporary directory; charon runs in a private mount namespace
with a tmpfs on /run (two charons in one file system would fight over
/run/charon.pid), its vici socket in the temporary directory.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

from bench import common
from bench import forward as F
from fastpath.netlink import QUEUE_LEN

PEERS = ("c-null", "wireguard-go", "strongswan")
REFERENCE = "c-null"                   # measured like a peer, compared without a target
WG_PORT_HA, WG_PORT_MN = 51820, 51821
WG_RUN = Path("/var/run/wireguard")
CHARON_PATHS = ("/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon",
                "/usr/lib/strongswan/charon", "/usr/libexec/strongswan/charon")
PLUGIN_DIRS = ("/usr/lib/ipsec/plugins", "/usr/lib/x86_64-linux-gnu/ipsec/plugins",
               "/usr/libexec/ipsec/plugins")
# charon's plugins: crypto (openssl first: AES-GCM with AES-NI), IKE, the
# userspace ESP (kernel-libipsec) and routes/addresses (kernel-netlink)
CHARON_PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 pubkey x509 "
                  "kernel-libipsec kernel-netlink socket-default vici")
SWANCTL_PLUGINS = "pem pkcs1 x509 pubkey openssl random"
PEER_TARGET = 0.2                      # fastpath CPU/pkt <= 1/5 of a peer's (both ends)
PEER_TCP_FACTOR = 10.0                 # issue 3: >= 3 Gbit/s, "10 x the userspace peers"


class PeerFailed(RuntimeError):
    pass


def cleanup_sockets(pid: int) -> None:
    """wireguard-go's UAPI sockets of bench `pid` (killed before it removed them)."""
    for sock in WG_RUN.glob(f"wg[hm]{pid}.sock"):
        with contextlib.suppress(OSError):
            sock.unlink()


def _plugin(name: str) -> str | None:
    for d in PLUGIN_DIRS:
        p = Path(d) / f"libstrongswan-{name}.so"
        if p.exists():
            return str(p)
    return None


def missing(peer: str) -> str | None:
    """Why `peer` cannot run here (None: it can)."""
    if peer == REFERENCE:
        return None if (shutil.which("gcc") or shutil.which("cc")) else "no C compiler"
    if peer == "wireguard-go":
        lack = [b for b in ("wireguard-go", "wg") if not shutil.which(b)]
        if lack:
            return (f"{' and '.join(lack)} not installed (Debian: wireguard-go "
                    f"wireguard-tools)")
        return None
    lack = []
    if not any(os.access(p, os.X_OK) for p in CHARON_PATHS):
        lack.append("charon")
    if not shutil.which("swanctl"):
        lack.append("swanctl")
    if not _plugin("kernel-libipsec"):
        lack.append("the kernel-libipsec plugin")
    if not (_plugin("openssl") or _plugin("gcm")):
        lack.append("an AES-GCM plugin (openssl or gcm)")
    if not shutil.which("unshare"):
        lack.append("unshare")
    if lack:
        return (f"{', '.join(lack)} not installed (Debian: strongswan-charon "
                f"strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins)")
    return None


def _run(argv: list[str], what: str, timeout: float = 30, env: dict | None = None) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env=None if env is None else dict(os.environ, **env))
    except subprocess.TimeoutExpired:
        raise PeerFailed(f"{what}: no answer in {timeout:.0f} s") from None
    if r.returncode:
        raise PeerFailed(f"{what} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


class Peer:
    """One tunnel implementation at both ends; start() -> (ha, mn) as
    forward.Forwarder objects (sock None, home_dev = the HA's TUN)."""
    name = ""
    modes = ("fixed", "tcp")

    def __init__(self, ctx: F.Ctx):
        self.ctx, self.lab = ctx, ctx.lab
        self.dir = ctx.tmp / self.name
        self.dir.mkdir(exist_ok=True)
        self.ha: F.Forwarder | None = None
        self.mn: F.Forwarder | None = None
        self.addrs: list[tuple[str, str, str]] = []

    def underlay(self) -> None:
        for short, addr, dev in (("ha", f"{F.HA_ADDRESS}/128", "lo"),
                                 ("mn", f"{F.COA}/64", "mn0"),
                                 ("mn", f"{F.HOA}/128", "lo")):
            self.lab.nip(short, "-6", "addr", "add", addr, "dev", dev, "nodad")
            self.addrs.append((short, addr, dev))

    def daemon(self, short: str, name: str, argv: list[str], cpus, home_dev: str) -> F.Forwarder:
        log = self.dir / f"{name}.log"
        with open(log, "w") as f:
            p = self.lab.popen(short, argv, cpus, stdout=f, stderr=subprocess.STDOUT)
        return F.Forwarder(name, p, None, log, home_dev)

    def wait_for(self, path: Path, fw: F.Forwarder, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while not path.exists():
            if not fw.alive():
                raise PeerFailed(f"{fw.name} exited with {fw.proc.returncode}:\n{fw.log_tail()}")
            if time.monotonic() > end:
                raise PeerFailed(f"{fw.name}: no {path} after {timeout:.0f} s:\n{fw.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> list[str]:
        notes = []
        for fw in (self.mn, self.ha):
            if fw is not None:
                rc = fw.stop()
                if rc not in (0, None, -15):
                    notes.append(f"{fw.name} exited with {rc}")
        self.ha = self.mn = None
        for short, addr, dev in reversed(self.addrs):
            self.lab.nip(short, "-6", "addr", "del", addr, "dev", dev, check=False)
        self.addrs.clear()
        return notes


class WireGuard(Peer):
    name = "wireguard-go"

    def start(self) -> tuple[F.Forwarder, F.Forwarder]:
        pid = os.getpid()
        ha_if, mn_if = f"wgh{pid}"[:15], f"wgm{pid}"[:15]
        self.underlay()
        keys = {}
        for side in ("ha", "mn"):
            priv = _run(["wg", "genkey"], "wg genkey").strip()
            pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                                 check=True).stdout.strip()
            path = self.dir / f"{side}.key"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(priv + "\n")
            keys[side] = (path, pub)
        ctx = self.ctx
        for short, ifname, cpus in (("ha", ha_if, ctx.ha_cpus), ("mn", mn_if, ctx.other_cpus)):
            fw = self.daemon(short, f"{short}-wireguard-go", ["env", "WG_PROCESS_FOREGROUND=1",
                                                              shutil.which("wireguard-go"),
                                                              ifname], cpus, ha_if)
            setattr(self, short, fw)
            self.wait_for(WG_RUN / f"{ifname}.sock", fw)
        for short, ifname, port, other, peer_port, allowed in (
                ("ha", ha_if, WG_PORT_HA, F.COA, WG_PORT_MN, f"{F.HOA}/128"),
                ("mn", mn_if, WG_PORT_MN, F.HA_ADDRESS, WG_PORT_HA, F.CN_PREFIX)):
            other_side = "mn" if short == "ha" else "ha"
            _run(["ip", "netns", "exec", self.lab.ns(short), "wg", "set", ifname,
                  "private-key", str(keys[short][0]), "listen-port", str(port),
                  "peer", keys[other_side][1], "endpoint", f"[{other}]:{peer_port}",
                  "allowed-ips", allowed], f"wg set {ifname}")
            self.lab.nip(short, "link", "set", ifname, "up")
        self.lab.nip("ha", "-6", "route", "add", f"{F.HOA}/128", "dev", ha_if)
        self.lab.nip("mn", "-6", "route", "add", F.CN_PREFIX, "dev", mn_if, "src", F.HOA)
        return self.ha, self.mn

    def describe(self) -> dict:
        r = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True)
        return {"version": (r.stdout or r.stderr).strip(), "cipher": "ChaCha20-Poly1305 (UDP)",
                "mtu": 1420}


class CNull(Peer):
    """The reference, not a peer: bench/fwd_null.c at both ends, a C null
    TUN-to-TUN forwarder (poll, read until EAGAIN, write; no transform) on
    fastpath's device names, so the null run's policy routes carry its
    packets: CN -> HA fp-home -> fwd_null -> fp-wire -> router -> MN fp-wire
    -> fwd_null -> fp-home -> the HoA. Fixed rate only: what the TUN round
    trip costs this host in C, next to fastpath's own null forwarder."""
    name = "c-null"
    modes = ("fixed",)

    def start(self) -> tuple[F.Forwarder, F.Forwarder]:
        cc = shutil.which("gcc") or shutil.which("cc")
        binary = self.dir / "fwd_null"
        _run([cc, "-O2", "-Wall", "-o", str(binary), str(F.HERE / "fwd_null.c")], "cc fwd_null.c")
        self.underlay()
        ctx = self.ctx
        for short, cpus in (("ha", ctx.ha_cpus), ("mn", ctx.other_cpus)):
            fw = self.daemon(short, f"{short}-fwd_null", [str(binary), "fp-home", "fp-wire"],
                             cpus, "fp-home")
            setattr(self, short, fw)
            self.wait_for_line(fw, "ready")
            for dev in ("fp-home", "fp-wire"):     # fastpath's queue length, for the same drops
                self.lab.nip(short, "link", "set", dev, "up", "txqueuelen", str(QUEUE_LEN))
        subprocess.run(["ip", "netns", "exec", self.lab.ns("mn"), "sysctl", "-qw",
                        "net.ipv6.conf.all.forwarding=1"], check=True, capture_output=True)
        self.lab.nip("ha", "-6", "route", "add", f"{F.HOA}/128", "dev", "fp-home")
        self.lab.policy_route_tuns()
        return self.ha, self.mn

    def wait_for_line(self, fw: F.Forwarder, line: str, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while line not in fw.log.read_text().split():
            if not fw.alive():
                raise PeerFailed(f"{fw.name} exited with {fw.proc.returncode}:\n{fw.log_tail()}")
            if time.monotonic() > end:
                raise PeerFailed(f"{fw.name}: not ready after {timeout:.0f} s:\n{fw.log_tail()}")
            time.sleep(0.05)

    def describe(self) -> dict:
        return {"version": "bench/fwd_null.c", "cipher": "none (reference)"}


class StrongSwan(Peer):
    name = "strongswan"
    psk = None

    def conf(self, side: str) -> Path:
        d = self.dir / side
        d.mkdir(exist_ok=True)
        vici = d / "vici"
        (d / "strongswan.conf").write_text(textwrap.dedent(f"""\
            # bench forward --peers: charon with strongSwan's userspace ESP
            charon {{
              load_modular = no
              load = {CHARON_PLUGINS}
              install_virtual_ip = no
              retransmit_tries = 3
              filelog {{
                stderr {{
                  default = 1
                }}
              }}
              plugins {{
                vici {{
                  socket = unix://{vici}
                }}
              }}
            }}
            swanctl {{
              load = {SWANCTL_PLUGINS}
              socket = unix://{vici}
            }}
            """))
        me, peer = ("ha", "mn") if side == "ha" else ("mn", "ha")
        local, remote = (F.HA_ADDRESS, F.COA) if side == "ha" else (F.COA, F.HA_ADDRESS)
        lts, rts = (F.CN_PREFIX, f"{F.HOA}/128") if side == "ha" else (f"{F.HOA}/128", F.CN_PREFIX)
        (d / "swanctl.conf").write_text(textwrap.dedent(f"""\
            connections {{
              bench {{
                version = 2
                local_addrs = {local}
                remote_addrs = {remote}
                proposals = aes128gcm16-prfsha256-x25519
                local {{
                  auth = psk
                  id = {me}
                }}
                remote {{
                  auth = psk
                  id = {peer}
                }}
                children {{
                  net {{
                    local_ts = {lts}
                    remote_ts = {rts}
                    esp_proposals = aes128gcm16
                    mode = tunnel
                  }}
                }}
              }}
            }}
            secrets {{
              ike-bench {{
                id-1 = ha
                id-2 = mn
                secret = 0x{self.psk}
              }}
            }}
            """))
        os.chmod(d / "swanctl.conf", 0o600)
        return d

    def start(self) -> tuple[F.Forwarder, F.Forwarder]:
        self.psk = os.urandom(32).hex()
        charon = next(p for p in CHARON_PATHS if os.access(p, os.X_OK))
        self.underlay()
        ctx = self.ctx
        dirs = {}
        for short, cpus in (("ha", ctx.ha_cpus), ("mn", ctx.other_cpus)):
            d = dirs[short] = self.conf(short)
            # its own /run: a second charon would see the first one's pid file
            fw = self.daemon(short, f"{short}-charon",
                             ["env", f"STRONGSWAN_CONF={d / 'strongswan.conf'}", "unshare", "-m",
                              "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {charon}"],
                             cpus, "ipsec0")
            setattr(self, short, fw)
            self.wait_for(d / "vici", fw)
        for short in ("ha", "mn"):
            d = dirs[short]
            _run(["swanctl", "--load-all", "--file", str(d / "swanctl.conf")],
                 f"swanctl --load-all ({short})", env={"STRONGSWAN_CONF": str(d / "strongswan.conf")})
        try:
            _run(["swanctl", "--initiate", "--child", "net", "--timeout", "20"],
                 "swanctl --initiate (MN -> HA)", timeout=30,
                 env={"STRONGSWAN_CONF": str(dirs["mn"] / "strongswan.conf")})
        except PeerFailed as e:
            raise PeerFailed(f"{e}\n{self.ha.log_tail(15)}\n{self.mn.log_tail(15)}") from None
        out = _run(["swanctl", "--list-sas"], "swanctl --list-sas",
                   env={"STRONGSWAN_CONF": str(dirs["mn"] / "strongswan.conf")})
        self.sas = out
        if "INSTALLED" not in out:
            raise PeerFailed(f"no CHILD_SA installed:\n{out}")
        return self.ha, self.mn

    def describe(self) -> dict:
        charon = next((p for p in CHARON_PATHS if os.access(p, os.X_OK)), None)
        r = subprocess.run([charon, "--version"], capture_output=True, text=True) if charon else None
        mode = next((line.strip() for line in getattr(self, "sas", "").splitlines()
                     if "TUNNEL" in line), None)
        return {"version": (r.stdout or r.stderr).strip() if r else None,
                "cipher": "ESP aes128gcm16 (kernel-libipsec)", "child_sa": mode}


def run_peers(ctx: F.Ctx, say) -> dict:
    """Both peers (those installed): probe, then per round every --size at
    the fixed rate and tcp. Returns {"skipped", "failed", "cells", "rows",
    "about"}."""
    args = ctx.args
    out: dict = {"skipped": {}, "failed": {}, "cells": [], "rows": [], "about": {}}
    modes = [m for m in args.mode if m in ("fixed", "tcp")]
    if not modes:
        say("--peers: only fixed and tcp are measured for the peers, and neither is in --mode: "
            "skipped")
        out["skipped"] = {p: "no fixed or tcp mode" for p in PEERS}
        return out
    for cls in (CNull, WireGuard, StrongSwan):
        why = missing(cls.name)
        if why:
            say(f"--peers: {cls.name}: {why}: skipped (the bench does not install packages)")
            out["skipped"][cls.name] = why
            continue
        peer = cls(ctx)
        mine = [m for m in modes if m in cls.modes]
        if not mine:
            continue
        say(f"--peers: {cls.name}")
        try:
            ha, mn = peer.start()
            out["about"][cls.name] = peer.describe()
            F.probe(ctx, ha, mn, cls.name)
            for rnd in range(args.rounds):
                label = f"r{rnd} {cls.name:12s}"
                if "fixed" in mine:
                    for size in args.size:
                        f = F.measure(ctx, lambda: F.figures(
                            F.run_traffic(ctx, ha, mn, size, args.rate, args.warmup,
                                          args.seconds), size), say)
                        _alive(ha, mn)
                        out["cells"].append({"peer": cls.name, "size": size, "mode": "fixed",
                                             "round": rnd, "rate": args.rate, **f})
                        F.say_udp(say, label, size, "fixed", f)
                if "tcp" in mine and ctx.iperf3:
                    f = F.measure(ctx, lambda: F.tcp_figures(
                        F.run_tcp(ctx, ha, mn, args.tcp_warmup, args.tcp_seconds)), say)
                    _alive(ha, mn)
                    out["cells"].append({"peer": cls.name, "size": None, "mode": "tcp",
                                         "round": rnd, "rate": None, **f})
                    F.say_tcp(say, label, f)
        except (PeerFailed, F.BenchFailed) as e:
            say(f"--peers: {cls.name} failed: {e}")
            out["failed"][cls.name] = str(e)
        finally:
            ctx.notes.extend(peer.stop())
    out["rows"] = aggregate(out["cells"])
    return out


def _alive(ha: F.Forwarder, mn: F.Forwarder) -> None:
    for fw in (ha, mn):
        if not fw.alive():
            raise PeerFailed(f"{fw.name} died (exit {fw.proc.returncode}):\n{fw.log_tail()}")


def aggregate(cells: list) -> list:
    rows = []
    for key in dict.fromkeys((c["peer"], c["size"], c["mode"]) for c in cells):
        mine = [c for c in cells if (c["peer"], c["size"], c["mode"]) == key]
        r = {"peer": key[0], "size": key[1], "mode": key[2], "rounds": len(mine)}
        for k in F.MEDIAN_KEYS:
            r[k] = F._median([c.get(k) for c in mine])
        r["ha_cpu_pct"] = None if r["ha_cpu_share"] is None else 100 * r["ha_cpu_share"]
        r["mn_cpu_pct"] = None if r["mn_cpu_share"] is None else 100 * r["mn_cpu_share"]
        rows.append(r)
    return rows


def compare(rows: list, peer_rows: list) -> list:
    """fastpath (each algorithm and offload setting) against each peer: CPU
    per packet of both ends at the fixed rate (target <= 1/5), and tcp
    Gbit/s (issue 3: >= 3 Gbit/s through aes128gcm16, '10 x the peers').
    Against the C null forwarder (the reference) every fastpath row, its
    own null forwarder included, without a target."""
    out = []
    for p in peer_rows:
        ref = p["peer"] == REFERENCE
        for r in rows:
            if r["alg"] == F.NULL and not ref:     # fastpath's null: against the C null only
                continue
            if r["mode"] != p["mode"] or r["size"] != p["size"]:
                continue
            c = {"alg": r["alg"], "offload": r["offload"], "size": r["size"], "mode": r["mode"],
                 "peer": p["peer"], "official": r["official"]}
            if p["mode"] == "fixed":
                fp, pv = r.get("both_cpu_us_per_pkt"), p.get("both_cpu_us_per_pkt")
                c.update(fastpath=fp, peer_value=pv, unit="us/pkt both ends",
                         ratio=fp / pv if fp and pv else None,
                         target_text="(reference)" if ref else f"<= {PEER_TARGET:g}")
                ok = None if c["ratio"] is None or ref else c["ratio"] <= PEER_TARGET
            else:
                fp, pv = r.get("gbps"), p.get("gbps")
                c.update(fastpath=fp, peer_value=pv, unit="Gbit/s",
                         ratio=fp / pv if fp and pv else None,
                         target_text=f">= {PEER_TCP_FACTOR:g}")
                ok = None if c["ratio"] is None else c["ratio"] >= PEER_TCP_FACTOR
            c["target"] = "-" if ref else (common.verdict(ok) + (
                "*" if r["official"] and p["mode"] == "fixed" else ""))
            out.append(c)
    return out


PEER_COLUMNS = [
    common.Column("peer", "peer", align="<"),
    common.Column("size", "size"),
    common.Column("mode", "mode", align="<"),
    common.Column("offered_pps", "offered pps", "{:.0f}"),
    common.Column("sink_pps", "sink pps", "{:.0f}"),
    common.Column("loss_pct", "loss %", "{:.1f}"),
    common.Column("gbps", "Gbit/s", "{:.2f}"),
    common.Column("cpu_us_per_pkt", "HA us/pkt", "{:.2f}"),
    common.Column("mn_cpu_us_per_pkt", "MN us/pkt", "{:.2f}"),
    common.Column("both_cpu_us_per_pkt", "both us/pkt", "{:.2f}"),
    common.Column("syscalls_per_pkt", "HA syscalls/pkt", "{:.2f}"),
    common.Column("ha_cpu_pct", "HA CPU %", "{:.0f}"),
    common.Column("mn_cpu_pct", "MN CPU %", "{:.0f}"),
    common.Column("other_load_cpus", "other load", "{:.2f}"),
]

COMPARE_COLUMNS = [
    common.Column("alg", "fastpath", align="<"),
    common.Column("offload", "offload", align="<"),
    common.Column("size", "size"),
    common.Column("mode", "mode", align="<"),
    common.Column("peer", "vs", align="<"),
    common.Column("unit", "figure", align="<"),
    common.Column("fastpath", "fastpath", "{:.2f}"),
    common.Column("peer_value", "peer", "{:.2f}"),
    common.Column("ratio", "ratio", "{:.3f}"),
    common.Column("target_text", "target", align="<"),
    common.Column("target", "PASS/FAIL", align="<"),
]


def print_tables(doc: dict, say) -> None:
    if doc.get("rows"):
        say("\nPeers (same topology, same generator/sink/iperf3; CPU of the HA's and the MN's "
            "daemon per packet the sink received; tcp per packet through the HA's TUN):")
        say(common.render_table(PEER_COLUMNS, doc["rows"]))
    if doc.get("compare"):
        say("\nfastpath vs peers: fixed = CPU per packet of both ends (HA + MN) at the fixed "
            "rate, fastpath / peer, target <= 1/5 (* = issue 3's rows); tcp = Gbit/s, "
            "fastpath / peer (issue 3's ~10x):")
        say(common.render_table(COMPARE_COLUMNS, doc["compare"]))
    for name, why in doc.get("skipped", {}).items():
        say(f"note: --peers: {name} skipped: {why}")
    for name, why in doc.get("failed", {}).items():
        say(f"note: --peers: {name} failed: {why.splitlines()[0] if why else ''}")
