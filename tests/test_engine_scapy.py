"""The Cython engine against scapy's independent ESP implementation, both
ways, every algorithm, ESN on and off, every pad length, both backends."""
import pytest
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation

from fastpath.algorithms import KIND_GCM, KIND_NULL_HMAC, get
from fastpath.ref.ipv6 import ntop
from fastpath.verdicts import Reason, Verdict

from topo import ALGS, BACKENDS, CN, COA1, HA, MN1, SPI, inner, make_topo

SCAPY_CRYPT = {"aes128gcm16": "AES-GCM", "aes256gcm16": "AES-GCM"}
SCAPY_AUTH = {1: "HMAC-SHA1-96", 2: "SHA2-256-128"}


def scapy_sa(topo, spi, tunnel_src, tunnel_dst):
    a = get(topo.alg)
    enc, auth, salt = topo.keys[spi]
    kw = {"tunnel_header": IPv6(src=ntop(tunnel_src), dst=ntop(tunnel_dst))}
    if a.kind == KIND_GCM:
        kw.update(crypt_algo="AES-GCM", crypt_key=enc + salt)
    elif a.kind == KIND_NULL_HMAC:
        kw.update(crypt_algo="NULL", auth_algo=SCAPY_AUTH[a.hash], auth_key=auth)
    else:
        kw.update(crypt_algo="AES-CBC", crypt_key=enc, auth_algo=SCAPY_AUTH[a.hash], auth_key=auth)
    if topo.esn:
        kw.update(esn_en=True, esn=0)
    return SecurityAssociation(ESP, spi=spi, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("alg", ALGS)
def test_encap_decrypts_with_scapy(alg, esn, backend):
    topo = make_topo(alg, esn, backend)
    # inner sizes 40..71 cover every pad length for 16- and 4-byte alignment
    pkts = [inner(CN, MN1, 40 + k, fill=bytes([k])) for k in range(32)]
    got, want = topo.run("encap", pkts)
    sa = scapy_sa(topo, SPI[(MN1, "payload", "out")], HA, COA1)
    for k, (v, r, out) in enumerate(got):
        assert (v, r) == (Verdict.TO_WIRE, Reason.NONE)
        o = IPv6(out)
        assert (o.src, o.dst, o.nh, o.hlim) == (ntop(HA), ntop(COA1), 50, 64)
        assert o[ESP].seq == k + 1
        assert bytes(sa.decrypt(o)) == pkts[k]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("alg", ALGS)
def test_decap_opens_scapy_packets(alg, esn, backend):
    topo = make_topo(alg, esn, backend)
    sa = scapy_sa(topo, SPI[(MN1, "payload", "in")], COA1, HA)
    pkts = [inner(MN1, CN, 40 + k, fill=bytes([k])) for k in range(32)]
    wire = [bytes(sa.encrypt(IPv6(p), seq_num=k + 1)) for k, p in enumerate(pkts)]
    got, _ = topo.run("decap", wire)
    assert [(v, r) for v, r, _ in got] == [(Verdict.TO_HOME, Reason.NONE)] * 32
    assert [p for _, _, p in got] == pkts
    # the same packets again are replays
    got, _ = topo.run("decap", wire[:4])
    assert {r for _, r, _ in got} == {Reason.REPLAY}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_packet_too_big_checked_by_scapy(alg, backend):
    """An inner packet that cannot fit the tunnel is answered with an ICMPv6
    Packet Too Big that scapy parses, checksum included, with the largest
    inner size that does fit (RFC 2473 §7.1, RFC 4443 §3.2)."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig, in6_chksum
    topo = make_topo(alg, False, backend)
    big = inner(CN, MN1, 1500)
    got, _ = topo.run("encap", [big, inner(CN, MN1, 1280 + 100)])
    (v, r, out), (v2, r2, out2) = got
    assert (v, r) == (Verdict.TO_HOME, Reason.TOO_BIG)
    p = IPv6(out)
    assert (p.src, p.dst, p.nh) == (ntop(HA), ntop(CN), 58)
    ptb = p[ICMPv6PacketTooBig]
    assert len(out) == 1280 and bytes(ptb.payload) == big[:1280 - 48]
    a = get(alg)
    fits = ((1500 - 48 - a.iv_len - a.icv_len) // a.align) * a.align - 2
    assert ptb.mtu == fits
    assert in6_chksum(58, p, bytes(ptb)[:2] + b"\0\0" + bytes(ptb)[4:]) == ptb.cksum
    # a packet that does fit is tunnelled; the next size up is refused
    ok, _ = topo.run("encap", [inner(CN, MN1, fits), inner(CN, MN1, fits + 1)])
    assert ok[0][0] == Verdict.TO_WIRE and ok[1][1] == Reason.TOO_BIG
    assert (v2, r2) == (Verdict.TO_WIRE, Reason.NONE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_binding_update_only_on_the_binding_sa(alg, backend):
    """RFC 3776 §4.1: Binding Updates come on the binding SA. The same BU
    (scapy's MIPv6 and ESP layers, HAO = the node's HoA) sealed with the
    node's prefix-discovery SA is a `policy` drop in both engines and yields
    nothing the binding cache could apply; on the binding SA it is a BINDING."""
    import scapy.all  # noqa: F401  (every layer binding)
    from scapy.layers.inet6 import HAO, IPv6ExtHdrDestOpt, MIP6MH_BU
    topo = make_topo(alg, False, backend)
    # from the registered CoA: the HAO names a binding (RFC 6275 §9.3.1)
    bu = IPv6(bytes(IPv6(src=ntop(COA1), dst=ntop(HA))
                    / IPv6ExtHdrDestOpt(options=[HAO(hoa=ntop(MN1))])
                    / MIP6MH_BU(seq=7, flags="AH", mhtime=100)))
    sealed = {}
    for purpose in ("prefix-discovery", "binding"):
        sa = scapy_sa(topo, SPI[(MN1, purpose, "in")], HA, HA)
        sa.tunnel_header = None                       # transport mode
        sealed[purpose] = bytes(sa.encrypt(bu, seq_num=1))
    got, want = topo.run("decap", [sealed["prefix-discovery"]])
    assert [(v, r) for v, r, _ in got] == [(Verdict.DROP, Reason.POLICY)]
    assert [(v, r) for v, r, _ in want] == [(Verdict.DROP, Reason.POLICY)]
    assert topo.engine.take_bindings() == []
    got, want = topo.run("decap", [sealed["binding"]])
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want] == \
        [(Verdict.BINDING, Reason.NONE)]
    [(_, vb)] = topo.engine.take_bindings()
    assert vb.spi == SPI[(MN1, "binding", "in")] and vb.home_address == MN1


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_packet_too_big_where_rfc4443_forbids_an_error(backend):
    """RFC 4443 §2.4 (e): a packet too big for the tunnel is answered with a
    Packet Too Big unless it is itself an ICMPv6 error (also behind
    extension headers or in a first fragment) or its source names no single
    node (::, multicast). Built with scapy; both engines agree."""
    from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6ExtHdrDestOpt,
                                    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, UDP)
    from scapy.packet import Raw
    topo = make_topo("aes128gcm16", False, backend)
    fill = Raw(b"\x55" * 1450)

    def pkt(layers, src=ntop(CN)):
        return bytes(IPv6(src=src, dst=ntop(MN1)) / layers)

    answered = [pkt(IPv6ExtHdrDestOpt() / UDP() / fill),
                pkt(IPv6ExtHdrHopByHop() / ICMPv6EchoRequest() / fill),
                pkt(IPv6ExtHdrFragment(offset=0, m=1) / UDP() / fill),
                pkt(IPv6ExtHdrFragment(offset=100, m=0, nh=58) / Raw(b"\x01" * 1450))]
    silent = [pkt(IPv6ExtHdrDestOpt() / ICMPv6DestUnreach() / fill),
              pkt(IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / ICMPv6DestUnreach() / fill),
              pkt(IPv6ExtHdrFragment(offset=0, m=1) / ICMPv6DestUnreach() / fill),
              pkt(UDP() / fill, src="::"),
              pkt(UDP() / fill, src="ff02::1")]
    got, want = topo.run("encap", answered + silent)
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want]
    assert [(v, r) for v, r, _ in got] == \
        [(Verdict.TO_HOME, Reason.TOO_BIG)] * len(answered) + \
        [(Verdict.DROP, Reason.TOO_BIG)] * len(silent)
    assert [p for _, _, p in got[:len(answered)]] == [p for _, _, p in want[:len(answered)]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_home_test_init_only_on_the_return_routability_sa(backend):
    """RFC 3776 §4.2 at the home agent: the return-routability SA carries
    Home Test Init and nothing else; a node that has one may not send HoTI on
    its payload SA, nor in plain IPv6-in-IPv6. scapy builds and seals the
    packets; both engines agree."""
    import scapy.all  # noqa: F401
    from scapy.layers.inet6 import MIP6MH_HoTI, UDP
    from fastpath.core.engine import Engine
    from fastpath.core.sad import SADatabase
    from fastpath.ref.engine import RefEngine
    from topo import COA2, MN2, Topo, keys_for
    import random
    topo = make_topo("aes128-sha1", False, backend)
    hoti = IPv6(src=ntop(MN1), dst=ntop(CN)) / MIP6MH_HoTI(cookie=b"12345678")
    udp = IPv6(src=ntop(MN1), dst=ntop(CN)) / UDP(sport=1, dport=2) / b"payload"
    rr = scapy_sa(topo, SPI[(MN1, "return-routability", "in")], COA1, HA)
    pay = scapy_sa(topo, SPI[(MN1, "payload", "in")], COA1, HA)
    wire = [bytes(rr.encrypt(hoti, seq_num=1)), bytes(rr.encrypt(udp, seq_num=2)),
            bytes(pay.encrypt(hoti, seq_num=1)), bytes(pay.encrypt(udp, seq_num=2))]
    got, want = topo.run("decap", wire)
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want] == [
        (Verdict.TO_HOME, Reason.NONE), (Verdict.DROP, Reason.POLICY),
        (Verdict.DROP, Reason.POLICY), (Verdict.TO_HOME, Reason.NONE)]
    assert got[0][2] == bytes(hoti) and got[3][2] == bytes(udp)
    # plain IPv6-in-IPv6 from a node with binding and RR SAs but no payload SA
    sad = SADatabase(HA, 1500, sa_capacity=8, mn_capacity=2, ipsecmb=(backend == "ipsecmb"))
    ref = RefEngine(HA, 1500)
    rnd = random.Random(3)
    for e in (sad, ref):
        e.add_mobile_node(MN2, COA2)
    for spi, (purpose, d) in enumerate([("binding", "in"), ("binding", "out"),
                                        ("return-routability", "in"),
                                        ("return-routability", "out")], 0x500):
        enc, auth, salt = keys_for("aes128-sha1", rnd)
        sad.add_sa(MN2, purpose, d, spi, "aes128-sha1", enc, auth, salt, False, 64)
        ref.add_sa(purpose, d, spi, "aes128-sha1", enc, auth, salt, False, 64, hoa=MN2)
    plain = Topo("aes128-sha1", False, 64, sad, Engine(sad, backend), ref, {})
    tunnelled = [bytes(IPv6(src=ntop(COA2), dst=ntop(HA)) / IPv6(src=ntop(MN2), dst=ntop(CN))
                       / layer) for layer in (MIP6MH_HoTI(cookie=b"12345678"), UDP() / b"x")]
    got, want = plain.run("decap", tunnelled)
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want] == [
        (Verdict.DROP, Reason.POLICY), (Verdict.TO_HOME, Reason.NONE)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_extension_headers_only_skipped_where_rfc8200_allows(backend):
    """RFC 8200 §4 at the home agent's wire side: options with action bits
    00 (and Pad1/PadN, Router Alert) and routing headers with no segments
    left are skipped; a hop-by-hop header not first, an unknown option with
    other action bits (the Jumbo Payload option included), a routing header
    with segments left (type 0 or 2: the HA would have to act on it) are
    `malformed`. Headers built with scapy around a scapy-sealed ESP packet;
    both engines agree."""
    from scapy.layers.inet6 import (HBHOptUnknown, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop,
                                    IPv6ExtHdrRouting, Jumbo, RouterAlert)
    from scapy.packet import Raw
    topo = make_topo("aes128-sha1", False, backend)
    sa = scapy_sa(topo, SPI[(MN1, "payload", "in")], COA1, HA)
    seq = iter(range(1, 100))

    def wire(*ext):
        esp = bytes(IPv6(bytes(sa.encrypt(IPv6(inner(MN1, CN, 80)), seq_num=next(seq))))[ESP])
        layers = IPv6(src=ntop(COA1), dst=ntop(HA))
        for k, h in enumerate(ext):
            if k == len(ext) - 1:
                h.nh = 50
            layers = layers / h
        return bytes(layers / Raw(esp))

    unknown = lambda t: IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=t, optdata=b"ab")])  # noqa
    skipped = [wire(IPv6ExtHdrHopByHop(options=[RouterAlert()])),
               wire(unknown(0x1E)),
               wire(IPv6ExtHdrRouting(type=0, segleft=0, addresses=[ntop(CN)])),
               wire(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())]
    refused = [wire(IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()),
               wire(unknown(0x7E)), wire(unknown(0xBE)), wire(unknown(0xFE)),
               wire(IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=100)])),
               wire(IPv6ExtHdrRouting(type=0, segleft=1, addresses=[ntop(CN)])),
               wire(IPv6ExtHdrRouting(type=2, segleft=1, addresses=[ntop(MN1)]))]
    got, want = topo.run("decap", skipped + refused)
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want]
    assert [(v, r) for v, r, _ in got] == \
        [(Verdict.TO_HOME, Reason.NONE)] * len(skipped) + \
        [(Verdict.DROP, Reason.MALFORMED)] * len(refused)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binding_update_without_hao_only_from_the_home_address(backend):
    """A BU on the binding SA without a Home Address option is a node on its
    home link (source = HoA): BINDING in both engines; from any other source,
    `policy`."""
    import scapy.all  # noqa: F401
    from scapy.layers.inet6 import MIP6MH_BU
    topo = make_topo("aes128gcm16", False, backend)
    sa = scapy_sa(topo, SPI[(MN1, "binding", "in")], HA, HA)
    sa.tunnel_header = None
    wire = [bytes(sa.encrypt(IPv6(bytes(IPv6(src=src, dst=ntop(HA))
                                        / MIP6MH_BU(seq=4, flags="AH", mhtime=0))), seq_num=k))
            for k, src in ((1, ntop(COA1)), (2, ntop(MN1)))]
    got, want = topo.run("decap", wire)
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want] == [
        (Verdict.DROP, Reason.POLICY), (Verdict.BINDING, Reason.NONE)]
    assert got[1][2] == want[1][2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_traffic_class_and_ecn_across_the_tunnel(backend):
    """RFC 4301 §5.1.2.1 / RFC 6040 normal mode, with scapy on the other
    side. Encapsulation copies the inner traffic class (DSCP and ECN) into
    the outer header, ESP and plain alike. Decapsulation: congestion marked
    on the outer header (CE) becomes CE on an ECN-capable inner packet, and
    drops (`congestion`) a not-ECN-capable one; other outer marks leave the
    inner packet as it was. Both engines agree."""
    from scapy.packet import Raw
    from topo import COA2, MN2
    topo = make_topo("aes128gcm16", False, backend)
    ef_ect0 = 0xB8 | 0x2                      # DSCP EF, ECT(0)

    def pkt(src, dst, tc):
        return bytes(IPv6(src=ntop(src), dst=ntop(dst), tc=tc, nh=17) / (b"\x00" * 40))

    got, want = topo.run("encap", [pkt(CN, MN1, ef_ect0), pkt(CN, MN2, ef_ect0)])
    assert [g[2] for g in got] == [w[2] for w in want]
    esp_out, plain_out = IPv6(got[0][2]), IPv6(got[1][2])
    assert (esp_out.tc, esp_out.fl, esp_out.nh) == (ef_ect0, 0, 50)
    assert (plain_out.tc, plain_out.fl, plain_out.nh) == (ef_ect0, 0, 41)
    sa_out = scapy_sa(topo, SPI[(MN1, "payload", "out")], HA, COA1)
    assert bytes(sa_out.decrypt(esp_out)) == pkt(CN, MN1, ef_ect0)

    sa_in = scapy_sa(topo, SPI[(MN1, "payload", "in")], COA1, HA)
    seq = iter(range(1, 10))

    def esp_in(outer_tc, inner_tc):
        sealed = IPv6(bytes(sa_in.encrypt(IPv6(pkt(MN1, CN, inner_tc)), seq_num=next(seq))))
        sealed.tc = outer_tc
        return bytes(sealed)

    def plain_in(outer_tc, inner_tc):
        return bytes(IPv6(src=ntop(COA2), dst=ntop(HA), tc=outer_tc, nh=41) /
                     Raw(pkt(MN2, CN, inner_tc)))

    wire = [esp_in(0x03, 0xB8 | 0x2), esp_in(0x03, 0xB8), esp_in(0x01, 0xB8),
            plain_in(0x03, 0x1), plain_in(0x03, 0x0), plain_in(0x02, 0x1)]
    got, want = topo.run("decap", wire)
    assert [(v, r, p) for v, r, p in got] == [(v, r, p) for v, r, p in want]
    assert [(v, r) for v, r, _ in got] == [
        (Verdict.TO_HOME, Reason.NONE), (Verdict.DROP, Reason.CONGESTION),
        (Verdict.TO_HOME, Reason.NONE), (Verdict.TO_HOME, Reason.NONE),
        (Verdict.DROP, Reason.CONGESTION), (Verdict.TO_HOME, Reason.NONE)]
    assert [IPv6(got[k][2]).tc for k in (0, 2, 3, 5)] == [0xB8 | 0x3, 0xB8, 0x3, 0x1]
    assert IPv6(got[0][2]).src == ntop(MN1) and IPv6(got[3][2]).src == ntop(MN2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_a_lowered_path_mtu_shapes_packet_too_big_and_fragmenting(alg, backend):
    """After a Packet Too Big lowered the path MTU toward COA1 to 1300
    (SADatabase.set_path_mtu, the control thread's doing): an inner packet
    that no longer fits gets a Packet Too Big (parsed by scapy) whose MTU
    fits 1300; one of at most 1280 bytes is tunnelled with the note FRAGMENT
    (the worker cuts it at 1280); MN2's CoA is untouched; the address never
    changes. Both engines agree. Back at 1500, the notes go."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig
    from topo import COA2, MN2
    topo = make_topo(alg, False, backend)
    assert topo.sad.set_path_mtu(COA1, 1300) == 1
    assert topo.ref.set_path_mtu(COA1, 1300) == 1
    assert topo.sad.path_mtu(MN1) == 1300 and topo.sad.path_mtu(MN2) == 1500
    a = get(alg)
    fits = ((1300 - 48 - a.iv_len - a.icv_len) // a.align) * a.align - 2
    pkts = [inner(CN, MN1, fits), inner(CN, MN1, fits + 1), inner(CN, MN1, 1400),
            inner(CN, MN2, 1400)]
    got, want = topo.run("encap", pkts)
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want]
    assert [(v, r) for v, r, _ in got] == [
        (Verdict.TO_WIRE, Reason.NONE), (Verdict.TO_WIRE, Reason.FRAGMENT),
        (Verdict.TO_HOME, Reason.TOO_BIG), (Verdict.TO_WIRE, Reason.NONE)]
    assert IPv6(got[1][2]).dst == ntop(COA1) and IPv6(got[3][2]).dst == ntop(COA2)
    ptb = IPv6(got[2][2])[ICMPv6PacketTooBig]
    # what fits 1300 is below 1280: the sender is told 1280 (the IPv6 minimum),
    # and packets up to that leave fragmented
    assert fits < 1280 and ptb.mtu == 1280 and IPv6(got[2][2]).dst == ntop(CN)
    assert topo.sad.care_of_address(MN1) == COA1
    assert topo.sad.set_path_mtu(COA1, 9000) == 1 and topo.sad.path_mtu(MN1) == 1500
    topo.ref.set_path_mtu(COA1, 9000)
    got, want = topo.run("encap", [inner(CN, MN1, fits + 1)])
    assert [(v, r) for v, r, _ in got] == [(v, r) for v, r, _ in want] == \
        [(Verdict.TO_WIRE, Reason.NONE)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tunnel_encapsulation_limit(backend):
    """RFC 2473 §4.1.1, §5.1 at a tunnel entry point, built and read by
    scapy: a packet inside another tunnel, whose header carries a Tunnel
    Encapsulation Limit (option 4 in its destination options), enters our
    plain tunnel with the limit one lower in a destination-options header of
    ours; at 0 it is refused with a Parameter Problem (code 0) pointing at
    the limit, and without an error about an ICMPv6 error. The limit costs 8
    bytes of MTU (a Packet Too Big says so). ESP tunnel mode refuses a limit
    of 0 too, and carries a packet with a higher one as it is. The mobile
    node's side skips the option when it decapsulates. Both engines agree
    byte for byte."""
    from scapy.layers.inet6 import (UDP, HBHOptUnknown, ICMPv6EchoReply, ICMPv6PacketTooBig,
                                    ICMPv6ParamProblem, IPv6ExtHdrDestOpt, PadN, in6_chksum)
    from topo import COA2, MN2

    def tunnelled(limit, upper=None, size=100, options=()):
        # IPv6(CN -> MN2) . DestOpt(..., TEL) . IPv6(...) as another tunnel's exit left it
        carried = IPv6(src="2001:db8:9::1", dst=ntop(MN2)) / (upper or UDP() / (b"x" * size))
        opts = list(options) + [HBHOptUnknown(otype=4, optdata=bytes([limit]))]
        return bytes(IPv6(src=ntop(CN), dst=ntop(MN2)) / IPv6ExtHdrDestOpt(options=opts)
                     / carried)

    topo = make_topo("aes128gcm16", False, backend)
    tel3 = tunnelled(3, options=[PadN(optdata=b"\0\0")])
    tel0 = tunnelled(0)
    about_error = bytes(IPv6(src=ntop(CN), dst=ntop(MN2))
                        / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=4, optdata=b"\0")])
                        / ICMPv6PacketTooBig(mtu=1280) / (b"y" * 60))
    got, want = topo.run("encap", [tel3, tel0, about_error])
    assert got == want
    assert [(v, r) for v, r, _ in got] == [
        (Verdict.TO_WIRE, Reason.NONE), (Verdict.TO_HOME, Reason.ENCAP_LIMIT),
        (Verdict.DROP, Reason.ENCAP_LIMIT)]
    o = IPv6(got[0][2])
    assert (o.src, o.dst, o.nh, o.plen) == (ntop(HA), ntop(COA2), 60, 8 + len(tel3))
    # next header 41, length 0; TEL (type 4, length 1) = 2; PadN with 1 zero byte
    assert got[0][2][40:48] == bytes([41, 0, 4, 1, 2, 1, 1, 0])
    d = o[IPv6ExtHdrDestOpt]
    assert d.nh == 41 and len(bytes(d)) - len(bytes(d.payload)) == 8
    assert [(x.otype, bytes(x.optdata)) for x in d.options if x.otype == 4] == [(4, b"\x02")]
    assert bytes(d.payload) == tel3                       # the packet itself, unchanged
    pp = IPv6(got[1][2])
    assert (pp.src, pp.dst, pp.nh) == (ntop(HA), ntop(CN), 58)
    err = pp[ICMPv6ParamProblem]
    assert (err.code, err.ptr) == (0, 40 + 2 + 2) and tel0[err.ptr] == 0
    assert bytes(err.payload) == tel0
    raw_icmp = got[1][2][40:]
    assert in6_chksum(58, pp, raw_icmp[:2] + b"\0\0" + raw_icmp[4:]) == err.cksum
    # The limit's 8 bytes count against the MTU: 1452 fits plain, not with it.
    fits_plain = tunnelled(5, size=1500 - 40 - 40 - 8 - 40 - 8)
    assert len(fits_plain) == 1500 - 40
    got, want = topo.run("encap", [fits_plain])
    assert got == want and got[0][:2] == (Verdict.TO_HOME, Reason.TOO_BIG)
    assert IPv6(got[0][2])[ICMPv6PacketTooBig].mtu == 1500 - 48
    # ESP tunnel mode (MN1 has a payload SA): a limit of 0 is refused the
    # same way; a limit of 1 enters, and is not carried (RFC 3776 §3.4's
    # outer header): the packet is the ESP payload as it was.
    def to_mn1(limit):
        return bytes(IPv6(src=ntop(CN), dst=ntop(MN1))
                     / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=4, optdata=bytes([limit]))])
                     / IPv6(src=ntop(CN), dst=ntop(MN1)) / ICMPv6EchoReply())
    got, want = topo.run("encap", [to_mn1(0), to_mn1(1)])
    assert got == want
    assert [(v, r) for v, r, _ in got] == [(Verdict.TO_HOME, Reason.ENCAP_LIMIT),
                                           (Verdict.TO_WIRE, Reason.NONE)]
    assert IPv6(got[0][2])[ICMPv6ParamProblem].ptr == 44
    assert IPv6(got[1][2]).nh == 50
    # Inbound, a plain tunnel packet with a limit in its tunnel header opens.
    up = bytes(IPv6(src=ntop(MN2), dst=ntop(CN)) / UDP() / b"z")
    wire = bytes(IPv6(src=ntop(COA2), dst=ntop(HA))
                 / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=4, optdata=b"\x04")])
                 / IPv6(up))
    got, want = topo.run("decap", [wire])
    assert got == want == [(Verdict.TO_HOME, Reason.NONE, up)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tunnel_encapsulation_limit_is_found_left_to_right(backend):
    """RFC 2473 §4.1.1: the extension headers are examined in order to find
    the limit - behind a routing header, an AH, a first (or atomic) fragment's
    header, Pad1s, and a destination-options header whose options run past
    its end (that header's options end there, the search goes on). A later
    fragment's chain is not in it: no limit, tunnelled. The limit that is
    found decides: 255 goes on as 254, 1 as 0, 0 gets a Parameter Problem
    whose pointer is the limit's offset - none when the packet is an ICMPv6
    error, which RFC 4443 §2.4(e) finds behind a first fragment's header and
    the destination options after it too. Both engines agree byte for byte."""
    from scapy.layers.inet6 import (UDP, HBHOptUnknown, ICMPv6PacketTooBig, ICMPv6ParamProblem,
                                    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrRouting,
                                    Pad1)
    from scapy.packet import Raw

    from topo import COA2, MN2

    def tel(limit, pad1=0):
        return IPv6ExtHdrDestOpt(options=[Pad1()] * pad1
                                 + [HBHOptUnknown(otype=4, optdata=bytes([limit]))])

    carried = IPv6(src="2001:db8:9::1", dst=ntop(MN2)) / UDP() / (b"x" * 40)
    ah = bytes([60, 4, 0, 0]) + bytes(range(1, 21))        # AH, 24 bytes (ICV 12)
    broken = bytes([60, 0, 1, 9, 0, 0, 0, 0])              # PadN claiming 9 bytes of 6
    cases = {                 # packet -> (verdict, reason, offset of the limit or outer TEL)
        "routing": IPv6ExtHdrRouting(type=0, segleft=0, addresses=[]) / tel(0),
        "ah": IPv6(nh=51) / Raw(ah + bytes(tel(0) / carried)),
        "first fragment": IPv6ExtHdrFragment(offset=0, m=1, id=5) / tel(0),
        "atomic fragment": IPv6ExtHdrFragment(offset=0, m=0, id=6) / tel(0),
        "pad1": tel(0, pad1=3),
        "after a broken header": IPv6(nh=60) / Raw(broken + bytes(tel(0) / carried)),
        "255": tel(255),
        "1": tel(1),
        "later fragment": IPv6ExtHdrFragment(offset=10, m=0, id=7) / tel(0),
        "error in a first fragment": IPv6ExtHdrFragment(offset=0, m=1, id=8) / tel(0)
        / ICMPv6PacketTooBig(mtu=1280) / (b"y" * 60),
    }
    pkts = []
    for name, ext in cases.items():
        if isinstance(ext, IPv6):          # raw bytes after the fixed header
            pkts.append(bytes(IPv6(src=ntop(CN), dst=ntop(MN2), nh=ext.nh) / ext.payload))
        else:
            pkts.append(bytes(IPv6(src=ntop(CN), dst=ntop(MN2)) / ext / carried))
    topo = make_topo("aes128gcm16", False, backend)
    got, want = topo.run("encap", pkts)
    assert got == want
    by_name = dict(zip(cases, got))
    assert by_name["error in a first fragment"][:2] == (Verdict.DROP, Reason.ENCAP_LIMIT)
    for name in ("routing", "ah", "first fragment", "atomic fragment", "pad1",
                 "after a broken header"):
        v, r, out = by_name[name]
        assert (name, v, r) == (name, Verdict.TO_HOME, Reason.ENCAP_LIMIT)
        pkt = pkts[list(cases).index(name)]
        ptr = IPv6(out)[ICMPv6ParamProblem].ptr
        assert pkt[ptr - 2:ptr] == bytes([4, 1]) and pkt[ptr] == 0, name
    for name, carried_on in (("255", 254), ("1", 0)):
        v, r, out = by_name[name]
        assert (v, r, out[6], out[40:48]) == (Verdict.TO_WIRE, Reason.NONE, 60,
                                              bytes([41, 0, 4, 1, carried_on, 1, 1, 0]))
    v, r, out = by_name["later fragment"]
    assert (v, r, out[6]) == (Verdict.TO_WIRE, Reason.NONE, 41)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_limit_leaves_the_encap_fast_path(backend):
    """The encap fast path (a run of packets to one node with a payload SA
    and no return-routability SA) must not let a Tunnel Encapsulation Limit
    of 0 through: amid ordinary packets to the same node, it is refused with
    a Parameter Problem, and a limit of 1 enters the ESP tunnel. Both
    engines agree byte for byte."""
    from scapy.layers.inet6 import HBHOptUnknown, ICMPv6EchoReply, ICMPv6ParamProblem, IPv6ExtHdrDestOpt

    from topo import MN3, addr
    topo = make_topo("aes128gcm16", False, backend, mn3_coa=addr("2001:db8:6::30"))

    def limited(limit):
        return bytes(IPv6(src=ntop(CN), dst=ntop(MN3))
                     / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=4, optdata=bytes([limit]))])
                     / IPv6(src=ntop(CN), dst=ntop(MN3)) / ICMPv6EchoReply())
    pkts = [inner(CN, MN3, 100), inner(CN, MN3, 120), limited(0), inner(CN, MN3, 140),
            limited(1), inner(CN, MN3, 160)]
    got, want = topo.run("encap", pkts)
    assert got == want
    assert [(v, r) for v, r, _ in got] == [(Verdict.TO_WIRE, Reason.NONE)] * 2 + [
        (Verdict.TO_HOME, Reason.ENCAP_LIMIT)] + [(Verdict.TO_WIRE, Reason.NONE)] * 3
    assert IPv6(got[2][2])[ICMPv6ParamProblem].ptr == 44


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_tunnel_notes_fragment_below_a_lowered_path_mtu(backend):
    """A plain IPv6-in-IPv6 packet of at most 1280 bytes over a path MTU a
    Packet Too Big lowered leaves with the note FRAGMENT, as ESP ones do (the
    worker cuts it at 1280), and is counted as no drop."""
    from topo import COA2, MN2
    topo = make_topo("aes128gcm16", False, backend)
    assert topo.sad.set_path_mtu(COA2, 1280) == 1 and topo.ref.set_path_mtu(COA2, 1280) == 1
    got, want = topo.run("encap", [inner(CN, MN2, 1280 - 40), inner(CN, MN2, 1280 - 39)])
    assert got == want
    assert [(v, r) for v, r, _ in got] == [(Verdict.TO_WIRE, Reason.NONE),
                                           (Verdict.TO_WIRE, Reason.FRAGMENT)]
    assert not any(topo.engine.counters()["drops"].values())
