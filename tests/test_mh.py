"""fastpath.mh against RFC 6275 §6.1/§6.2/§9.2 and scapy's MIPv6 layers."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet6 import (
    HAO, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, MIP6MH_BA, MIP6MH_BE,
    MIP6MH_BRR, MIP6MH_BU, MIP6MH_Generic, MIP6MH_HoTI, MIP6OptAltCoA,
    MIP6OptBindingAuthData, MIP6OptBRAdvice, MIP6OptNonceIndices,
    MIP6OptUnknown, PadN as ScapyPadN, Pad1 as ScapyPad1, bastatus,
    in6_chksum)
from scapy.packet import Raw, raw

from fastpath import mh
from fastpath.mh import (
    AlternateCareOfAddress, BAStatus, BEStatus, BindingAck,
    BindingAuthorizationData, BindingError, BindingRefreshAdvice,
    BindingUpdate, MHError, NonceIndices, Pad1, PadN, RawMessage,
    UnknownOption, alternate_coa, build, ip6, ip6_str, parse, seq_newer)

HA = "2001:db8:0:1::1"
HOA = "2001:db8:0:1::100"
COA = "2001:db8:ffff::5"
ALT = "2001:db8:eeee::7"


def strip(msg):
    """`msg` as parse() returns it by default: without Pad1/PadN options."""
    if isinstance(msg, RawMessage):
        return msg
    return replace(msg, options=tuple(o for o in msg.options if not isinstance(o, (Pad1, PadN))))


def scapy_mh(pkt, layer) -> bytes:
    """The bytes scapy produces for the MH layer (checksum included)."""
    return raw(IPv6(raw(pkt))[layer])


def reseal(data: bytes, src: str, dst: str) -> bytes:
    """`data` with the checksum scapy would give it, to provoke later checks."""
    zeroed = data[:4] + b"\0\0" + data[6:]
    carrier = IPv6(src=src, dst=dst, nh=135) / Raw(zeroed)
    value = in6_chksum(135, carrier[Raw], zeroed)
    return data[:4] + value.to_bytes(2, "big") + data[6:]


def dissect(data: bytes, src: str, dst: str):
    """scapy's reading of our bytes inside a plain IPv6 header."""
    return IPv6(raw(IPv6(src=src, dst=dst, nh=135, plen=len(data))) + data)


# ------------------------------------------------------------ round trips

ALL_OPTIONS = (
    Pad1(), PadN(5), BindingRefreshAdvice(300), AlternateCareOfAddress(ip6(ALT)),
    NonceIndices(0x1234, 0xBEEF), BindingAuthorizationData(bytes(range(12))),
    UnknownOption(42, b"xyz"), UnknownOption(200),
)

MESSAGES = [
    BindingUpdate(1, 0),
    BindingUpdate(0xFFFF, 0xFFFF, ack=True, home=True, link_local=True,
                  key_mgmt=True, extra_flags=0xABC),
    BindingUpdate(9, 150, ack=True, home=True,
                  options=(AlternateCareOfAddress(ip6(ALT)),)),
    BindingUpdate(9, 150, options=ALL_OPTIONS),
    BindingAck(BAStatus.BINDING_UPDATE_ACCEPTED, 9, 150),
    BindingAck(BAStatus.NOT_HOME_SUBNET, 0xFFFF, 0, key_mgmt=True, extra_flags=0x55),
    BindingAck(0, 1, 2, options=(BindingRefreshAdvice(75),)),
    BindingAck(255, 1, 2, options=ALL_OPTIONS),
    BindingError(BEStatus.UNKNOWN_BINDING_FOR_HOME_ADDRESS_DESTINATION_OPTION, ip6(HOA)),
    BindingError(BEStatus.UNRECOGNIZED_MH_TYPE_VALUE),
    BindingError(2, ip6(HOA), options=ALL_OPTIONS),
    RawMessage(0),                                    # Binding Refresh Request
    RawMessage(1, bytes(2) + b"cookie!!"),            # Home Test Init
    RawMessage(4, bytes(range(18))),                  # Care-of Test
]


@pytest.mark.parametrize("msg", MESSAGES, ids=repr)
def test_round_trip(msg):
    src, dst = ip6(HOA), ip6(HA)
    data = build(msg, src, dst)
    assert len(data) % 8 == 0
    assert data[0] == 59 and data[1] == len(data) // 8 - 1 and data[2] == msg.mh_type
    assert parse(data, src, dst) == strip(msg)
    # With its padding kept, a parsed message rebuilds to the same octets.
    assert build(parse(data, src, dst, keep_padding=True), src, dst) == data


