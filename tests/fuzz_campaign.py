"""A fuzzing campaign, not run by CI (not a test_ file): for SECONDS in all,
random mutations (bytes changed, cut, grown, lying Payload Lengths, garbage)
of real packets - ESP tunnel packets of three algorithms and both crypto
backends, plain IPv6-in-IPv6, a Binding Update, ICMPv6, fragments - in
random batches through Engine.decap / Engine.encap, then of real fragments
through a Reassembler with small limits and time jumps. Checks: no crash, a
TO_HOME packet's Payload Length matches its length, the reassembler's bytes
stay within its limit and return to 0. Prints the verdict and counter totals.

    flock /tmp/fp-bench.lock env PYTHONPATH=. python3 tests/fuzz_campaign.py 150 [SEED]
"""
import os
import random
import struct
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topo import make_topo, inner, outer, CN, HA, MN2, COA1, COA2, BACKENDS
from test_reassembly_engine import esp_tunnel, fragment
from test_binding_swap import build_bu
from fastpath.core.batch import Batch
from fastpath.reassembly import Reassembler
from fastpath.verdicts import Verdict
secs = float(sys.argv[1]); rnd = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
stats = {}
for alg, esn, backend in [("aes128-sha1", False, "openssl"), ("aes128gcm16", True, BACKENDS[-1]), ("aes256-sha256", False, "openssl")]:
    topo = make_topo(alg, esn=esn, backend=backend, window=64)
    seeds = [esp_tunnel(topo, size=s, seq=q)[1] for s, q in ((64, 1), (1200, 2), (1400, 3))]
    seeds += [outer(COA2, HA, 41, inner(MN2, CN, 300)), build_bu(topo, COA1), outer(COA1, HA, 58, bytes(16))]
    seeds += fragment(seeds[1], mtu=600, ident=3)
    def mutate(p):
        p = bytearray(p)
        for _ in range(rnd.choice([0, 1, 1, 2, 4, 16])):
            k = rnd.random()
            if k < 0.5 and p:
                p[rnd.randrange(min(len(p), 200) if rnd.random() < .8 else len(p))] = rnd.randrange(256)
            elif k < 0.7:
                del p[rnd.randrange(len(p) + 1):]
            elif k < 0.8:
                p += bytes(rnd.randrange(256) for _ in range(rnd.randrange(64)))
            elif k < 0.9 and len(p) >= 6:
                struct.pack_into("!H", p, 4, max(0, min(65535, len(p) - 40 + rnd.choice([-8, -1, 0, 0, 0, 1, 8]))))
            else:
                p = bytearray(rnd.randbytes(rnd.randrange(120)))
        return bytes(p)
    b = Batch(32, 2048)
    t0 = time.time(); n = 0; verd = {}
    while time.time() - t0 < secs / 3:
        pkts = [mutate(rnd.choice(seeds))[:2048] for _ in range(rnd.randrange(1, 33))]
        b.load(pkts)
        (topo.engine.decap if rnd.random() < .8 else topo.engine.encap)(b)
        topo.engine.take_bindings()
        for v, r, out in b.results():
            verd[Verdict(v).name] = verd.get(Verdict(v).name, 0) + 1
            if v == Verdict.TO_HOME:
                assert len(out) >= 40 and 40 + int.from_bytes(out[4:6], "big") == len(out), out[:8]
        n += len(pkts)
    stats[(alg, backend)] = (n, verd)
# reassembly campaign
r = Reassembler(max_datagrams=16, max_bytes=20000)
t0 = time.time(); n = 0; outs = 0; now = 0.0
frs = [f for k in range(4) for f in fragment(esp_tunnel(topo, size=3000, seq=10 + k)[1], mtu=600, ident=k)]
while time.time() - t0 < secs / 3:
    p = rnd.choice(frs)
    if rnd.random() < .3:
        p = bytearray(p); p[rnd.randrange(40, 56)] = rnd.randrange(256); p = bytes(p)
    now += rnd.choice([0, 0, 0, 0.01, 5])
    o = r.add(p, now)
    if o is not None:
        outs += 1
        assert 40 + int.from_bytes(o[4:6], "big") == len(o)
    n += 1
    assert 0 <= r.buffered_bytes <= r.max_bytes
r.expire(now + 1e6); assert r.buffered_bytes == 0 and len(r) == 0
print(stats); print("reassembly", n, outs, {k: v for k, v in r.counters().items() if v})
