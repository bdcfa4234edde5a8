"""Outer fragments the worker writes (RFC 2473 §7.1: an inner packet of up
to 1280 bytes is tunnelled even when the tunnel packet exceeds the wire MTU)
are parsed and reassembled by scapy, and their Identifications do not count
up (RFC 7739 §5: a guessable next Identification lets an off-path node
inject a fragment into the reassembly at the care-of address). SOCK_SEQPACKET
socket pairs stand in for the TUN queues, as in test_worker_lowrate."""
import socket
import threading

from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6

from fastpath.core.worker import Worker

from test_engine_scapy import scapy_sa
from test_worker_lowrate import Reader
from topo import CN, COA1, HA, MN1, SPI, inner, make_topo

N = 200


def test_fragments_reassemble_in_scapy_and_identifications_do_not_count_up():
    topo = make_topo("aes128gcm16")
    home_us, home_them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wire_us, wire_them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (home_us, wire_us):
        s.setblocking(False)
    wire_us.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    reader = Reader(wire_them)
    reader.start()
    w = Worker(topo.engine, home_us.fileno(), wire_us.fileno(), 16, 2048, mtu=1280)
    t = threading.Thread(target=w.run, kwargs={"poll_ms": 50})
    t.start()
    sent = [inner(CN, MN1, 1240, fill=bytes([k % 251])) for k in range(N)]
    try:
        for p in sent:
            home_them.send(p)
        assert reader.wait_for(2 * N, 5.0) == 2 * N, w.counters()
    finally:
        w.stop()
        t.join(5)
    frags = [IPv6(p) for p in reader.got]
    assert all(len(p) <= 1280 and IPv6ExtHdrFragment in f for p, f in zip(reader.got, frags))
    idents = [f[IPv6ExtHdrFragment].id for f in frags[::2]]
    assert [f[IPv6ExtHdrFragment].id for f in frags[1::2]] == idents     # pairs share one
    assert len(set(idents)) == N
    steps = {(b - a) % 2 ** 32 for a, b in zip(idents, idents[1:])}
    assert len(steps) > N // 2, "identifications follow a pattern"
    sa = scapy_sa(topo, SPI[(MN1, "payload", "out")], HA, COA1)
    whole = [defragment6([a, b]) for a, b in zip(frags[::2], frags[1::2])]
    assert [bytes(sa.decrypt(IPv6(bytes(p)))) for p in whole] == sent