def test_option_alignment():
    opts = (NonceIndices(1, 2), BindingAuthorizationData(b"a" * 12),
            AlternateCareOfAddress(ip6(ALT)), BindingRefreshAdvice(1),
            UnknownOption(99, b"q"), AlternateCareOfAddress(ip6(ALT)))
    data = build(BindingUpdate(1, 1, options=opts), ip6(HOA), ip6(HA))
    offset, starts = 12, {}
    for option in parse(data, ip6(HOA), ip6(HA), keep_padding=True).options:
        starts.setdefault(type(option), []).append(offset)
        offset += len(mh._encode_option(option))
    assert offset == len(data)
    assert all(o % 8 == 6 for o in starts[AlternateCareOfAddress])
    assert all(o % 8 == 2 for o in starts[BindingAuthorizationData])
    assert all(o % 2 == 0 for o in starts[NonceIndices] + starts[BindingRefreshAdvice])


def test_explicit_padding_is_kept():
    opts = (Pad1(), PadN(3), Pad1())
    data = build(BindingError(1, options=opts), ip6(HA), ip6(COA))
    assert data[24:] == b"\x00\x01\x01\x00\x00" + b"\x01\x01\x00"  # ours, then PadN(3)
    assert len(data) == 32
    back = parse(data, ip6(HA), ip6(COA), keep_padding=True)
    assert back.options == opts + (PadN(3),)
    assert parse(data, ip6(HA), ip6(COA)).options == ()


def test_trailing_bytes_after_header_len_are_ignored():
    data = build(BindingUpdate(5, 5), ip6(HOA), ip6(HA))
    assert parse(data + b"junk", ip6(HOA), ip6(HA)) == parse(data, ip6(HOA), ip6(HA))


def test_helpers():
    bu = BindingUpdate(1, 3, options=(BindingRefreshAdvice(1), AlternateCareOfAddress(ip6(ALT))))
    assert alternate_coa(bu) == ip6(ALT)
    assert alternate_coa(BindingUpdate(1, 3)) is None
    assert bu.lifetime_seconds == 12
    assert BindingRefreshAdvice(5).interval_seconds == 20
    assert ip6_str(ip6("2001:DB8::0:1")) == "2001:db8::1"
    assert BindingAck(1, 0, 0).accepted and not BindingAck(128, 0, 0).accepted


def test_constructor_validation():
    with pytest.raises(ValueError):
        BindingUpdate(65536, 0)
    with pytest.raises(ValueError):
        BindingUpdate(0, 0, extra_flags=0x1000)
    with pytest.raises(ValueError):
        AlternateCareOfAddress(b"short")
    with pytest.raises(ValueError):
        UnknownOption(3, bytes(16))          # that type has its own class
    with pytest.raises(ValueError):
        BindingUpdate(0, 0, options=("not an option",))
    with pytest.raises(ValueError):
        build(RawMessage(1, bytes(3000)), ip6(HA), ip6(COA))


def test_seq_newer_rfc_example():
    # §9.5.1: after 15, 0..15 and 32783..65535 are not newer.
    newer = [n for n in range(65536) if seq_newer(n, 15)]
    assert newer == list(range(16, 32783))
    assert seq_newer(0, 65535) and not seq_newer(65535, 0)
    assert seq_newer(32767, 0) and not seq_newer(32768, 0)


def test_status_names_match_iana_via_scapy():
    for status in BAStatus:
        if status == BAStatus.INVALID_CARE_OF_ADDRESS:
            continue  # 174: scapy's table stops at 150
        assert status.name.replace("_", " ") == bastatus[status].upper().replace("-", " ")


# ------------------------------------------------------------ scapy: ours == scapy's bytes

def bu_word_for_scapy(word: int) -> dict:
    # scapy splits the 16 flag bits into a 7-bit field (A H L K M R P) and 9 reserved bits.
    return {"flags": word >> 9, "reserved": word & 0x1FF}


