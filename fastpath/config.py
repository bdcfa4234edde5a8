"""The configuration file (SPEC §5): TOML in, frozen dataclasses out.

``load(path)`` reads and validates a file and returns a :class:`Config`; any
problem raises :class:`ConfigError`.  Nothing is started from a file that does
not validate.

Error reporting
---------------
All problems found in one pass are reported together, one per line, each in the
form::

    FILE:LINE: ENTRY: FIELD: REASON

where ENTRY names the table, e.g. ``mobile_node[1].sa[0] (HoA 2001:db8:1::20,
SPI 0x00002001)`` (indexes count from 0, in file order), FIELD is the key at
fault and LINE is the line of that key (or of the table header when the key is
missing).  ``tomllib`` reports no positions, so lines are found by scanning the
text for table headers and ``key =`` lines: best effort, omitted when not found.
Checks that depend on a field (duplicates, pairs) run only once that field is
valid, so a second run after fixing the reported problems may find more.

Choices made here (documented for operators)
--------------------------------------------
* ``replay_window`` (in SAs only): 0 turns anti-replay off; otherwise a
  multiple of 32 from 32 to 65536 packets (whole 32-bit bitmap words).
  Default 1024 (SPEC §4).  Giving it on an ``out`` SA is an error: only the
  receiver keeps a window (RFC 4303 §3.4.3).
* ``binding_lifetime_max``: seconds, 4..262140 and a multiple of 4, since
  Binding Update/Ack lifetimes travel in 4-second units (RFC 6275 §6.1.7,
  §6.1.8).  Default 3600.
* ``[home_agent] mtu`` defaults to 1500, ``state_dir`` to /var/lib/fastpath; a
  relative ``state_dir`` is taken relative to the config file's directory.
* ``[home_agent] realtime`` (default true): a home agent runs its control
  thread and workers at low SCHED_FIFO priorities (fastpath.sched); false
  keeps ordinary scheduling.  The mobile-node role ignores it.
* SPIs are unique across every SA of every mobile node, in and out, and are
  at least 256 (0 is reserved for local use and 1..255 by IANA, RFC 4303 §2.1).
* Key material is hex: an optional ``0x`` prefix and ``:`` separators are
  allowed.  AES-GCM takes ``key`` = AES key ‖ 4-byte salt (RFC 4106 §8.1),
  AES-CBC + HMAC takes ``enc_key`` and ``auth_key``, null-sha256 only
  ``auth_key``.
* SAs come in pairs: a purpose configured for one direction must be
  configured for the other, and at most one SA per (purpose, direction).
* A mobile node with neither binding SAs nor a static ``care_of_address``
  could never be reached (its Binding Updates must be ESP-protected,
  RFC 3776 §4) and is refused.
"""
from __future__ import annotations

import difflib
import ipaddress
import logging
import re
import tomllib
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, Iterator

from fastpath.algorithms import (
    ALGORITHMS,
    HASH_SHA1,
    HASH_SHA256,
    KIND_CBC_HMAC,
    KIND_GCM,
    KIND_NULL_HMAC,
    REFUSED,
    Algorithm,
)

__all__ = [
    "ConfigError",
    "Problem",
    "HomeAgentConfig",
    "InterfacesConfig",
    "SAConfig",
    "MobileNodeConfig",
    "Config",
    "load",
    "parse",
    "parse_hex",
    "PURPOSES",
    "DIRECTIONS",
    "SUMMARY_HEADER",
]

log = logging.getLogger("fastpath.config")

PURPOSES = ("binding", "return-routability", "payload", "prefix-discovery")
TRANSPORT_PURPOSES = frozenset({"binding", "prefix-discovery"})
DIRECTIONS = ("in", "out")

SPI_MIN = 256
SPI_MAX = 0xFFFFFFFF
MTU_MIN, MTU_MAX = 1280, 65535
DEFAULT_MTU = 1500
DEFAULT_STATE_DIR = "/var/lib/fastpath"
LIFETIME_MIN, LIFETIME_MAX = 4, 262140          # 4 s .. 65535 * 4 s (RFC 6275)
DEFAULT_BINDING_LIFETIME_MAX = 3600
DEFAULT_REPLAY_WINDOW = 1024                    # SPEC §4
REPLAY_WINDOW_MAX = 65536
REPLAY_WINDOW_STEP = 32
IFNAMSIZ = 16                                   # Linux: names up to 15 bytes

_HA_KEYS = ("address", "home_prefix", "mtu", "state_dir", "allow_manual_aead", "realtime")
_IF_KEYS = ("home", "wire", "home_link")
_MN_KEYS = ("home_address", "care_of_address", "binding_lifetime_max", "sa")
_SA_KEYS = ("purpose", "direction", "spi", "algorithm", "key", "enc_key",
            "auth_key", "replay_window", "esn")
_TOP_KEYS = ("home_agent", "interfaces", "mobile_node")


