"""The worker's low-rate mode (Worker._read_cap): a side whose wake-ups bring
one packet each reads once and leaves the rest to poll(). Nothing may be left
behind in the queue when the rate rises, and order is kept. SOCK_SEQPACKET
socket pairs stand in for the TUN queues, as in test_worker_punts."""
import socket
import threading
import time

from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from fastpath.core.worker import Worker

from topo import CN, MN1, inner, make_topo


class Reader(threading.Thread):
    """Drains the wire side as it comes (a full socket would drop, as a full
    TUN queue does, and the test is not about that)."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.got, self.cv = sock, [], threading.Condition()

    def run(self):
        while True:
            try:
                p = self.sock.recv(65536)
            except OSError:
                return
            if not p:
                return
            with self.cv:
                self.got.append(p)
                self.cv.notify_all()

    def wait_for(self, n, timeout=5.0):
        with self.cv:
            self.cv.wait_for(lambda: len(self.got) >= n, timeout)
            return len(self.got)


class Rig:
    """A worker between two SOCK_SEQPACKET pairs, running in a thread:
    `home` is the home side to send on, `reader` drains the wire side."""

    def __init__(self, topo, mtu=1500, poll_ms=1000):
        self.sockets = []           # held: the worker uses their fds
        home_us, self.home = self._pair()
        wire_us, wire_them = self._pair()
        # room for a whole burst on the wire side: a full socket drops (counted
        # in tx_errors), as a full TUN queue does, and the tests are not about that
        wire_us.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.reader = Reader(wire_them)
        self.reader.start()
        self.worker = Worker(topo.engine, home_us.fileno(), wire_us.fileno(), 16, 2048, mtu=mtu)
        self.thread = threading.Thread(target=self.worker.run, kwargs={"poll_ms": poll_ms})
        self.thread.start()

    def _pair(self):
        us, them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        us.setblocking(False)
        self.sockets += [us, them]
        return us, them

    def stop(self):
        self.worker.stop()
        self.thread.join(5)
        for s in self.sockets:
            s.close()


def test_lone_packets_then_a_burst_all_arrive_in_order():
    topo = make_topo()
    rig = Rig(topo)
    w, reader, home_them = rig.worker, rig.reader, rig.home
    try:
        # lone packets: each wake-up finds one (the side goes to low-rate mode)
        for k in range(24):
            home_them.send(inner(CN, MN1, 100, fill=bytes([k])))
            assert reader.wait_for(k + 1, 1.0) == k + 1, "a lone packet waited for the next one"
        assert w.counters()["polls"] >= 20      # it slept between them
        # then a burst far larger than a batch, sent while the worker is asleep
        for k in range(300):
            home_them.send(inner(CN, MN1, 100 + k % 50, fill=bytes([k % 256])))
        # a poll_ms of 1 s: a packet left to a poll() that never comes would show
        c = w.counters()
        assert reader.wait_for(324, 2.0) == 324, (c["rx"], c["tx"], c["tx_errors"], c["polls"])
        seqs = [IPv6(p)[ESP].seq for p in reader.got]
        assert seqs == list(range(1, 325))     # in order, none lost or doubled
        # and lone packets again afterwards
        for k in range(5):
            home_them.send(inner(CN, MN1, 80))
            assert reader.wait_for(325 + k, 1.0) == 325 + k
        # the worker counts a write once it returns, maybe after the reader
        # has the packet: give it a moment
        deadline = time.monotonic() + 2.0
        while (c := w.counters())["tx"]["wire"] < 329 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c["rx"]["home"] == 329 and c["tx"]["wire"] == 329
    finally:
        rig.stop()