SCAPY_PAIRS = [
    (BindingUpdate(7, 100, ack=True, home=True, key_mgmt=True),
     MIP6MH_BU(seq=7, mhtime=100)),
    (BindingUpdate(0xFFFF, 1, extra_flags=0x0FFF, ack=True),
     MIP6MH_BU(seq=0xFFFF, mhtime=1, **bu_word_for_scapy(0x8FFF))),
    (BindingUpdate(3, 0, link_local=True, options=(AlternateCareOfAddress(ip6(ALT)),)),
     MIP6MH_BU(seq=3, mhtime=0, flags="L", options=[MIP6OptAltCoA(acoa=ALT)])),
    (BindingUpdate(3, 9, options=(NonceIndices(5, 6), BindingAuthorizationData(b"A" * 12))),
     MIP6MH_BU(seq=3, mhtime=9, flags=0, options=[
         MIP6OptNonceIndices(olen=4, hni=5, coni=6),
         MIP6OptBindingAuthData(olen=12, authenticator=int.from_bytes(b"A" * 12, "big"))])),
    (BindingUpdate(3, 9, options=(Pad1(), PadN(4), UnknownOption(77, b"hi"),
                                  AlternateCareOfAddress(ip6(ALT)))),
     MIP6MH_BU(seq=3, mhtime=9, flags=0, options=[
         ScapyPad1(), ScapyPadN(optdata=b"\0\0"), MIP6OptUnknown(otype=77, odata=b"hi"),
         MIP6OptAltCoA(acoa=ALT)])),
    (BindingAck(0, 7, 100), MIP6MH_BA(status=0, flags=0, seq=7, mhtime=100)),
    (BindingAck(BAStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW, 8, 0, key_mgmt=True, extra_flags=0x21),
     MIP6MH_BA(status=135, flags="KP", res2=0x01, seq=8, mhtime=0)),
    (BindingAck(0, 7, 100, options=(BindingRefreshAdvice(50),)),
     MIP6MH_BA(status=0, flags=0, seq=7, mhtime=100, options=[MIP6OptBRAdvice(rinter=50)])),
    (BindingError(1, ip6(HOA)), MIP6MH_BE(status=1, ha=HOA)),
    (BindingError(2), MIP6MH_BE(status=2)),
    (RawMessage(0), MIP6MH_BRR()),
    (RawMessage(1, bytes(2) + b"12345678"), MIP6MH_HoTI(cookie=b"12345678")),
]


@pytest.mark.parametrize("ours,theirs", SCAPY_PAIRS, ids=lambda x: repr(x)[:60])
def test_build_matches_scapy(ours, theirs):
    pkt = IPv6(src=HA, dst=COA) / theirs
    assert build(ours, ip6(HA), ip6(COA)) == scapy_mh(pkt, type(theirs))


@pytest.mark.parametrize("ours,theirs", SCAPY_PAIRS, ids=lambda x: repr(x)[:60])
def test_parse_scapy_built(ours, theirs):
    data = scapy_mh(IPv6(src=COA, dst=HA) / theirs, type(theirs))
    assert parse(data, ip6(COA), ip6(HA)) == strip(ours)
    assert build(parse(data, ip6(COA), ip6(HA), keep_padding=True), ip6(COA), ip6(HA)) == data


def test_bu_flag_bits_against_scapy():
    for name, kw in [("A", {"ack": True}), ("H", {"home": True}),
                     ("L", {"link_local": True}), ("K", {"key_mgmt": True}),
                     ("M", {"extra_flags": 0x800}), ("R", {"extra_flags": 0x400}),
                     ("P", {"extra_flags": 0x200})]:
        ours = build(BindingUpdate(1, 1, **kw), ip6(HA), ip6(COA))
        theirs = scapy_mh(IPv6(src=HA, dst=COA) / MIP6MH_BU(seq=1, mhtime=1, flags=name), MIP6MH_BU)
        assert ours == theirs, name


def test_checksum_uses_home_address_with_hao():
    # BU from the care-of address carrying a HAO: scapy checksums with the HoA.
    bu = BindingUpdate(42, 100, ack=True, home=True, key_mgmt=True)
    pkt = (IPv6(src=COA, dst=HA) / IPv6ExtHdrDestOpt(options=[HAO(hoa=HOA)])
           / MIP6MH_BU(seq=42, mhtime=100))
    data = raw(pkt[MIP6MH_BU])
    assert build(bu, ip6(HOA), ip6(HA)) == data
    assert parse(data, ip6(HOA), ip6(HA)) == bu
    with pytest.raises(MHError) as err:
        parse(data, ip6(COA), ip6(HA))              # the outer source is wrong here
    assert err.value.action == "discard"


def test_checksum_uses_final_destination_with_rh2():
    # BA to a mobile node away from home: type 2 routing header carries the HoA.
    ba = BindingAck(0, 42, 100)
    pkt = (IPv6(src=HA, dst=COA) / IPv6ExtHdrRouting(type=2, addresses=[HOA], segleft=1)
           / MIP6MH_BA(flags=0, seq=42, mhtime=100))
    assert build(ba, ip6(HA), ip6(HOA)) == raw(pkt[MIP6MH_BA])


