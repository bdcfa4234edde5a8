"""The worker's punt ring: what the engine punts reaches the control thread
whole, up to the worker's largest packet (a fragment on a jumbo-MTU wire),
without a TUN: SOCK_SEQPACKET socket pairs keep packet boundaries as a TUN
queue does."""
import socket
import threading
import time

from fastpath.core.worker import Worker

from fastpath.ref.ipv6 import hao_destopt

from topo import COA1, COA2, HA, MN1, make_topo, outer


def run_worker(max_packet, packets, punt_rate=None, punt_burst=None, expect=None):
    topo = make_topo(mtu=9000)
    home_us, home_them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wire_us, wire_them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (home_us, wire_us):
        s.setblocking(False)
    w = Worker(topo.engine, home_us.fileno(), wire_us.fileno(), 8, max_packet, mtu=9000)
    if punt_rate is not None:
        w.punt_rate, w.punt_burst = punt_rate, punt_burst
    expect = len(packets) if expect is None else expect
    t = threading.Thread(target=w.run, kwargs={"poll_ms": 20})
    t.start()
    try:
        for p in packets:
            wire_them.send(p)
        got, end = [], time.monotonic() + 5
        while time.monotonic() < end:
            got += w.punts.drain(topo.sad)
            c = w.counters()
            if c["rx"]["wire"] + c["rx_oversize"]["wire"] == len(packets) and len(got) >= expect:
                break
            time.sleep(0.01)
        time.sleep(0.05)
        got += w.punts.drain(topo.sad)
        return got, w.counters(), w.punts.overflow_count
    finally:
        w.stop()
        t.join(5)
        for s in (home_us, home_them, wire_us, wire_them):
            s.close()


def fragment(size: int) -> bytes:
    """An outer packet to the HA with a Fragment header (next header 44):
    the engine punts it, the control thread reassembles it."""
    frag_hdr = bytes([50, 0, 0, 1, 0, 0, 0, 7])          # ESP follows, offset 0, M=1
    body = (bytes(range(256)) * (size // 256 + 1))[:size - 48]
    return outer(COA1, HA, 44, frag_hdr + body)


def test_a_jumbo_fragment_is_punted_whole():
    pkts = [fragment(1400), fragment(8500)]
    got, counters, overflow = run_worker(9064, pkts)
    assert overflow == 0
    assert [(k, bytes(v)) for k, v in got] == [("punt", p) for p in pkts]


def test_a_packet_bigger_than_the_slots_is_counted_not_punted():
    got, counters, overflow = run_worker(2048, [fragment(2040), fragment(5000)])
    assert counters["rx_oversize"]["wire"] == 1         # never read into a slot whole
    assert [bytes(v) for _, v in got] == [fragment(2040)]


def test_unauthenticated_punts_are_policed_in_the_worker():
    """Past --punt-rate, punts are dropped in the worker and counted: the
    control thread (above the workers in priority) never sees them."""
    pkts = [fragment(200 + k) for k in range(50)]
    got, counters, overflow = run_worker(2048, pkts, punt_rate=0.001, punt_burst=5, expect=5)
    assert len(got) == 5 and counters["punt_policed"] == 45 and overflow == 0
    got, counters, _ = run_worker(2048, pkts, punt_rate=0, punt_burst=0)     # 0: no limit
    assert len(got) == 50 and counters["punt_policed"] == 0


def test_a_home_address_option_without_its_binding_comes_as_unbound_hao():
    """RFC 6275 §9.3.1: the engine's NO_BINDING note on a punt reaches the
    control thread as its own kind, for the Binding Error; the same packet
    from the registered care-of address is an ordinary punt."""
    icmp = bytes([128, 0, 0, 0, 0, 0, 0, 1])             # an echo request (checksum unchecked)
    wrong = outer(COA2, HA, 60, hao_destopt(MN1, 58) + icmp)   # MN1 is bound to COA1
    right = outer(COA1, HA, 60, hao_destopt(MN1, 58) + icmp)
    got, counters, overflow = run_worker(2048, [wrong, right])
    assert overflow == 0
    assert [(k, bytes(v)) for k, v in got] == [("unbound_hao", wrong), ("punt", right)]
