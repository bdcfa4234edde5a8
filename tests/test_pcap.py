"""fastpath.pcap: round trips, byte orders, link types, damaged files, scapy interop."""
from __future__ import annotations

import io
import struct

import pytest

from fastpath.pcap import (
    LINKTYPE_IPV6,
    LINKTYPE_RAW,
    PcapError,
    PcapReader,
    PcapWriter,
    read_packets,
)

PKTS = [bytes([0x60, 0, 0, 0, 0, 0, 59, 64]) + bytes(range(32)),
        b"\x60" + b"\x00" * 39 + b"payload" * 10,
        b""]


def handmade(order: str, magic: int, linktype: int, records, *, version=(2, 4)) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, *version, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data
    return out


def test_round_trip(tmp_path):
    p = tmp_path / "rt.pcap"
    with PcapWriter(p) as w:
        for k, data in enumerate(PKTS):
            w.write(data, ts=1700000000.25 + k * 0.000001)
        assert w.count == len(PKTS)
    got = list(read_packets(p))
    assert [d for _, d in got] == PKTS
    for k, (ts, _) in enumerate(got):
        assert ts == pytest.approx(1700000000.25 + k * 0.000001, abs=1e-6)
    raw = p.read_bytes()
    magic, vmaj, vmin, _, _, snaplen, lt = struct.unpack("<IHHiIII", raw[:24])
    assert (magic, vmaj, vmin, lt) == (0xA1B2C3D4, 2, 4, LINKTYPE_RAW)
    assert snaplen >= 65535


def test_round_trip_nanoseconds(tmp_path):
    p = tmp_path / "ns.pcap"
    with PcapWriter(p, nanosecond=True) as w:
        w.write(PKTS[0], ts=12.000000123)
    with PcapReader(p) as r:
        (ts, data), = list(r)
        assert r.nanosecond and r.linktype == LINKTYPE_RAW
    assert data == PKTS[0] and ts == pytest.approx(12.000000123, abs=1e-9)


def test_default_timestamp_is_now(tmp_path):
    import time
    p = tmp_path / "now.pcap"
    t0 = time.time()
    with PcapWriter(p) as w:
        w.write(PKTS[0])
    (ts, _), = read_packets(p)
    assert t0 - 1 <= ts <= time.time() + 1


def test_timestamp_rounding_carries(tmp_path):
    p = tmp_path / "carry.pcap"
    with PcapWriter(p) as w:
        w.write(b"x", ts=5.9999999)
    raw = p.read_bytes()
    sec, usec = struct.unpack("<II", raw[24:32])
    assert (sec, usec) == (6, 0)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("magic,scale", [(0xA1B2C3D4, 1e6), (0xA1B23C4D, 1e9)])
@pytest.mark.parametrize("linktype", [101, 229, 12, 14])
def test_read_both_byte_orders_and_raw_linktypes(tmp_path, order, magic, scale, linktype):
    p = tmp_path / "h.pcap"
    p.write_bytes(handmade(order, magic, linktype, [(10, 5, PKTS[0]), (11, 0, PKTS[1])]))
    with PcapReader(p) as r:
        got = list(r)
        assert r.byteorder == order and r.linktype == linktype
    assert [d for _, d in got] == PKTS[:2]
    assert got[0][0] == pytest.approx(10 + 5 / scale)
    assert got[1][0] == 11


def test_file_objects():
    buf = io.BytesIO()
    w = PcapWriter(buf, linktype=LINKTYPE_IPV6)
    w.write(PKTS[1], ts=1)
    w.close()
    buf.seek(0)
    r = PcapReader(buf)
    assert r.linktype == LINKTYPE_IPV6
    assert [d for _, d in r] == [PKTS[1]]


def test_unsupported_linktype(tmp_path):
    p = tmp_path / "eth.pcap"
    p.write_bytes(handmade("<", 0xA1B2C3D4, 1, []))
    with pytest.raises(PcapError, match=r"link type 1 \(Ethernet\) is not supported"):
        read_packets(p)


def test_pcapng_refused_with_hint(tmp_path):
    p = tmp_path / "x.pcapng"
    p.write_bytes(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28))
    with pytest.raises(PcapError, match="pcapng.*editcap -F pcap"):
        read_packets(p)


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap header: 6 of 24"),
    (b"GET / HTTP/1.1\r\n\r\nxxxxxxxx", "not a pcap file"),
])
def test_bad_headers(tmp_path, content, match):
    p = tmp_path / "bad.pcap"
    p.write_bytes(content)
    with pytest.raises(PcapError, match=match) as ei:
        read_packets(p)
    assert str(p) in str(ei.value)


def test_bad_version(tmp_path):
    p = tmp_path / "v.pcap"
    p.write_bytes(handmade("<", 0xA1B2C3D4, 101, [], version=(1, 0)))
    with pytest.raises(PcapError, match="unsupported pcap version 1.0"):
        read_packets(p)


