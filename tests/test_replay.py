"""`fastpath replay` end to end on the shipped example capture, checked with
scapy: ESP to the static CoA, a Binding Update moves MN1, its Binding Ack is
in the output in the BU's place, and the next packets go to the new CoA."""
import os
import subprocess
import sys

import pytest
import scapy.all  # noqa: F401  (every layer binding: the MH after a routing header)
from scapy.layers.inet6 import IPv6, MIP6MH_BA
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import rdpcap

from fastpath import cli
from fastpath.config import load

from topo import BACKENDS, REPO_EXAMPLES

NEW_COA = "2001:db8:4::10"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "in.pcap"
    env = dict(os.environ, PYTHONPATH=str(REPO_EXAMPLES.parent))
    subprocess.run([sys.executable, str(REPO_EXAMPLES / "make_capture.py"), str(path)],
                   check=True, capture_output=True, env=env)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_moves_the_binding_and_answers(capture, tmp_path, capsys, backend):
    out = tmp_path / "out.pcap"
    rc = cli.main(["replay", "-c", str(REPO_EXAMPLES / "ha.toml"), "--in", str(capture),
                   "--out", str(out), "--crypto", backend])
    report = capsys.readouterr().out
    assert rc == 0
    assert "drops: icv=1, policy=1, replay=1, unknown_spi=1" in report
    assert "binding updates: status 0=1; binding acks written: 1" in report
    cfg = load(REPO_EXAMPLES / "ha.toml")
    mn1 = cfg.mobile_nodes[0]
    pkts = [IPv6(bytes(p)) for p in rdpcap(str(out))]
    assert len(pkts) == 15
    # the Binding Ack: IPv6(HA -> new CoA) . RH2(HoA) . ESP(binding out) . MH BA
    ba_pkt = pkts[-3]
    assert (ba_pkt.src, ba_pkt.dst, ba_pkt.nh) == (str(cfg.home_agent.address), NEW_COA, 43)
    bout = mn1.sa("binding", "out")
    sa = SecurityAssociation(ESP, spi=bout.spi, crypt_algo="AES-CBC", crypt_key=bout.enc_key,
                             auth_algo="HMAC-SHA1-96", auth_key=bout.auth_key)
    ba = IPv6(bytes(sa.decrypt(ba_pkt)))[MIP6MH_BA]   # re-dissect: scapy keeps the RH2 layering otherwise
    assert (ba.status, ba.seq) == (0, 1) and ba.mhtime > 0
    # payload after the move goes to the new CoA, sequence numbers continuing
    pout = mn1.sa("payload", "out")
    psa = SecurityAssociation(ESP, spi=pout.spi, crypt_algo="AES-CBC", crypt_key=pout.enc_key,
                              auth_algo="HMAC-SHA1-96", auth_key=pout.auth_key,
                              tunnel_header=IPv6(src=str(cfg.home_agent.address), dst=NEW_COA))
    seqs = []
    for p in pkts:
        if p.nh == 50 and p[ESP].spi == pout.spi:
            seqs.append(p[ESP].seq)
    assert seqs == list(range(1, 7))
    for p in pkts[-2:]:
        assert p.dst == NEW_COA
        inner = psa.decrypt(p)
        assert inner.dst == str(mn1.home_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_reassembles_fragmented_tunnel_packets(tmp_path, capsys, backend):
    """Fragmented ESP from the MN (its tunnel MTU was small) is reassembled
    before decapsulation, as the forwarder does: a 1200-byte and a 3000-byte
    inner packet (bigger than a batch slot) come out whole; a set of
    overlapping fragments is discarded and counted (RFC 5722)."""
    from scapy.layers.inet6 import UDP, IPv6ExtHdrFragment, fragment6
    from scapy.utils import wrpcap
    cfg = load(REPO_EXAMPLES / "ha.toml")
    mn1 = cfg.mobile_nodes[0]
    ha, hoa, coa = str(cfg.home_agent.address), str(mn1.home_address), str(mn1.care_of_address)
    pin = mn1.sa("payload", "in")
    sa = SecurityAssociation(ESP, spi=pin.spi, crypt_algo="AES-CBC", crypt_key=pin.enc_key,
                             auth_algo="HMAC-SHA1-96", auth_key=pin.auth_key,
                             tunnel_header=IPv6(src=coa, dst=ha))
    inners = [IPv6(src=hoa, dst="2001:db8:99::1") / UDP(sport=7, dport=9) / (bytes([k]) * n)
              for k, n in ((1, 1152), (2, 2952))]
    frames = []
    for k, p in enumerate(inners):
        enc = sa.encrypt(p, seq_num=k + 1)
        whole = IPv6(bytes(enc))
        frames += fragment6(IPv6(src=whole.src, dst=whole.dst, nh=44) /
                            IPv6ExtHdrFragment(id=100 + k, nh=50) / whole.payload, 1280)
    # two fragments of one datagram that overlap
    enc = IPv6(bytes(sa.encrypt(inners[0], seq_num=3)))
    body = bytes(enc.payload)
    frames.append(IPv6(src=coa, dst=ha, nh=44) / IPv6ExtHdrFragment(id=200, nh=50, m=1, offset=0)
                  / body[:800])
    frames.append(IPv6(src=coa, dst=ha, nh=44) / IPv6ExtHdrFragment(id=200, nh=50, m=0, offset=50)
                  / body[400:])
    src = tmp_path / "frags.pcap"
    wrpcap(str(src), [IPv6(bytes(f)) for f in frames], linktype=229)
    out = tmp_path / "out.pcap"
    rc = cli.main(["replay", "-c", str(REPO_EXAMPLES / "ha.toml"), "--in", str(src),
                   "--out", str(out), "--crypto", backend])
    report = capsys.readouterr().out
    assert rc == 0, report
    got = [bytes(p) for p in rdpcap(str(out))]
    assert got == [bytes(p) for p in inners]
    assert "fragments:" in report and "reassembled=2" in report and "overlap=1" in report