# --------------------------------------------------------------------------
# errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file."""

    path: str
    line: int | None
    entry: str
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        parts = [where]
        if self.entry:
            parts.append(self.entry)
        if self.field:
            parts.append(self.field)
        parts.append(self.reason)
        return ": ".join(parts)


class ConfigError(Exception):
    """The configuration file cannot be used.

    ``problems`` lists every problem found; ``str(err)`` has one per line.
    """

    def __init__(self, problems: list[Problem] | str, path: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(path or "<config>", None, "", None, problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class HomeAgentConfig:
    address: IPv6Address
    home_prefix: IPv6Network
    mtu: int
    state_dir: Path
    allow_manual_aead: bool
    realtime: bool = True


@dataclass(frozen=True)
class InterfacesConfig:
    home: str = "fp-home"
    wire: str = "fp-wire"
    home_link: str = ""


@dataclass(frozen=True)
class SAConfig:
    purpose: str            # one of PURPOSES
    direction: str          # "in" (MN->HA) or "out" (HA->MN)
    spi: int
    algorithm: Algorithm
    enc_key: bytes = field(repr=False)   # AES key (GCM: without salt); b"" for null
    auth_key: bytes = field(repr=False)  # HMAC key; b"" for GCM
    salt: bytes = field(repr=False)      # 4-byte GCM salt; b"" otherwise
    replay_window: int      # packets; 0 = off (always 0 for out SAs)
    esn: bool
    entry: str              # e.g. "mobile_node[0].sa[2]"

    @property
    def mode(self) -> str:
        """'transport' for binding/prefix-discovery, 'tunnel' otherwise (RFC 3776 §4)."""
        return "transport" if self.purpose in TRANSPORT_PURPOSES else "tunnel"

    @property
    def is_inbound(self) -> bool:
        return self.direction == "in"

    @property
    def key_material(self) -> bytes:
        """Encryption key as configured: for GCM the AES key followed by the salt."""
        return self.enc_key + self.salt


@dataclass(frozen=True)
class MobileNodeConfig:
    home_address: IPv6Address
    care_of_address: IPv6Address | None
    binding_lifetime_max: int
    sas: tuple[SAConfig, ...]
    entry: str              # e.g. "mobile_node[1]"

    def sa(self, purpose: str, direction: str) -> SAConfig | None:
        """This MN's SA for (purpose, direction), or None."""
        for s in self.sas:
            if s.purpose == purpose and s.direction == direction:
                return s
        return None

    def sa_pair(self, purpose: str) -> tuple[SAConfig, SAConfig] | None:
        """(in SA, out SA) for purpose, or None when the MN has none."""
        sin, sout = self.sa(purpose, "in"), self.sa(purpose, "out")
        if sin is None or sout is None:
            return None
        return sin, sout

    def has(self, purpose: str) -> bool:
        return any(s.purpose == purpose for s in self.sas)

    @property
    def purposes(self) -> tuple[str, ...]:
        return tuple(p for p in PURPOSES if self.has(p))


SUMMARY_HEADER = ("HoA", "CoA", "purpose", "dir", "SPI", "mode", "algorithm",
                  "ESN", "replay")


@dataclass(frozen=True)
class Config:
    path: Path
    home_agent: HomeAgentConfig
    interfaces: InterfacesConfig
    mobile_nodes: tuple[MobileNodeConfig, ...]

    def sas(self) -> Iterator[tuple[MobileNodeConfig, SAConfig]]:
        """Every (mobile node, SA), in file order."""
        for mn in self.mobile_nodes:
            for s in mn.sas:
                yield mn, s

    def mobile_node(self, home_address: IPv6Address | str) -> MobileNodeConfig | None:
        hoa = IPv6Address(home_address) if isinstance(home_address, str) else home_address
        for mn in self.mobile_nodes:
            if mn.home_address == hoa:
                return mn
        return None

    def sa_by_spi(self, spi: int) -> tuple[MobileNodeConfig, SAConfig] | None:
        for mn, s in self.sas():
            if s.spi == spi:
                return mn, s
        return None

    def summary_rows(self) -> list[tuple[str, ...]]:
        """One row of strings per SA (columns: SUMMARY_HEADER). No key material.

        A mobile node without SAs gets one row with '-' in the SA columns.
        """
        rows: list[tuple[str, ...]] = []
        for mn in self.mobile_nodes:
            hoa = str(mn.home_address)
            coa = str(mn.care_of_address) if mn.care_of_address else "-"
            if not mn.sas:
                rows.append((hoa, coa, "(plain IPv6-in-IPv6 only)", "-", "-",
                             "-", "-", "-", "-"))
            for s in mn.sas:
                if s.direction == "out":
                    replay = "-"
                elif s.replay_window == 0:
                    replay = "off"
                else:
                    replay = str(s.replay_window)
                rows.append((hoa, coa, s.purpose, s.direction, f"0x{s.spi:08x}",
                             s.mode, s.algorithm.name, "yes" if s.esn else "no",
                             replay))
        return rows


# --------------------------------------------------------------------------
# helpers


def parse_hex(text: str) -> bytes:
    """Hex string to bytes; allows a '0x' prefix and ':' separators.

    Raises ValueError with a reason phrased for an operator.
    """
    t = text.strip()
    if t[:2] in ("0x", "0X"):
        t = t[2:]
    t = t.replace(":", "")
    if not t:
        raise ValueError("is empty")
    for k, c in enumerate(t):
        if c not in "0123456789abcdefABCDEF":
            raise ValueError(f"is not hexadecimal: unexpected {c!r} "
                             f"(hex digit {k + 1})")
    if len(t) % 2:
        raise ValueError(f"has an odd number of hex digits ({len(t)}); "
                         f"each byte takes two")
    return bytes.fromhex(t)


def _toml_type(v: Any) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"integer {v}"
    if isinstance(v, float):
        return f"float {v}"
    if isinstance(v, str):
        return f"string {v!r}" if len(v) <= 60 else "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a date/time ({v})"


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    m = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _addr_problem(addr: IPv6Address) -> str | None:
    """Why addr cannot be a unicast endpoint, or None."""
    if addr.scope_id:
        return f"{addr} carries a zone index (%{addr.scope_id}); give a global address"
    if addr.is_unspecified:
        return "is the unspecified address ::, not a unicast address"
    if addr.is_loopback:
        return "is the loopback address ::1, not a routable unicast address"
    if addr.is_multicast:
        return f"{addr} is a multicast address (ff00::/8); a unicast address is required"
    if addr.ipv4_mapped is not None:
        return f"{addr} is an IPv4-mapped address (::ffff:0:0/96); fastpath is IPv6-only"
    if addr.is_link_local:
        return (f"{addr} is link-local (fe80::/10) and cannot be routed through "
                f"the tunnel; a global unicast address is required")
    return None


_IFNAME_BAD = re.compile(r"[/:\s]")


def _ifname_problem(name: str) -> str | None:
    if name in (".", ".."):
        return f"{name!r} is not a valid interface name"
    if len(name.encode()) >= IFNAMSIZ:
        return (f"interface name {name!r} is {len(name.encode())} bytes; "
                f"Linux allows at most {IFNAMSIZ - 1}")
    m = _IFNAME_BAD.search(name)
    if m:
        return (f"interface name {name!r} contains {m.group(0)!r}; "
                f"'/', ':' and whitespace are not allowed")
    return None


class _Lines:
    """Best-effort map from TOML table paths and keys to 1-based line numbers."""

    _ARRAY = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]")
    _KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")

    def __init__(self, text: str):
        self.headers: dict[tuple, int] = {}
        self.keys: dict[tuple, int] = {}
        path: tuple = ()
        mn = -1
        sa = -1
        in_ml: str | None = None
        for lineno, line in enumerate(text.splitlines(), 1):
            if in_ml is not None:
                if line.count(in_ml) % 2 == 1:
                    in_ml = None
                continue
            m = self._ARRAY.match(line)
            if m:
                name = re.sub(r"[\s\"']", "", m.group(1))
                if name == "mobile_node":
                    mn += 1
                    sa = -1
                    path = ("mobile_node", mn)
                elif name == "mobile_node.sa":
                    sa += 1
                    path = ("mobile_node", mn, "sa", sa)
                else:
                    path = (name,)
                self.headers.setdefault(path, lineno)
                continue
            m = self._TABLE.match(line)
            if m:
                name = re.sub(r"[\s\"']", "", m.group(1))
                path = tuple(name.split(".")) if name else ()
                self.headers.setdefault(path, lineno)
                continue
            m = self._KEY.match(line)
            if m:
                key = next(g for g in m.groups() if g is not None)
                self.keys.setdefault((path, key), lineno)
                rest = line[m.end():]
                for q in ('"""', "'''"):
                    if rest.count(q) % 2 == 1:
                        in_ml = q
                        break

    def line(self, path: tuple, key: str | None = None) -> int | None:
        if key is not None:
            n = self.keys.get((path, key))
            if n is not None:
                return n
        return self.headers.get(path)


_MISSING = object()


class _Ctx:
    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = _Lines(text)
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def error(self, tpath: tuple, entry: str, fld: str | None, reason: str) -> None:
        self.problems.append(
            Problem(self.path, self.lines.line(tpath, fld), entry, fld, reason))

    def where(self, tpath: tuple, fld: str | None = None) -> str:
        n = self.lines.line(tpath, fld)
        return f" (line {n})" if n else ""

    # typed getters: return _MISSING (and record why) when unusable

    def unknown_keys(self, tbl: dict, allowed: tuple[str, ...], tpath: tuple,
                     entry: str) -> None:
        for k in tbl:
            if k not in allowed:
                self.error(tpath, entry, k,
                           f"unknown key{_suggest(k, allowed)}; allowed here: "
                           f"{', '.join(allowed)}")

    def get(self, tbl: dict, key: str, typ: type, tpath: tuple, entry: str,
            required: bool, default: Any = _MISSING, what: str = "") -> Any:
        if key not in tbl:
            if required:
                self.error(tpath, entry, key, "missing (required)")
            return default
        v = tbl[key]
        ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        if not ok:
            names = {str: "a string (in quotes)", int: "an integer",
                     bool: "true or false", dict: "a table", list: "an array"}
            self.error(tpath, entry, key,
                       f"must be {what or names.get(typ, typ.__name__)}, "
                       f"got {_toml_type(v)}")
            return _MISSING
        return v


# --------------------------------------------------------------------------
# parsing


def load(path: str | Path) -> Config:
    """Read, parse and validate a config file; raise ConfigError on any problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}",
                          str(p)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start}): TOML files are UTF-8",
                          str(p)) from None
    return parse(text, p)


def parse(text: str, path: str | Path = "<config>") -> Config:
    """Parse and validate TOML text; ``path`` names it in messages and anchors
    a relative ``state_dir``."""
    p = Path(path)
    spath = str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = int(m.group(1)) if m else None
        reason = msg[:m.start()].strip() if m else msg
        if m:
            reason += f" (column {m.group(2)})"
        raise ConfigError([Problem(spath, line, "", None,
                                   f"TOML syntax error: {reason}")]) from None
    except (ValueError, RecursionError) as e:   # pragma: no cover - defensive
        raise ConfigError(f"TOML syntax error: {e}", spath) from None

    ctx = _Ctx(spath, text)
    cfg = _build(ctx, raw, p)
    if ctx.problems or cfg is None:
        raise ConfigError(ctx.problems or [Problem(spath, None, "", None,
                                                   "invalid configuration")])
    for w in ctx.warnings:
        log.warning("%s", w)
    return cfg


def _build(ctx: _Ctx, raw: dict, path: Path) -> Config | None:
    for k in raw:
        if k not in _TOP_KEYS:
            tp = (k,) if isinstance(raw[k], dict) else ()
            ctx.error(tp, "", k, f"unknown top-level table or key"
                      f"{_suggest(k, _TOP_KEYS)}; allowed: [home_agent], "
                      f"[interfaces], [[mobile_node]]")

    ha = None
    if "home_agent" not in raw:
        ctx.error((), "[home_agent]", None, "missing: the [home_agent] table is "
                  "required (address, home_prefix)")
    else:
        tbl = ctx.get(raw, "home_agent", dict, ("home_agent",), "", True,
                      what="a table: [home_agent]")
        if tbl is not _MISSING:
            ha = _home_agent(ctx, tbl, path)

    ifs = InterfacesConfig()
    if "interfaces" in raw:
        tbl = ctx.get(raw, "interfaces", dict, ("interfaces",), "", False,
                      what="a table: [interfaces]")
        if tbl is not _MISSING:
            ifs = _interfaces(ctx, tbl) or ifs

    mns: list[MobileNodeConfig] = []
    if "mobile_node" in raw:
        arr = raw["mobile_node"]
        if not isinstance(arr, list):
            ctx.error(("mobile_node",), "", "mobile_node",
                      f"must be an array of tables: write [[mobile_node]] "
                      f"(double brackets) for each mobile node, got {_toml_type(arr)}")
        else:
            mns = _mobile_nodes(ctx, arr, ha)
    if ha is None:
        return None
    return Config(path=path, home_agent=ha, interfaces=ifs, mobile_nodes=tuple(mns))


def _parse_addr(ctx: _Ctx, tbl: dict, key: str, tpath: tuple, entry: str,
                required: bool) -> IPv6Address | None:
    v = ctx.get(tbl, key, str, tpath, entry, required, what="an IPv6 address in quotes")
    if v is _MISSING:
        return None
    try:
        a = IPv6Address(v.strip())
    except ValueError as e:
        try:
            ipaddress.IPv4Address(v.strip())
            ctx.error(tpath, entry, key, f"{v!r} is an IPv4 address; fastpath is IPv6-only")
        except ValueError:
            ctx.error(tpath, entry, key, f"{v!r} is not an IPv6 address ({e})")
        return None
    why = _addr_problem(a)
    if why:
        ctx.error(tpath, entry, key, why)
        return None
    return a


def _home_agent(ctx: _Ctx, tbl: dict, path: Path) -> HomeAgentConfig | None:
    tp, entry = ("home_agent",), "[home_agent]"
    ctx.unknown_keys(tbl, _HA_KEYS, tp, entry)
    addr = _parse_addr(ctx, tbl, "address", tp, entry, True)

    prefix = None
    v = ctx.get(tbl, "home_prefix", str, tp, entry, True,
                what="an IPv6 prefix in quotes, e.g. \"2001:db8:1::/64\"")
    if v is not _MISSING:
        s = v.strip()
        if "/" not in s:
            ctx.error(tp, entry, "home_prefix",
                      f"{v!r} has no prefix length; write it as e.g. \"2001:db8:1::/64\"")
        else:
            try:
                prefix = IPv6Network(s, strict=True)
            except ValueError as e:
                try:
                    loose = IPv6Network(s, strict=False)
                    ctx.error(tp, entry, "home_prefix",
                              f"{v!r} has host bits set (did you mean \"{loose}\"?)")
                except ValueError:
                    ctx.error(tp, entry, "home_prefix",
                              f"{v!r} is not an IPv6 prefix ({e})")
            if prefix is not None:
                na = prefix.network_address
                if prefix.prefixlen == 0:
                    ctx.error(tp, entry, "home_prefix",
                              "::/0 would claim every address; give the home link's prefix")
                    prefix = None
                elif na.is_multicast or na.is_link_local or na.is_loopback or \
                        (na.is_unspecified and prefix.prefixlen == 128):
                    ctx.error(tp, entry, "home_prefix",
                              f"{prefix} is not a unicast prefix that can hold home addresses")
                    prefix = None

    mtu = ctx.get(tbl, "mtu", int, tp, entry, False, DEFAULT_MTU)
    if mtu is not _MISSING and not MTU_MIN <= mtu <= MTU_MAX:
        ctx.error(tp, entry, "mtu",
                  f"{mtu} is out of range: IPv6 links have an MTU of at least "
                  f"{MTU_MIN} (RFC 8200 §5) and at most {MTU_MAX}")
        mtu = _MISSING

    sd = ctx.get(tbl, "state_dir", str, tp, entry, False, DEFAULT_STATE_DIR,
                 what="a directory path in quotes")
    state_dir = None
    if sd is not _MISSING:
        if not sd.strip():
            ctx.error(tp, entry, "state_dir", "is empty; give a directory for "
                      "sequence-number reservations")
        elif "\x00" in sd:
            ctx.error(tp, entry, "state_dir", "contains a NUL character")
        else:
            state_dir = Path(sd)
            if not state_dir.is_absolute():
                state_dir = path.parent / state_dir

    aead = ctx.get(tbl, "allow_manual_aead", bool, tp, entry, False, False)
    realtime = ctx.get(tbl, "realtime", bool, tp, entry, False, True)

    if None in (addr, prefix, state_dir) or _MISSING in (mtu, aead, realtime):
        return None
    return HomeAgentConfig(address=addr, home_prefix=prefix, mtu=mtu,
                           state_dir=state_dir, allow_manual_aead=aead, realtime=realtime)


def _interfaces(ctx: _Ctx, tbl: dict) -> InterfacesConfig | None:
    tp, entry = ("interfaces",), "[interfaces]"
    ctx.unknown_keys(tbl, _IF_KEYS, tp, entry)
    d = InterfacesConfig()
    vals: dict[str, str] = {}
    ok = True
    for k in _IF_KEYS:
        v = ctx.get(tbl, k, str, tp, entry, False, getattr(d, k),
                    what="an interface name in quotes")
        if v is _MISSING:
            ok = False
            continue
        if k in ("home", "wire") and not v:
            ctx.error(tp, entry, k, "is empty; give the TUN interface name")
            ok = False
            continue
        if v:
            why = _ifname_problem(v)
            if why:
                ctx.error(tp, entry, k, why)
                ok = False
                continue
        vals[k] = v
    if not ok:
        return None
    if vals["home"] == vals["wire"]:
        ctx.error(tp, entry, "wire", f"the home and wire TUNs must differ "
                  f"(both are {vals['home']!r})")
        return None
    if vals["home_link"] and vals["home_link"] in (vals["home"], vals["wire"]):
        ctx.error(tp, entry, "home_link",
                  f"{vals['home_link']!r} is one of fastpath's own TUNs; home_link "
                  f"names the physical home link for proxy NDP")
        return None
    return InterfacesConfig(**vals)


def _mobile_nodes(ctx: _Ctx, arr: list, ha: HomeAgentConfig | None
                  ) -> list[MobileNodeConfig]:
    out: list[MobileNodeConfig] = []
    seen_hoa: dict[IPv6Address, str] = {}
    seen_spi: dict[int, str] = {}
    for i, tbl in enumerate(arr):
        entry = f"mobile_node[{i}]"
        if not isinstance(tbl, dict):
            ctx.error(("mobile_node",), entry, None,
                      f"must be a table ([[mobile_node]]), got {_toml_type(tbl)}")
            continue
        mn = _mobile_node(ctx, tbl, i, ha, seen_hoa, seen_spi)
        if mn is not None:
            out.append(mn)
    return out


def _mobile_node(ctx: _Ctx, tbl: dict, i: int, ha: HomeAgentConfig | None,
                 seen_hoa: dict, seen_spi: dict) -> MobileNodeConfig | None:
    tp = ("mobile_node", i)
    base = f"mobile_node[{i}]"
    hoa = _parse_addr(ctx, tbl, "home_address", tp, base, True)
    entry = f"{base} (HoA {hoa})" if hoa else base
    ctx.unknown_keys(tbl, _MN_KEYS, tp, entry)
    ok = hoa is not None

    if hoa is not None and ha is not None:
        if hoa not in ha.home_prefix:
            ctx.error(tp, entry, "home_address",
                      f"{hoa} is outside home_prefix {ha.home_prefix}")
            ok = False
        elif hoa == ha.home_prefix.network_address and ha.home_prefix.prefixlen < 127:
            ctx.error(tp, entry, "home_address",
                      f"{hoa} is the Subnet-Router anycast address of "
                      f"{ha.home_prefix} (RFC 4291 §2.6.1), not a home address")
            ok = False
        elif hoa == ha.address:
            ctx.error(tp, entry, "home_address",
                      f"{hoa} is the home agent's own address")
            ok = False
    if hoa is not None:
        if hoa in seen_hoa:
            ctx.error(tp, entry, "home_address",
                      f"duplicate home address: {hoa} is already {seen_hoa[hoa]}")
            ok = False
        else:
            seen_hoa[hoa] = f"mobile_node[{i}]{ctx.where(tp, 'home_address')}"

    coa = None
    if "care_of_address" in tbl:
        coa = _parse_addr(ctx, tbl, "care_of_address", tp, entry, False)
        if coa is None:
            ok = False
        elif ha is not None:
            if coa == ha.address:
                ctx.error(tp, entry, "care_of_address",
                          f"{coa} is the home agent's own address")
                ok = False
            elif coa in ha.home_prefix:
                ctx.error(tp, entry, "care_of_address",
                          f"{coa} lies inside home_prefix {ha.home_prefix}: a "
                          f"mobile node at home needs no binding; give the "
                          f"address it has on the visited link")
                ok = False

    life = ctx.get(tbl, "binding_lifetime_max", int, tp, entry, False,
                   DEFAULT_BINDING_LIFETIME_MAX, what="an integer number of seconds")
    if life is _MISSING:
        ok = False
    elif not LIFETIME_MIN <= life <= LIFETIME_MAX:
        ctx.error(tp, entry, "binding_lifetime_max",
                  f"{life} s is out of range {LIFETIME_MIN}..{LIFETIME_MAX} s: "
                  f"lifetimes travel as a 16-bit count of 4-second units (RFC 6275 §6.1.7)")
        ok = False
    elif life % 4:
        ctx.error(tp, entry, "binding_lifetime_max",
                  f"{life} s is not a multiple of 4: lifetimes travel in 4-second "
                  f"units (RFC 6275 §6.1.7); use {life - life % 4} or {life - life % 4 + 4}")
        ok = False

    sas: list[SAConfig] = []
    sa_ok = True
    if "sa" in tbl:
        arr = tbl["sa"]
        if not isinstance(arr, list):
            ctx.error(tp, entry, "sa", f"must be an array of tables: write "
                      f"[[mobile_node.sa]] (double brackets) for each SA, got {_toml_type(arr)}")
            sa_ok = False
        else:
            allow = ha.allow_manual_aead if ha is not None else False
            for j, stbl in enumerate(arr):
                s = _sa(ctx, stbl, i, j, hoa, allow, seen_spi)
                if s is None:
                    sa_ok = False
                else:
                    sas.append(s)

    if sa_ok:
        ok = _check_pairs(ctx, tp, entry, sas, coa) and ok
    if not (ok and sa_ok):
        return None
    return MobileNodeConfig(home_address=hoa, care_of_address=coa,
                            binding_lifetime_max=life, sas=tuple(sas), entry=base)


def _check_pairs(ctx: _Ctx, tp: tuple, entry: str, sas: list[SAConfig],
                 coa: IPv6Address | None) -> bool:
    ok = True
    by: dict[tuple[str, str], SAConfig] = {}
    for s in sas:
        k = (s.purpose, s.direction)
        stp = tp + ("sa", int(s.entry.rsplit("[", 1)[1].rstrip("]")))
        if k in by:
            first = by[k]
            ctx.error(stp, f"{s.entry} (SPI 0x{s.spi:08x})", "purpose",
                      f"a second {s.purpose} {s.direction} SA for this mobile node: "
                      f"{first.entry} (SPI 0x{first.spi:08x}) already is one; "
                      f"a mobile node has at most one SA per purpose and direction")
            ok = False
        else:
            by[k] = s
    for purpose in PURPOSES:
        sin, sout = by.get((purpose, "in")), by.get((purpose, "out"))
        if (sin is None) == (sout is None):
            continue
        have = sin or sout
        missing = "out" if sout is None else "in"
        mode = have.mode
        ctx.error(tp, entry, "sa",
                  f"has a {purpose} {have.direction} SA ({have.entry}, SPI "
                  f"0x{have.spi:08x}) but no {purpose} {missing} SA: {mode}-mode "
                  f"SAs come in pairs, one per direction (RFC 3776 §4)")
        ok = False
    if ok and (("binding", "in") not in by) and coa is None:
        ctx.error(tp, entry, "sa",
                  "has no binding SAs and no static care_of_address: its Binding "
                  "Updates must be ESP-protected (RFC 3776 §4), so it could never "
                  "register; add a binding in/out SA pair or a care_of_address")
        ok = False
    return ok


def _sa(ctx: _Ctx, tbl: Any, i: int, j: int, hoa: IPv6Address | None,
        allow_aead: bool, seen_spi: dict) -> SAConfig | None:
    tp = ("mobile_node", i, "sa", j)
    base = f"mobile_node[{i}].sa[{j}]"
    if not isinstance(tbl, dict):
        ctx.error(("mobile_node", i), base, None,
                  f"must be a table ([[mobile_node.sa]]), got {_toml_type(tbl)}")
        return None

    # SPI first: it names the entry in every other message
    hoa_entry = f"{base} (HoA {hoa})" if hoa else base
    spi = ctx.get(tbl, "spi", int, tp, hoa_entry, True,
                  what="an integer (e.g. spi = 0x1000)")
    spi_ok = spi is not _MISSING
    if spi_ok and not SPI_MIN <= spi <= SPI_MAX:
        if 0 <= spi < SPI_MIN:
            reason = (f"{spi} is reserved: SPI 0 is for local use and 1..255 are "
                      f"reserved by IANA (RFC 4303 §2.1); use 256 (0x100) or above")
        else:
            reason = f"{spi} does not fit the 32-bit SPI field (1..0xffffffff)"
        ctx.error(tp, hoa_entry, "spi", reason)
        spi_ok = False
    detail = []
    if hoa is not None:
        detail.append(f"HoA {hoa}")
    if spi_ok:
        detail.append(f"SPI 0x{spi:08x}")
    entry = f"{base} ({', '.join(detail)})" if detail else base
    ok = spi_ok

    ctx.unknown_keys(tbl, _SA_KEYS, tp, entry)

    if spi_ok:
        if spi in seen_spi:
            ctx.error(tp, entry, "spi",
                      f"duplicate SPI 0x{spi:08x}: already used by {seen_spi[spi]}; "
                      f"SPIs must be unique across all SAs, in and out")
            ok = False
        else:
            seen_spi[spi] = f"{base}{ctx.where(tp, 'spi')}"

    purpose = ctx.get(tbl, "purpose", str, tp, entry, True)
    if purpose is not _MISSING and purpose not in PURPOSES:
        ctx.error(tp, entry, "purpose", f"unknown purpose {purpose!r}"
                  f"{_suggest(purpose, PURPOSES)}; valid: {', '.join(PURPOSES)}")
        purpose = _MISSING
    direction = ctx.get(tbl, "direction", str, tp, entry, True)
    if direction is not _MISSING and direction not in DIRECTIONS:
        ctx.error(tp, entry, "direction", f"must be \"in\" (MN to HA) or \"out\" "
                  f"(HA to MN), got {direction!r}")
        direction = _MISSING
    ok = ok and purpose is not _MISSING and direction is not _MISSING

    alg = _algorithm(ctx, tbl, tp, entry, allow_aead)
    keys = _keys(ctx, tbl, tp, entry, alg) if alg is not None else None
    ok = ok and keys is not None

    # replay window: inbound only
    rw: Any = 0
    if direction == "out":
        if "replay_window" in tbl:
            ctx.error(tp, entry, "replay_window",
                      "is for in SAs only: the receiver keeps the anti-replay "
                      "window (RFC 4303 §3.4.3), and the HA receives on in SAs; "
                      "remove it from this out SA")
            ok = False
    else:
        rw = ctx.get(tbl, "replay_window", int, tp, entry, False,
                     DEFAULT_REPLAY_WINDOW, what="an integer number of packets")
        if rw is _MISSING:
            ok = False
        elif rw != 0 and not (REPLAY_WINDOW_STEP <= rw <= REPLAY_WINDOW_MAX
                              and rw % REPLAY_WINDOW_STEP == 0):
            ctx.error(tp, entry, "replay_window",
                      f"{rw} is not allowed: use 0 (anti-replay off) or a multiple "
                      f"of {REPLAY_WINDOW_STEP} from {REPLAY_WINDOW_STEP} to "
                      f"{REPLAY_WINDOW_MAX} packets (default {DEFAULT_REPLAY_WINDOW})")
            ok = False

    esn = ctx.get(tbl, "esn", bool, tp, entry, False, False)
    if esn is _MISSING:
        ok = False

    if not ok:
        return None
    if alg.kind == KIND_GCM:
        ctx.warnings.append(
            f"{ctx.path}: {entry}: {alg.name} with a manual key, allowed by "
            f"[home_agent] allow_manual_aead = true: RFC 4106 §8.1 and RFC 8221 §3 "
            f"forbid AES-GCM with statically configured keys (a counter reset "
            f"repeats nonces); use this only in a lab or benchmark")
    enc_key, auth_key, salt = keys
    return SAConfig(purpose=purpose, direction=direction, spi=spi, algorithm=alg,
                    enc_key=enc_key, auth_key=auth_key, salt=salt,
                    replay_window=rw, esn=esn, entry=base)


def _algorithm(ctx: _Ctx, tbl: dict, tp: tuple, entry: str,
               allow_aead: bool) -> Algorithm | None:
    name = ctx.get(tbl, "algorithm", str, tp, entry, True)
    if name is _MISSING:
        return None
    valid = ", ".join(ALGORITHMS)
    if name in REFUSED or name.lower() in REFUSED:
        ctx.error(tp, entry, "algorithm", f"{name!r} is refused: "
                  f"{REFUSED.get(name) or REFUSED[name.lower()]}; valid: {valid}")
        return None
    alg = ALGORITHMS.get(name)
    if alg is None:
        if name.lower() in ALGORITHMS:
            hint = f" (names are lowercase: did you mean {name.lower()!r}?)"
        else:
            hint = _suggest(name, list(ALGORITHMS))
        ctx.error(tp, entry, "algorithm",
                  f"unknown algorithm {name!r}{hint}; valid: {valid}")
        return None
    if alg.kind == KIND_GCM and not allow_aead:
        ctx.error(tp, entry, "algorithm",
                  f"{name} (AES-GCM) is refused with manual keys: RFC 4106 §8.1 and "
                  f"RFC 8221 §3 forbid AES-GCM with statically configured keys (a "
                  f"counter reset repeats nonces under the same key). Use an AES-CBC "
                  f"+ HMAC suite (e.g. aes128-sha1, aes256-sha256), or for a lab or "
                  f"benchmark only set [home_agent] allow_manual_aead = true")
        return None
    return alg


_HASH_NAMES = {HASH_SHA1: "HMAC-SHA-1, RFC 2404", HASH_SHA256: "HMAC-SHA-256, RFC 4868"}


def _keys(ctx: _Ctx, tbl: dict, tp: tuple, entry: str,
          alg: Algorithm) -> tuple[bytes, bytes, bytes] | None:
    if alg.kind == KIND_GCM:
        wanted, unwanted = ("key",), ("enc_key", "auth_key")
        usage = "key (AES key followed by the 4-byte salt)"
    elif alg.kind == KIND_CBC_HMAC:
        wanted, unwanted = ("enc_key", "auth_key"), ("key",)
        usage = "enc_key and auth_key"
    elif alg.kind == KIND_NULL_HMAC:
        wanted, unwanted = ("auth_key",), ("key", "enc_key")
        usage = "auth_key only (no encryption)"
    else:  # pragma: no cover - table and code out of step
        ctx.error(tp, entry, "algorithm", f"{alg.name}: unsupported kind {alg.kind}")
        return None
    ok = True
    for k in unwanted:
        if k in tbl:
            ctx.error(tp, entry, k, f"{alg.name} does not use {k}: it takes {usage}")
            ok = False
    got: dict[str, bytes] = {}
    for k in wanted:
        v = ctx.get(tbl, k, str, tp, entry, True,
                    what="a hex string in quotes, e.g. \"0x0011...\"")
        if v is _MISSING:
            ok = False
            continue
        try:
            b = parse_hex(v)
        except ValueError as e:
            ctx.error(tp, entry, k, str(e))
            ok = False
            continue
        if k == "key":
            need = alg.enc_key_len + alg.salt_len
            if len(b) != need:
                reason = (f"must be {need} bytes for {alg.name}: a {alg.enc_key_len}-byte "
                          f"AES key followed by the {alg.salt_len}-byte salt "
                          f"(RFC 4106 §8.1); got {len(b)}")
                if len(b) == alg.enc_key_len:
                    reason += " (the salt is missing)"
                ctx.error(tp, entry, k, reason)
                ok = False
                continue
        elif k == "enc_key":
            if len(b) != alg.enc_key_len:
                ctx.error(tp, entry, k,
                          f"must be {alg.enc_key_len} bytes for {alg.name} "
                          f"(AES-{alg.enc_key_len * 8}), got {len(b)}")
                ok = False
                continue
        elif k == "auth_key":
            if len(b) != alg.auth_key_len:
                ctx.error(tp, entry, k,
                          f"must be {alg.auth_key_len} bytes for {alg.name} "
                          f"({_HASH_NAMES.get(alg.hash, 'HMAC')}), got {len(b)}")
                ok = False
                continue
        got[k] = b
    if not ok:
        return None
    if alg.kind == KIND_GCM:
        key = got["key"]
        return key[:alg.enc_key_len], b"", key[alg.enc_key_len:]
    if alg.kind == KIND_CBC_HMAC:
        return got["enc_key"], got["auth_key"], b""
    return b"", got["auth_key"], b""
