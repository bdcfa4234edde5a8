"""The home agent the benchmarks drive: addresses, keys, SA tables, packets.

N mobile nodes, each with one payload SA out (HA->MN) and one in (MN->HA),
a static binding (CoA) and its own keys. Home addresses are
2001:db8:1::/64 + a 64-bit interface identifier (IID); the CoA is
2001:db8:2::/64 + the same IID.

IID layouts:
  random      IIDs spread over all 64 bits (like SLAAC/RFC 7217 addresses):
              a bijection of the index, so every IID is distinct
  sequential  IID = 1, 2, 3, ... (as an operator numbering HoAs would)
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from fastpath.algorithms import get as get_alg
from fastpath.core.batch import Batch
from fastpath.core.sad import SADatabase
from fastpath.ref.engine import RefEngine
from fastpath.ref.esp import RefSA
from fastpath.ref.ipv6 import addr, ipv6_header

HA = addr("2001:db8:ffff::1")
CN = addr("2001:db8:99::1")
HOME_PREFIX = addr("2001:db8:1::")[:8]
COA_PREFIX = addr("2001:db8:2::")[:8]
SPI_OUT = 0x01000000          # + MN index: the HA's outbound payload SA
SPI_IN = 0x02000000           # + MN index: the MN's (our inbound) payload SA
MAX_MNS = 1 << 24
IID_OFFSET = 32               # inner IPv6 header: bytes 32..39 are the dst IID
LAYOUTS = ("random", "sequential")
MIN_SIZE = 48                 # IPv6 header + UDP header
NH_UDP = 17


class BenchError(RuntimeError):
    """The benchmark itself went wrong (a packet was dropped, a check failed):
    its figures would mean nothing."""


def iids(n: int, layout: str) -> np.ndarray:
    """The n interface identifiers, as uint64."""
    i = np.arange(1, n + 1, dtype=np.uint64)
    if layout == "sequential":
        return i
    if layout != "random":
        raise ValueError(f"unknown HoA layout {layout!r}")
    with np.errstate(over="ignore"):      # modular arithmetic is the point
        x = i * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(32)
    return x                              # odd multiplies and xorshifts: a bijection


def iid_bytes(values: np.ndarray) -> np.ndarray:
    """(n, 8) uint8: each IID in network byte order."""
    return values.astype(">u8").view(np.uint8).reshape(-1, 8)


def sa_keys(alg: str, mn: int, direction: str, seed: int = 1) -> tuple[bytes, bytes, bytes]:
    """(enc_key, auth_key, salt) of MN `mn`'s SA in `direction`: distinct per
    SA, reproducible from the seed."""
    a = get_alg(alg)
    k = hashlib.blake2b(f"{seed}/{mn}/{direction}".encode(), digest_size=64).digest()
    enc, rest = k[:a.enc_key_len], k[a.enc_key_len:]
    auth, rest = rest[:a.auth_key_len], rest[a.auth_key_len:]
    return enc, auth, rest[:a.salt_len]


def inner_packet(src: bytes, dst: bytes, size: int, fill: int = 0) -> bytes:
    """An IPv6/UDP packet of exactly `size` bytes."""
    if size < MIN_SIZE:
        raise ValueError(f"packet size {size} < {MIN_SIZE}")
    body = size - 40
    udp = (5000).to_bytes(2, "big") + (6000).to_bytes(2, "big") + body.to_bytes(2, "big") + b"\0\0"
    data = bytes((fill + k) & 0xFF for k in range(body - 8))
    return ipv6_header(src, dst, NH_UDP, body) + udp + data


@dataclass
class Table:
    """An SA table of n mobile nodes and what the scenarios need to reach them."""
    alg: str
    n: int
    layout: str
    sad: SADatabase | None
    blob: bytes                       # IIDs, 8 bytes each, network order
    build_s: float = 0.0
    mtu: int = 1500
    built: int = 0                    # mobile nodes added (< n when the build was cut off)
    aborted: bool = False
    notes: list = field(default_factory=list)

    def iid(self, i: int) -> bytes:
        return self.blob[8 * i:8 * i + 8]

    def hoa(self, i: int) -> bytes:
        return HOME_PREFIX + self.iid(i)

    def coa(self, i: int) -> bytes:
        return COA_PREFIX + self.iid(i)

    def mn_sa(self, i: int, direction: str) -> RefSA:
        """The mobile node's end of its SA `direction` (in: it seals, out: it opens)."""
        spi = (SPI_IN if direction == "in" else SPI_OUT) + i
        enc, auth, salt = sa_keys(self.alg, i, direction)
        return RefSA(spi, self.alg, enc, auth, salt, False, 0)


def build_table(alg: str, n: int, layout: str, *, mtu: int = 1500, ipsecmb: bool = True,
                budget_s: float | None = None, blob: bytes | None = None) -> Table:
    """Add n mobile nodes with a payload SA each way, from Python, one call
    per SA (as the config loader does). The inbound SAs have replay_window=0
    so that benchmarks may replay the same packets. With budget_s, the build
    stops once it has taken that long (Table.aborted)."""
    if not 1 <= n <= MAX_MNS:
        raise ValueError(f"1 <= mobile nodes <= {MAX_MNS}")
    a = get_alg(alg)
    if blob is None:
        blob = iid_bytes(iids(n, layout)).tobytes()
    t0 = time.perf_counter()
    sad = SADatabase(HA, mtu=mtu, sa_capacity=2 * n, mn_capacity=n, ipsecmb=ipsecmb)
    add_mn, add_sa = sad.add_mobile_node, sad.add_sa
    built, aborted = n, False
    for i in range(n):
        iid = blob[8 * i:8 * i + 8]
        h = HOME_PREFIX + iid
        add_mn(h, COA_PREFIX + iid)
        enc, auth, salt = sa_keys(alg, i, "out")
        add_sa(h, "payload", "out", SPI_OUT + i, a, enc, auth, salt, False)
        enc, auth, salt = sa_keys(alg, i, "in")
        add_sa(h, "payload", "in", SPI_IN + i, a, enc, auth, salt, False, 0)
        if budget_s is not None and (i & 1023) == 1023 and time.perf_counter() - t0 > budget_s:
            built, aborted = i + 1, True
            break
    return Table(alg, n, layout, sad, blob, time.perf_counter() - t0, mtu, built, aborted)


def ref_engine(table: Table, mns) -> RefEngine:
    """The pure-Python reference engine with the same SAs for mobile nodes `mns`."""
    ref = RefEngine(HA, table.mtu)
    for i in sorted(set(mns)):
        h = table.hoa(i)
        ref.add_mobile_node(h, table.coa(i))
        ref.add_sa("payload", "out", SPI_OUT + i, table.alg, *sa_keys(table.alg, i, "out"),
                   esn=False, hoa=h)
        ref.add_sa("payload", "in", SPI_IN + i, table.alg, *sa_keys(table.alg, i, "in"),
                   esn=False, replay_window=0, hoa=h)
    return ref


def traffic_order(n: int, seed: int = 7) -> np.ndarray:
    """Mobile node indices in the order traffic visits them: a shuffled
    round robin, so that consecutive packets do not walk the tables in
    memory order."""
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    return np.random.default_rng(seed).permutation(n)


def load_batch(packets: list[bytes], max_packet: int) -> Batch:
    b = Batch(len(packets), max_packet)
    b.load(packets)
    return b
