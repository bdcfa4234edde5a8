"""The mobile node's registration state machine (RFC 6275 §11.7.1, §11.8)."""
from fastpath import mh
from fastpath.mobile import INITIAL_TIMEOUT_FIRST_REG, MAX_BINDACK_TIMEOUT, HomeRegistration

HOA = mh.ip6("2001:db8:1::10")
HA = mh.ip6("2001:db8:ffff::1")
COA = mh.ip6("2001:db8:2::10")
COA2 = mh.ip6("2001:db8:3::10")


def parse(sent):
    return mh.parse(sent.mh, HOA, HA)


def test_first_bu_then_back_off_then_ack():
    reg = HomeRegistration(HOA, HA, lifetime_s=400)
    first = reg.move(COA, now=0)
    bu = parse(first)
    assert bu.ack and bu.home and bu.lifetime == 100 and mh.alternate_coa(bu) == COA
    assert reg.due(1.0) is None
    times, t = [], 0.0
    timeout = INITIAL_TIMEOUT_FIRST_REG
    while len(times) < 7:
        t += timeout
        sent = reg.due(t)
        assert sent is not None and parse(sent).sequence == first.sequence + len(times) + 1
        times.append(t)
        timeout = min(timeout * 2, MAX_BINDACK_TIMEOUT)
    assert reg.retransmissions == 7
    last = reg.pending.sequence
    assert reg.on_ack(mh.BindingAck(status=0, sequence=last, lifetime=100), t)
    assert reg.registered and reg.due(t + 1) is None
    # refresh at 3/4 of the granted lifetime
    assert reg.due(t + 299) is None and reg.due(t + 301) is not None


def test_stale_and_rejected_acks():
    reg = HomeRegistration(HOA, HA)
    sent = reg.move(COA, now=0)
    assert not reg.on_ack(mh.BindingAck(status=0, sequence=sent.sequence - 1, lifetime=10), 0.1)
    assert not reg.on_ack(mh.BindingAck(status=129, sequence=sent.sequence, lifetime=0), 0.2)
    assert not reg.registered
    # 135: the HA's last accepted sequence; the next BU goes on from there, at once
    assert not reg.on_ack(mh.BindingAck(status=135, sequence=5000, lifetime=0), 0.3)
    again = reg.due(0.3)
    assert again is not None and parse(again).sequence == 5001


def test_move_and_deregister():
    reg = HomeRegistration(HOA, HA)
    s1 = reg.move(COA, 0)
    reg.on_ack(mh.BindingAck(status=0, sequence=s1.sequence, lifetime=900), 0.1)
    s2 = reg.move(COA2, 5)
    assert s2.coa == COA2 and mh.alternate_coa(parse(s2)) == COA2
    assert mh.seq_newer(s2.sequence, s1.sequence)
    s3 = reg.deregister(6)
    assert parse(s3).lifetime == 0
