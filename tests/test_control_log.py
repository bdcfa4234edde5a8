"""The control thread logs binding changes and refusals at INFO, rate-limited:
a burst of Binding Updates is summed up instead of written line by line."""
import logging
from types import SimpleNamespace

from fastpath import control

HOA = bytes.fromhex("20010db8000100000000000000000010")
COA = bytes.fromhex("20010db8000300000000000000000010")


def decision(**kw):
    base = dict(home_address=HOA, care_of_address=COA, moved=True, deregistered=False,
                status=0, sequence=7, lifetime=150, ba=object(), action="accepted", reason="")
    base.update(kw)
    return SimpleNamespace(**base)


def test_moves_and_refusals_logged_and_rate_limited(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(control.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(control, "_log_window", [0.0, 0, 0])
    with caplog.at_level(logging.INFO, logger="fastpath.control"):
        control._log_decision(decision())
        control._log_decision(decision(moved=False, status=133, reason="sequence out of window"))
        control._log_decision(decision(moved=False, status=0))          # a refresh: not at INFO
        for _ in range(100):
            control._log_decision(decision())
        now[0] += 1.5
        control._log_decision(decision(deregistered=True, moved=False))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("binding 2001:db8:1::10 moved to 2001:db8:3::10 (BU sequence 7, "
                        "lifetime 600 s, Binding Ack sent)")
    assert lines[1] == "Binding Update for 2001:db8:1::10 refused: status 133 (sequence out of window)"
    assert len(lines) == control._LOG_PER_S + 2
    assert lines[-2].startswith("82 more binding changes or refusals")
    assert "deregistered" in lines[-1]


def test_drops_summed_up_and_exhaustion_warned(caplog):
    """Every DROP_LOG_S the control thread logs the drops since the last
    time, by reason (nothing when there were none); an SA out of sequence
    numbers is a WARNING naming the SA. Real engine and SA table."""
    from fastpath.core.batch import Batch
    from topo import CN, EVIL, MN1, SPI, inner, make_topo
    topo = make_topo("aes128gcm16", False, "openssl")
    fwd = SimpleNamespace(engines=[topo.engine], workers=[], sad=topo.sad, control_engine=None)
    cp = SimpleNamespace(fwd=fwd, _drops_seen={}, _exhausted_seen={})

    def encap(pkts):
        b = Batch(len(pkts))
        b.load(pkts)
        topo.engine.encap(b)

    with caplog.at_level(logging.INFO, logger="fastpath.control"):
        control.ControlPlane._log_drops(cp)                     # nothing yet: silent
        encap([inner(CN, EVIL, 100)] * 3)                       # no_binding x3
        control.ControlPlane._log_drops(cp)
        control.ControlPlane._log_drops(cp)                     # nothing new: silent
        spi = SPI[(MN1, "payload", "out")]
        topo.sad.resume_sequence(spi, 2 ** 32 - 1)
        encap([inner(CN, MN1, 100)] * 2)                        # seq_exhausted x2
        control.ControlPlane._log_drops(cp)
    recs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert recs[0] == ("INFO", "drops in the last 10 s: no_binding=3 (per SA: fastpath ctl sas)")
    assert recs[1] == ("INFO", "drops in the last 10 s: seq_exhausted=2 (per SA: fastpath ctl sas)")
    assert recs[2][0] == "WARNING" and f"SA 0x{spi:08x} (payload out" in recs[2][1]
    assert "2 packets dropped" in recs[2][1] and "new key" in recs[2][1]
    assert len(recs) == 3


def test_packet_too_big_lowers_the_path_mtu_toward_that_coa(caplog, monkeypatch):
    """A Packet Too Big (built by scapy) quoting one of our tunnel packets
    lowers the path MTU of the mobile nodes at that CoA in the real SA
    table: only downwards, at most once per PMTU_HOLD_S, never below 1280,
    back to the configured MTU after PMTU_AGE_S. One quoting somebody
    else's packet, or a packet no larger than the MTU it reports, is only
    counted as ICMPv6."""
    import ipaddress
    from collections import Counter
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
    from fastpath.ref.ipv6 import ntop
    from topo import COA1, HA, MN1, make_topo
    topo = make_topo("aes128gcm16")
    now = [100.0]
    monkeypatch.setattr(control.time, "monotonic", lambda: now[0])
    fwd = SimpleNamespace(sad=topo.sad, opts=SimpleNamespace(role="home-agent"),
                          cfg=SimpleNamespace(home_agent=SimpleNamespace(
                              address=ipaddress.IPv6Address(HA), mtu=1500)))
    cp = SimpleNamespace(fwd=fwd, events=Counter(), _pmtu={}, bindings=None)
    cp._packet_too_big = lambda p: control.ControlPlane._packet_too_big(cp, p)

    def ptb(mtu, src=ntop(HA), size=1500):
        quoted = bytes(IPv6(src=src, dst=ntop(COA1), nh=50) / (b"\x00" * (size - 40)))
        return bytes(IPv6(src="2001:db8:9::1", dst=ntop(HA)) / ICMPv6PacketTooBig(mtu=mtu)
                     / quoted[:1232])

    def punt(p):
        control.ControlPlane._punt(cp, p, [])

    with caplog.at_level(logging.INFO, logger="fastpath.control"):
        assert topo.sad.path_mtu(MN1) == 1500
        punt(ptb(1400))
        assert topo.sad.path_mtu(MN1) == 1400
        punt(ptb(1300))                                     # within the hold: not yet
        assert topo.sad.path_mtu(MN1) == 1400
        now[0] += control.PMTU_HOLD_S + 1
        punt(ptb(1450))                                     # never upwards
        punt(ptb(1000))                                     # never below 1280
        assert topo.sad.path_mtu(MN1) == 1280
        punt(ptb(1300, src="2001:db8:7::7"))                # not our packet
        punt(ptb(1300, size=1280))                          # not bigger than it says
        now[0] += control.PMTU_AGE_S + 1
        control.ControlPlane._age_path_mtu(cp)
        assert topo.sad.path_mtu(MN1) == 1500
    assert cp.events["punt.next_header_58"] == 6
    assert cp.events["punt.packet_too_big"] == 4
    assert (cp.events["path_mtu.lowered"], cp.events["path_mtu.aged_out"]) == (2, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0] == ("ICMPv6 Packet Too Big from 2001:db8:9::1: path MTU toward care-of "
                           f"address {ntop(COA1)} is now 1400 (configured 1500; 1 mobile "
                           "node(s) there)")
    assert len(warnings) == 2
