"""A small home-agent set-up shared by the engine tests: the same SAs loaded
into the Cython engine (for each backend) and into the reference engine."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

from fastpath.algorithms import ALGORITHMS, get
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.core.esp import ipsecmb_available
from fastpath.core.sad import SADatabase
from fastpath.ref.engine import RefEngine
from fastpath.ref.esp import RefSA
from fastpath.ref.ipv6 import addr, ipv6_header

from pathlib import Path

REPO_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

HA = addr("2001:db8:ffff::1")
CN = addr("2001:db8:99::1")
MN1 = addr("2001:db8:1::10")     # payload + RR + binding + prefix-discovery SAs
MN2 = addr("2001:db8:1::20")     # binding SAs only: plain IPv6-in-IPv6
MN3 = addr("2001:db8:1::30")     # payload SAs but no binding yet
COA1 = addr("2001:db8:2::10")
COA2 = addr("2001:db8:3::20")
EVIL = addr("2001:db8:666::1")

BACKENDS = ["openssl"] + (["ipsecmb"] if ipsecmb_available() else [])
ALGS = sorted(ALGORITHMS)

SPI = {  # (hoa, purpose, direction) -> SPI
    (MN1, "payload", "out"): 0x1001, (MN1, "payload", "in"): 0x2001,
    (MN1, "return-routability", "out"): 0x1002, (MN1, "return-routability", "in"): 0x2002,
    (MN1, "binding", "out"): 0x1003, (MN1, "binding", "in"): 0x2003,
    (MN1, "prefix-discovery", "out"): 0x1006, (MN1, "prefix-discovery", "in"): 0x2006,
    (MN2, "binding", "out"): 0x1103, (MN2, "binding", "in"): 0x2103,
    (MN3, "payload", "out"): 0x1201, (MN3, "payload", "in"): 0x2201,
}


def keys_for(alg: str, rnd: random.Random):
    a = get(alg)
    b = lambda n: bytes(rnd.getrandbits(8) for _ in range(n))  # noqa: E731
    return b(a.enc_key_len), b(a.auth_key_len), b(a.salt_len)


@dataclass
class Topo:
    alg: str
    esn: bool
    window: int
    sad: SADatabase
    engine: Engine
    ref: RefEngine
    keys: dict            # SPI -> (enc, auth, salt)

    def mn_sa(self, hoa, purpose, direction="in") -> RefSA:
        """The mobile node's end of one of our SAs (it seals what we open)."""
        spi = SPI[(hoa, purpose, direction)]
        enc, auth, salt = self.keys[spi]
        return RefSA(spi, self.alg, enc, auth, salt, self.esn, 0)

    def run(self, direction: str, packets, ivs=None):
        """Both engines over the same packets: (cython results, ref results)."""
        b = Batch(max(len(packets), 1))
        b.load(packets)
        if ivs is not None and get(self.alg).iv_len != 16:
            ivs = None          # only CBC takes an IV; GCM's is the sequence number
        self.engine.fixed_ivs = ivs is not None
        if ivs is not None:
            for i, iv in enumerate(ivs):
                b.set_iv(i, iv)
        getattr(self.engine, direction)(b)
        got = [(v, r, p) for v, r, p in b.results()]
        want = [(int(v), int(r), p) for v, r, p in
                getattr(self.ref, direction)(packets, *(() if direction == "decap" else (ivs,)))]
        return got, want


def make_topo(alg="aes128-sha1", esn=False, backend="openssl", window=64, seed=1,
              mtu=1500, mn3_coa=None) -> Topo:
    """mn3_coa: bind MN3 too (then it is the one node with a payload SA and no
    return-routability SA: its traffic takes the engine's encap fast path)."""
    rnd = random.Random(seed)
    sad = SADatabase(HA, mtu, sa_capacity=16, mn_capacity=8, ipsecmb=(backend == "ipsecmb"))
    ref = RefEngine(HA, mtu)
    keys = {}
    for hoa, coa in ((MN1, COA1), (MN2, COA2), (MN3, mn3_coa)):
        sad.add_mobile_node(hoa, coa)
        ref.add_mobile_node(hoa, coa)
    for (hoa, purpose, d), spi in SPI.items():
        enc, auth, salt = keys_for(alg, rnd)
        keys[spi] = (enc, auth, salt)
        w = window if d == "in" else 0
        sad.add_sa(hoa, purpose, d, spi, alg, enc, auth, salt, esn, w)
        ref.add_sa(purpose, d, spi, alg, enc, auth, salt, esn, w, hoa=hoa)
    engine = Engine(sad, backend)
    engine.icmp_error_rate = engine.icmp_error_burst = 1e9     # the reference path does not rate-limit
    return Topo(alg, esn, window, sad, engine, ref, keys)


def inner(src, dst, size=64, nh=17, fill=b"\xab") -> bytes:
    """A well-formed IPv6 packet of `size` bytes in all."""
    size = max(size, 40)
    return ipv6_header(src, dst, nh, size - 40) + (fill * (size - 40))[: size - 40]


def outer(src, dst, nh, payload) -> bytes:
    return ipv6_header(src, dst, nh, len(payload)) + payload


def random_bytes(rnd: random.Random, n: int) -> bytes:
    return bytes(rnd.getrandbits(8) for _ in range(n))


__all__ = [n for n in dir() if not n.startswith("_")] + ["os"]
