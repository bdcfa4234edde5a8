"""Outer fragments the worker writes (RFC 2473 §7.1: an inner packet of up
to 1280 bytes is tunnelled even when the tunnel packet exceeds the wire MTU)
are parsed and reassembled by scapy, and their Identifications do not count
up (RFC 7739 §5: a guessable next Identification lets an off-path node
inject a fragment into the reassembly at the care-of address). SOCK_SEQPACKET
socket pairs stand in for the TUN queues, as in test_worker_lowrate."""
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6

from fastpath.ref.ipv6 import ntop

from test_engine_scapy import scapy_sa
from test_worker_lowrate import Rig
from topo import CN, COA1, HA, MN1, SPI, inner, make_topo

N = 200


def test_fragments_reassemble_in_scapy_and_identifications_do_not_count_up():
    topo = make_topo("aes128gcm16")
    rig = Rig(topo, mtu=1280, poll_ms=50)
    sent = [inner(CN, MN1, 1240, fill=bytes([k % 251])) for k in range(N)]
    try:
        for p in sent:
            rig.home.send(p)
        assert rig.reader.wait_for(2 * N, 5.0) == 2 * N, rig.worker.counters()
    finally:
        rig.stop()
    got = rig.reader.got
    frags = [IPv6(p) for p in got]
    assert all(len(p) <= 1280 and IPv6ExtHdrFragment in f for p, f in zip(got, frags))
    idents = [f[IPv6ExtHdrFragment].id for f in frags[::2]]
    assert [f[IPv6ExtHdrFragment].id for f in frags[1::2]] == idents     # pairs share one
    assert len(set(idents)) == N
    steps = {(b - a) % 2 ** 32 for a, b in zip(idents, idents[1:])}
    assert len(steps) > N // 2, "identifications follow a pattern"
    sa = scapy_sa(topo, SPI[(MN1, "payload", "out")], HA, COA1)
    whole = [defragment6([a, b]) for a, b in zip(frags[::2], frags[1::2])]
    assert [bytes(sa.decrypt(IPv6(bytes(p)))) for p in whole] == sent


def test_below_a_lowered_path_mtu_the_worker_cuts_at_1280():
    """The configured MTU is 1500; a Packet Too Big lowered COA1's path MTU
    to 1300. A 1250-byte inner packet then leaves as fragments of at most
    1280 bytes (scapy reassembles and decrypts them); to MN2's CoA, whose
    path was not lowered, the same size leaves whole."""
    from topo import COA2, MN2
    topo = make_topo("aes128gcm16")
    topo.sad.set_path_mtu(COA1, 1300)
    rig = Rig(topo, mtu=1500, poll_ms=50)
    to_mn1, to_mn2 = inner(CN, MN1, 1250, fill=b"\x01"), inner(CN, MN2, 1250, fill=b"\x02")
    try:
        rig.home.send(to_mn1)
        assert rig.reader.wait_for(2, 5.0) == 2, rig.worker.counters()
        rig.home.send(to_mn2)
        assert rig.reader.wait_for(3, 5.0) == 3, rig.worker.counters()
        fragmented = rig.worker.counters()["fragmented"]
    finally:
        rig.stop()
    a, b, whole = (IPv6(p) for p in rig.reader.got)
    assert max(len(p) for p in rig.reader.got[:2]) <= 1280 and IPv6ExtHdrFragment in a
    assert a.dst == b.dst == ntop(COA1)
    sa = scapy_sa(topo, SPI[(MN1, "payload", "out")], HA, COA1)
    assert bytes(sa.decrypt(IPv6(bytes(defragment6([a, b]))))) == to_mn1
    assert whole.dst == ntop(COA2) and IPv6ExtHdrFragment not in whole and whole.nh == 41
    assert fragmented == 1


def test_a_tunnel_limit_header_travels_in_the_first_fragment():
    """A plain tunnel packet whose header carries a Tunnel Encapsulation
    Limit (8 bytes of destination options) and exceeds the wire MTU: the
    destination options are part of what is fragmented (RFC 8200 §4.5), so
    the first fragment carries them after its fragment header and scapy
    reassembles the tunnel packet whole."""
    from scapy.layers.inet6 import HBHOptUnknown, IPv6ExtHdrDestOpt
    from topo import COA2, MN2
    topo = make_topo("aes128gcm16")
    rig = Rig(topo, mtu=1280, poll_ms=50)
    carried = inner(CN, MN2, 1200, fill=b"\x03")
    tel = bytes([41, 0, 4, 1, 7, 1, 1, 0]) + carried
    pkt = bytes(IPv6(src=ntop(CN), dst=ntop(MN2), nh=60, plen=len(tel))) + tel
    try:
        rig.home.send(pkt)
        assert rig.reader.wait_for(2, 5.0) == 2, rig.worker.counters()
    finally:
        rig.stop()
    a, b = (IPv6(p) for p in rig.reader.got)
    assert a[IPv6ExtHdrFragment].nh == 60 and a.dst == ntop(COA2)
    whole = IPv6(bytes(defragment6([a, b])))
    d = whole[IPv6ExtHdrDestOpt]
    assert whole.nh == 60 and d.nh == 41
    assert [(o.otype, bytes(o.optdata)) for o in d.options if isinstance(o, HBHOptUnknown)] \
        == [(4, b"\x06")]
    assert bytes(d.payload) == pkt