def test_truncated_record_header_names_offset(tmp_path):
    p = tmp_path / "t.pcap"
    good = handmade("<", 0xA1B2C3D4, 101, [(1, 0, PKTS[0])])
    p.write_bytes(good + b"\x01\x02\x03")
    it = read_packets(p)
    assert next(it)[1] == PKTS[0]
    with pytest.raises(PcapError) as ei:
        next(it)
    msg = str(ei.value)
    assert f"truncated record header at offset {len(good)} (packet 2)" in msg
    assert str(p) in msg


def test_truncated_packet_data_names_offset(tmp_path):
    p = tmp_path / "t.pcap"
    raw = handmade(">", 0xA1B2C3D4, 101, [(1, 0, PKTS[0]), (2, 0, PKTS[1])])
    p.write_bytes(raw[:-5])
    it = read_packets(p)
    next(it)
    with pytest.raises(PcapError) as ei:
        next(it)
    rec_off = 24 + 16 + len(PKTS[0])
    assert (f"truncated packet data at offset {rec_off + 16} (packet 2, record at offset "
            f"{rec_off}): {len(PKTS[1]) - 5} of {len(PKTS[1])} bytes") in str(ei.value)


def test_implausible_length(tmp_path):
    p = tmp_path / "big.pcap"
    p.write_bytes(handmade("<", 0xA1B2C3D4, 101, []) + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30))
    with pytest.raises(PcapError, match="implausible"):
        list(read_packets(p))


def test_snapped_records_are_counted(tmp_path):
    p = tmp_path / "snap.pcap"
    raw = handmade("<", 0xA1B2C3D4, 101, [])
    raw += struct.pack("<IIII", 0, 0, 4, 100) + b"\x60abc"
    p.write_bytes(raw)
    with PcapReader(p) as r:
        assert [d for _, d in r] == [b"\x60abc"]
        assert r.truncated == 1


def test_writer_errors(tmp_path):
    w = PcapWriter(tmp_path / "w.pcap", snaplen=100)
    with pytest.raises(PcapError, match="longer than the snapshot length 100"):
        w.write(b"x" * 101)
    with pytest.raises(PcapError, match="negative timestamp"):
        w.write(b"x", ts=-1)
    w.close()
    w.close()   # idempotent
    with pytest.raises(PcapError, match="closed"):
        w.write(b"x")
    with pytest.raises(PcapError, match="not a raw-IP link type"):
        PcapWriter(tmp_path / "e.pcap", linktype=1)
    with pytest.raises(PcapError, match="cannot create"):
        PcapWriter(tmp_path / "no-such-dir" / "x.pcap")


def test_missing_file(tmp_path):
    with pytest.raises(PcapError, match="cannot open"):
        read_packets(tmp_path / "nope.pcap")


# ---------------------------------------------------------------- scapy interop

@pytest.fixture
def scapy():
    return pytest.importorskip("scapy.all")


def _scapy_packets():
    from scapy.all import ICMPv6EchoRequest, IPv6, UDP, Raw
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, HAO
    return [
        IPv6(src="2001:db8:1::10", dst="2001:db8:99::1") / UDP(sport=1, dport=2) / Raw(b"abc"),
        IPv6(src="2001:db8:2::10", dst="2001:db8:ffff::1") / IPv6(src="2001:db8:1::10", dst="2001:db8:99::1")
        / ICMPv6EchoRequest(id=7, seq=1),
        IPv6(src="2001:db8:2::10", dst="2001:db8:ffff::1", nh=60)
        / IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8:1::10")]),
    ]


def test_scapy_wrpcap_linktype_raw_reads_here(tmp_path, scapy):
    from scapy.all import wrpcap
    pkts = _scapy_packets()
    for k, p in enumerate(pkts):
        p.time = 100 + k
    path = tmp_path / "scapy.pcap"
    wrpcap(str(path), pkts, linktype=LINKTYPE_RAW)
    with PcapReader(path) as r:
        got = list(r)
        assert r.linktype == LINKTYPE_RAW
    assert [d for _, d in got] == [bytes(p) for p in pkts]
    assert [ts for ts, _ in got] == [pytest.approx(100 + k) for k in range(len(pkts))]


def test_written_here_reads_in_scapy(tmp_path, scapy):
    from scapy.all import IPv6
    from scapy.utils import PcapReader as ScapyReader
    pkts = _scapy_packets()
    path = tmp_path / "ours.pcap"
    with PcapWriter(path) as w:
        for k, p in enumerate(pkts):
            w.write(bytes(p), ts=200 + k / 4)
    with ScapyReader(str(path)) as r:
        assert r.linktype == LINKTYPE_RAW
        got = list(r)
    assert [bytes(p) for p in got] == [bytes(p) for p in pkts]
    assert [float(p.time) for p in got] == [200, 200.25, 200.5]
    assert got[1].haslayer(IPv6) and got[1][IPv6].src == "2001:db8:2::10"
