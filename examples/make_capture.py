"""Write examples/sample.pcap: a short capture for `fastpath replay` with
examples/ha.toml, as the HA's two TUNs would see it.

Built with the reference path from the config's own keys (each mobile node
seals with the HA's inbound SA keys): traffic both ways for MN1 (ESP) and MN2
(plain IPv6-in-IPv6), plus the hostile packets an HA meets: a replay, a
forgery, a spoofed plain tunnel and an unknown SPI.

    python examples/make_capture.py [OUT]
"""
import sys
from pathlib import Path

from fastpath import mh, pcap
from fastpath.config import load
from fastpath.ref.esp import RefSA
from fastpath.ref.ipv6 import addr, hao_destopt, ipv6_header

HERE = Path(__file__).resolve().parent
CN = addr("2001:db8:99::1")
EVIL = addr("2001:db8:666::1")
NEW_COA = addr("2001:db8:4::10")     # where MN1 moves mid-capture


def udp_packet(src, dst, payload: bytes) -> bytes:
    # A UDP datagram without a checksum is enough for the data plane (it never
    # looks past the IPv6 header); use port 9 (discard).
    udp = (1024).to_bytes(2, "big") + (9).to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    return ipv6_header(src, dst, 17, len(udp)) + udp


def main(out: Path) -> None:
    cfg = load(HERE / "ha.toml")
    ha = cfg.home_agent.address.packed
    mn1, mn2 = cfg.mobile_nodes[0], cfg.mobile_nodes[1]
    hoa1, coa1 = mn1.home_address.packed, mn1.care_of_address.packed
    hoa2, coa2 = mn2.home_address.packed, mn2.care_of_address.packed
    sa = mn1.sa("payload", "in")
    mn_sa = RefSA(sa.spi, sa.algorithm, sa.enc_key, sa.auth_key, sa.salt, sa.esn, 0)

    def from_mn1(seq, payload):
        esp = mn_sa.seal(seq, payload, 41, bytes(range(16)))
        return ipv6_header(coa1, ha, 50, len(esp)) + esp

    pkts = []
    for i in range(4):   # CN -> MN1: tunnelled with ESP
        pkts.append(udp_packet(CN, hoa1, f"to mn1 #{i}".encode() * 8))
    for i in range(4):   # MN1 -> CN: reverse tunnel, ESP
        pkts.append(from_mn1(i + 1, udp_packet(hoa1, CN, f"from mn1 #{i}".encode() * 8)))
    pkts.append(pkts[-1])                                        # a replay
    forged = bytearray(from_mn1(9, udp_packet(hoa1, CN, b"forged")))
    forged[-1] ^= 0x01
    pkts.append(bytes(forged))                                   # bad ICV
    for i in range(2):   # MN2: plain IPv6-in-IPv6 both ways
        pkts.append(udp_packet(CN, hoa2, f"to mn2 #{i}".encode()))
        inner = udp_packet(hoa2, CN, f"from mn2 #{i}".encode())
        pkts.append(ipv6_header(coa2, ha, 41, len(inner)) + inner)
    inner = udp_packet(hoa2, CN, b"spoofed")                     # outer source is not MN2's CoA
    pkts.append(ipv6_header(EVIL, ha, 41, len(inner)) + inner)
    bogus = bytes.fromhex("0badf00d00000001") + bytes(48)        # unknown SPI
    pkts.append(ipv6_header(EVIL, ha, 50, len(bogus)) + bogus)
    # MN1 moves: a Binding Update (ESP transport on its binding SA, HAO, Alternate
    # CoA) from the new CoA; the HA answers with a Binding Ack (in the output),
    # and the CN's next packets go to the new CoA.
    bsa = mn1.sa("binding", "in")
    mn_bsa = RefSA(bsa.spi, bsa.algorithm, bsa.enc_key, bsa.auth_key, bsa.salt, bsa.esn, 0)
    bu = mh.build(mh.BindingUpdate(sequence=1, lifetime=600 // 4, ack=True, home=True,
                                   options=(mh.AlternateCareOfAddress(NEW_COA),)), hoa1, ha)
    body = hao_destopt(hoa1, 50) + mn_bsa.seal(1, bu, 135, bytes(range(16)))
    pkts.append(ipv6_header(NEW_COA, ha, 60, len(body)) + body)
    for i in range(2):
        pkts.append(udp_packet(CN, hoa1, f"to mn1 after the move #{i}".encode()))
    with pcap.PcapWriter(out) as w:
        for i, p in enumerate(pkts):
            w.write(p, 1_700_000_000 + i / 1000)
    print(f"wrote {len(pkts)} packets to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "sample.pcap")