# ------------------------------------------------------------ scapy dissects ours

def test_scapy_dissects_our_bu():
    bu = BindingUpdate(0x1234, 0x0102, ack=True, home=True, extra_flags=0x801,
                       options=(BindingRefreshAdvice(3), AlternateCareOfAddress(ip6(ALT))))
    data = build(bu, ip6(HOA), ip6(HA))
    p = dissect(data, HOA, HA)[MIP6MH_BU]
    assert (p.nh, p.len, p.mhtype) == (59, len(data) // 8 - 1, 5)
    assert (p.seq, p.mhtime) == (0x1234, 0x0102)
    assert set(str(p.flags)) == set("AHM") and p.reserved == 1
    acoa = [o for o in p.options if isinstance(o, MIP6OptAltCoA)]
    bra = [o for o in p.options if isinstance(o, MIP6OptBRAdvice)]
    assert [o.acoa for o in acoa] == [ALT] and [o.rinter for o in bra] == [3]
    assert in6_chksum(135, p, data[:4] + b"\0\0" + data[6:]) == p.cksum


def test_scapy_dissects_our_ba():
    ba = BindingAck(BAStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE, 77, 3, key_mgmt=True,
                    options=(BindingRefreshAdvice(60),))
    data = build(ba, ip6(HA), ip6(HOA))
    p = dissect(data, HA, HOA)[MIP6MH_BA]
    assert (p.status, p.seq, p.mhtime, str(p.flags), p.res2) == (133, 77, 3, "K", 0)
    assert [o.rinter for o in p.options if isinstance(o, MIP6OptBRAdvice)] == [60]
    assert in6_chksum(135, p, data[:4] + b"\0\0" + data[6:]) == p.cksum


def test_scapy_dissects_our_be():
    data = build(BindingError(1, ip6(HOA)), ip6(HA), ip6(COA))
    p = dissect(data, HA, COA)[MIP6MH_BE]
    assert (p.mhtype, p.len, p.status, p.ha) == (7, 2, 1, HOA)
    assert in6_chksum(135, p, data[:4] + b"\0\0" + data[6:]) == p.cksum


def test_scapy_dissects_our_unknown_type():
    data = build(RawMessage(42, b"\x00\x00abcdef"), ip6(HA), ip6(COA))
    p = dissect(data, HA, COA)[MIP6MH_Generic]
    assert p.mhtype == 42 and p.len == 1
    # scapy's Generic reads 8*len-6 octets of message; the rest lands in Raw.
    assert raw(p) == data


# ------------------------------------------------------------ §9.2 error paths

def expect(data, action, src=COA, dst=HA, **kw):
    with pytest.raises(MHError) as err:
        parse(data, ip6(src), ip6(dst), **kw)
    assert err.value.action == action, err.value
    return err.value


def test_payload_proto_not_none_is_parameter_problem():
    data = scapy_mh(IPv6(src=COA, dst=HA) / MIP6MH_BU(nh=6, seq=1), MIP6MH_BU)
    err = expect(data, "param_problem")
    assert (err.code, err.pointer) == (0, 0)


def test_header_len_too_short_is_parameter_problem():
    good = build(BindingUpdate(1, 1), ip6(COA), ip6(HA))
    data = reseal(good[:1] + b"\x00" + good[2:8], COA, HA)   # Header Len 0: 8 octets
    err = expect(data, "param_problem")
    assert (err.code, err.pointer) == (0, 1)
    be = build(BindingError(1), ip6(COA), ip6(HA))
    data = reseal(be[:1] + b"\x01" + be[2:16], COA, HA)      # BE needs 24 octets
    assert expect(data, "param_problem").pointer == 1


def test_bad_checksum_is_silently_discarded():
    data = bytearray(build(BindingUpdate(1, 1), ip6(COA), ip6(HA)))
    data[7] ^= 0x40
    expect(bytes(data), "discard")
    assert parse(bytes(data), ip6(COA), ip6(HA), verify_checksum=False).sequence == 0x41


def test_unknown_mh_type_is_binding_error():
    data = scapy_mh(IPv6(src=COA, dst=HA) / MIP6MH_Generic(mhtype=42, msg=bytes(10)),
                    MIP6MH_Generic)
    err = expect(data, "binding_error")
    assert err.status == BEStatus.UNRECOGNIZED_MH_TYPE_VALUE == 2
    # §9.2 checks the type before Payload Proto.
    data = reseal(b"\x06" + data[1:], COA, HA)
    assert expect(data, "binding_error").status == 2


def test_option_running_past_the_end_is_discarded():
    good = build(BindingUpdate(1, 1), ip6(COA), ip6(HA))
    data = reseal(good[:12] + b"\x03\x10\x00\x00", COA, HA)  # Alternate CoA cut short
    err = expect(data, "discard")
    assert err.pointer == 12
    data = reseal(good[:12] + b"\x01\x01\x00\x05", COA, HA)  # last option has no length
    assert expect(data, "discard").pointer == 15


def test_known_option_with_wrong_length_is_discarded():
    good = build(BindingAck(0, 1, 1), ip6(COA), ip6(HA))
    data = reseal(good[:12] + b"\x02\x01\x00\x00", COA, HA)  # Refresh Advice of 1 octet
    assert expect(data, "discard").pointer == 12


def test_unknown_option_is_skipped():
    good = build(BindingUpdate(1, 1), ip6(COA), ip6(HA))
    data = reseal(good[:12] + b"\xc8\x02\xaa\xbb", COA, HA)
    assert parse(data, ip6(COA), ip6(HA)).options == (UnknownOption(200, b"\xaa\xbb"),)


def test_truncated_input_is_discarded():
    data = build(BindingError(1), ip6(COA), ip6(HA))
    expect(data[:16], "discard")           # Header Len promises 24
    expect(data[:5], "discard")            # not even a header


def test_order_checksum_before_anything_else():
    data = scapy_mh(IPv6(src=COA, dst=HA) / MIP6MH_Generic(mhtype=42, msg=bytes(10)),
                    MIP6MH_Generic)
    expect(b"\x06" + data[1:], "discard")  # bad checksum wins over type and proto


# ------------------------------------------------------------ hypothesis

addresses = st.binary(min_size=16, max_size=16)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), addresses, addresses, st.booleans())
def test_random_bytes_raise_only_mherror(data, src, dst, verify):
    try:
        parse(data, src, dst, verify_checksum=verify)
    except MHError as err:
        assert err.action in ("discard", "param_problem", "binding_error")


@st.composite
def plausible_mh(draw):
    """Bytes that get past the header checks, so the option walker gets fuzzed."""
    mh_type, least = draw(st.sampled_from([(5, 2), (6, 2), (7, 3), (0, 1), (3, 3)]))
    units = draw(st.integers(least, 5))
    body = draw(st.binary(min_size=8 * units - 6, max_size=8 * units - 6))
    tail = draw(st.binary(max_size=3))
    return bytes((59, units - 1, mh_type, 0)) + body + tail


@settings(max_examples=400, deadline=None)
@given(plausible_mh(), addresses, addresses)
def test_plausible_bytes_raise_only_mherror(data, src, dst):
    data = data[:4] + mh.checksum(data[:8 * (data[1] + 1)], src, dst).to_bytes(2, "big") + data[6:]
    try:
        msg = parse(data, src, dst)
    except MHError as err:
        assert err.action == "discard"    # header checks all pass by construction
        return
    # Whatever the sender's layout, our own padding reads back the same.
    assert parse(build(msg, src, dst), src, dst) == msg


u16 = st.integers(0, 0xFFFF)
options = st.lists(st.one_of(
    st.just(Pad1()), st.integers(2, 9).map(PadN),
    u16.map(BindingRefreshAdvice), addresses.map(AlternateCareOfAddress),
    st.builds(NonceIndices, u16, u16),
    st.binary(max_size=20).map(BindingAuthorizationData),
    st.builds(UnknownOption, st.integers(6, 255), st.binary(max_size=10)),
), max_size=6).map(tuple)
messages = st.one_of(
    st.builds(BindingUpdate, u16, u16, st.booleans(), st.booleans(), st.booleans(),
              st.booleans(), st.integers(0, 0xFFF), options),
    st.builds(BindingAck, st.integers(0, 255), u16, u16, st.booleans(),
              st.integers(0, 0x7F), options),
    st.builds(BindingError, st.integers(0, 255), addresses, options),
)


@settings(max_examples=300, deadline=None)
@given(messages, addresses, addresses)
def test_build_parse_round_trip(msg, src, dst):
    data = build(msg, src, dst)
    assert parse(data, src, dst) == strip(msg)
    assert build(parse(data, src, dst, keep_padding=True), src, dst) == data
