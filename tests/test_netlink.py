"""TUN devices and host set-up (fastpath.tun, fastpath.netlink) inside
throw-away network namespaces.

The code under test runs in this process and reaches into the namespace with
its ``netns=`` argument (a private thread that setns(2)'s itself: see the
fastpath.netlink docstring); the crash test runs a child with
``ip netns exec``, exactly as a forwarder would run, and kills it with -9.
What the kernel ended up with is checked with the ``ip`` command.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fastpath.config import parse
from fastpath.tun import TunError, open_tun, tun_queues

from netns import Netns, skip_reason, topology, wait_for

pytestmark = pytest.mark.skipif(skip_reason(need_tun=True) is not None,
                                reason=skip_reason(need_tun=True) or "")

HA = "2001:db8:ffff::1"
HOA1, HOA2 = "2001:db8:1::10", "2001:db8:1::20"
HOME, WIRE, LINK = "fpt-home", "fpt-wire", "hl0"

CONFIG = f"""
[home_agent]
address = "{HA}"
home_prefix = "2001:db8:1::/64"
mtu = 1500
state_dir = "/tmp/fastpath-test-netlink"

[interfaces]
home = "{HOME}"
wire = "{WIRE}"
home_link = "{LINK}"

[[mobile_node]]
home_address = "{HOA1}"
care_of_address = "2001:db8:2::10"

[[mobile_node]]
home_address = "{HOA2}"
care_of_address = "2001:db8:3::10"
"""


@pytest.fixture
def cfg():
    return parse(CONFIG, "test.toml")


@pytest.fixture
def ns():
    """A namespace with forwarding on and a veth pair hl0/hl1 (the home link)."""
    with Netns("nl") as n:
        n.forwarding(True)
        n.ip("link", "add", "hl0", "type", "veth", "peer", "name", "hl1")
        n.up("hl0")
        n.up("hl1")
        yield n


def routes(n: Netns) -> str:
    return n.ip("-6", "route").stdout


def proxies(n: Netns) -> str:
    return n.ip("-6", "neigh", "show", "proxy").stdout


def link(n: Netns, name: str) -> dict:
    return json.loads(n.ip("-j", "link", "show", name).stdout)[0]


def tuns(n: Netns, **kw) -> list[int]:
    return [open_tun(HOME, netns=n.name, **kw), open_tun(WIRE, netns=n.name, **kw)]


def close_all(fds):
    for fd in fds:
        os.close(fd)


# --------------------------------------------------------------------------
# open_tun


def test_open_tun_single_queue(ns):
    fd = open_tun("fpt-a", netns=ns.name)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert "fpt-a" in ns.links()
        assert subprocess.run(["ip", "link", "show", "fpt-a"], capture_output=True
                              ).returncode != 0, "the TUN leaked into the host namespace"
        detail = ns.ip("-d", "link", "show", "fpt-a").stdout
        assert "tun type tun pi off vnet_hdr off" in detail and "multi_queue" not in detail
        with pytest.raises(BlockingIOError):
            os.read(fd, 2048)
        # a second fd on a single-queue device: EBUSY, with a message that says so
        with pytest.raises(TunError) as ei:
            open_tun("fpt-a", netns=ns.name)
        assert ei.value.errno == errno.EBUSY and "busy" in str(ei.value)
    finally:
        os.close(fd)
    assert wait_for(lambda: "fpt-a" not in ns.links()), "TUN outlived its fd"


def test_open_tun_multi_queue(ns):
    fds = tun_queues("fpt-mq", 2, netns=ns.name)
    try:
        assert len(fds) == 2
        detail = ns.ip("-d", "link", "show", "fpt-mq").stdout
        assert "multi_queue numqueues 2" in detail
        # mixing single- and multi-queue opens of one device is refused
        with pytest.raises(TunError) as ei:
            open_tun("fpt-mq", netns=ns.name)
        assert ei.value.errno == errno.EINVAL and "multi-queue" in str(ei.value)
        # both queues carry packets into the kernel
        ns.up("fpt-mq")
        pkt = bytes.fromhex("6000000000083b40") + bytes(15) + b"\1" + bytes(15) + b"\2" + bytes(8)
        for fd in fds:
            assert os.write(fd, pkt) == len(pkt)
        stats = json.loads(ns.ip("-s", "-j", "link", "show", "fpt-mq").stdout)[0]
        assert stats["stats64"]["rx"]["packets"] == 2
    finally:
        close_all(fds)
    with pytest.raises(ValueError):
        tun_queues("fpt-mq", 2, multi_queue=False, netns=ns.name)


def test_open_tun_errors(ns, monkeypatch):
    with pytest.raises(ValueError, match="too long"):
        open_tun("x" * 16, netns=ns.name)
    with pytest.raises(TunError) as ei:
        open_tun(LINK, netns=ns.name)          # a veth, not a TUN
    assert ei.value.errno == errno.EINVAL and "not a TUN" in str(ei.value)
    assert "veth" in str(ei.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_tun("fpt-x", netns="fpt-no-such-namespace")
    import fastpath.tun
    monkeypatch.setattr(fastpath.tun, "TUN_PATH", "/dev/net/no-such-tun")
    with pytest.raises(TunError, match="modprobe tun") as ei:
        open_tun("fpt-x", netns=ns.name)
    assert ei.value.errno == errno.ENOENT


# --------------------------------------------------------------------------
# HostSetup


def test_host_setup_routes_proxies_and_close(ns, cfg):
    from fastpath.netlink import HostSetup, HostSetupError
    fds = tuns(ns)
    try:
        assert ns.sysctl_get(f"net.ipv6.conf.{LINK}.proxy_ndp") == "0"
        h = HostSetup(cfg, netns=ns.name, home_mtu=1400)
        h.cleanup_leftovers()
        h.setup()
        for name, mtu in ((HOME, 1400), (WIRE, 1500)):
            info = link(ns, name)
            assert "UP" in info["flags"] and info["mtu"] == mtu
        assert f"{HA} dev {WIRE} proto 250" in routes(ns)
        assert ns.sysctl_get(f"net.ipv6.conf.{LINK}.proxy_ndp") == "1"
        assert proxies(ns).strip() == ""

        h.bind(HOA1)
        h.bind(bytes.fromhex("20010db8000100000000000000000020"))   # as the SAD hands it over
        h.bind(HOA1)                                                # idempotent
        r, p = routes(ns), proxies(ns)
        assert f"{HOA1} dev {HOME} proto 250" in r and f"{HOA2} dev {HOME} proto 250" in r
        assert f"{HOA1} dev {LINK} proxy" in p and f"{HOA2} dev {LINK} proxy" in p
        assert {str(a) for a in h.bound} == {HOA1, HOA2}

        h.unbind(HOA2)
        h.unbind(HOA2)                                              # not bound: fine
        assert HOA2 not in routes(ns) and HOA2 not in proxies(ns)
        with pytest.raises(ValueError, match="not a home address"):
            h.bind("2001:db8:1::99")

        # from a running event loop (the control thread): sync and async forms
        async def control_plane():
            h.bind(HOA2)
            await h.aunbind(HOA2)
            await h.abind(HOA2)
        asyncio.run(control_plane())
        assert f"{HOA2} dev {HOME}" in routes(ns)

        h.close()
        h.close()
        r, p = routes(ns), proxies(ns)
        assert HA not in r and "2001:db8:1::" not in r and "proto 250" not in r
        assert p.strip() == ""
        assert ns.sysctl_get(f"net.ipv6.conf.{LINK}.proxy_ndp") == "0"
        assert ns.sysctl_get("net.ipv6.conf.all.forwarding") == "1"   # was on: untouched
        with pytest.raises(HostSetupError, match="closed"):
            h.bind(HOA1)
    finally:
        close_all(fds)
    host_routes = subprocess.run(["ip", "-6", "route"], capture_output=True, text=True).stdout
    assert "proto 250" not in host_routes


def test_forwarding_off_is_refused_or_enabled(ns, cfg):
    from fastpath.netlink import FORWARDING_SYSCTL, ForwardingDisabled, HostSetup
    ns.forwarding(False)
    fds = tuns(ns)
    try:
        h = HostSetup(cfg, netns=ns.name)
        with pytest.raises(ForwardingDisabled) as ei:
            h.setup()
        assert FORWARDING_SYSCTL in str(ei.value) and "--enable-forwarding" in str(ei.value)
        h.close()
        assert "proto 250" not in routes(ns)
        assert ns.sysctl_get(f"net.ipv6.conf.{LINK}.proxy_ndp") == "0"

        with HostSetup(cfg, netns=ns.name, enable_forwarding=True) as h:
            assert ns.sysctl_get(FORWARDING_SYSCTL) == "1"
            h.bind(HOA1)
            assert f"{HOA1} dev {HOME}" in routes(ns)
        assert ns.sysctl_get(FORWARDING_SYSCTL) == "0"             # restored
        assert "proto 250" not in routes(ns) and proxies(ns).strip() == ""
    finally:
        close_all(fds)


def test_setup_failure_undoes_what_it_did(ns, cfg):
    from fastpath.netlink import FORWARDING_SYSCTL, HostSetup, HostSetupError
    ns.forwarding(False)
    h = HostSetup(cfg, netns=ns.name, enable_forwarding=True)
    with pytest.raises(HostSetupError, match=f"home TUN '{HOME}' does not exist"):
        h.setup()                                                   # no TUNs opened
    assert ns.sysctl_get(FORWARDING_SYSCTL) == "0"
    h.close()
    ns.forwarding(True)
    fds = tuns(ns)
    try:
        h = HostSetup(cfg, netns=ns.name, home_link="nosuchlink")
        with pytest.raises(HostSetupError, match="home link 'nosuchlink'"):
            h.setup()
        h.close()
        assert "proto 250" not in routes(ns)
    finally:
        close_all(fds)


CHILD = """
import os, sys, time
from fastpath.config import parse
from fastpath.netlink import HostSetup
from fastpath.tun import open_tun, set_persist
cfg = parse(sys.stdin.read(), "test.toml")
fds = [open_tun(n) for n in ({home!r}, {wire!r})]
for fd in fds:
    set_persist(fd)          # the links outlive the kill, so do their routes
h = HostSetup(cfg, state_dir={state!r})
h.setup()
h.bind({hoa1!r})
h.bind({hoa2!r})
print("READY", flush=True)
time.sleep(60)
"""


def test_cleanup_leftovers_after_kill_9(ns, cfg, tmp_path):
    """Routes, proxy entries and the sysctls a kill -9'd run changed (their
    original values were kept in state_dir) are undone by the next run."""
    from fastpath.netlink import SYSCTL_FILE, HostSetup
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    state = str(tmp_path)
    proxy_ndp = f"net.ipv6.conf.{LINK}.proxy_ndp"
    assert ns.sysctl_get(proxy_ndp) == "0"
    code = textwrap.dedent(CHILD.format(home=HOME, wire=WIRE, hoa1=HOA1, hoa2=HOA2, state=state))
    child = ns.popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True, env=env)
    child.stdin.write(CONFIG)
    child.stdin.close()
    assert child.stdout.readline().strip() == "READY"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)

    # not fastpath's: must survive the clean-up
    ns.ip("-6", "route", "add", "2001:db8:1::99/128", "dev", LINK)
    ns.ip("-6", "neigh", "add", "proxy", "2001:db8:1::99", "dev", LINK)
    ns.ip("-6", "neigh", "add", "proxy", HOA1, "dev", "hl1")
    before_r, before_p = routes(ns), proxies(ns)
    assert f"{HA} dev {WIRE}" in before_r and f"{HOA1} dev {HOME}" in before_r
    assert f"{HOA1} dev {LINK} proxy" in before_p and f"{HOA2} dev {LINK} proxy" in before_p

    assert ns.sysctl_get(proxy_ndp) == "1" and (tmp_path / SYSCTL_FILE).exists()
    h = HostSetup(cfg, netns=ns.name, state_dir=state)   # "the restarted forwarder"
    removed = h.cleanup_leftovers()
    assert len(removed) == 7, removed                 # 3 routes, 2 proxy entries, 2 sysctls
    assert f"sysctl {proxy_ndp} = 0" in removed
    assert ns.sysctl_get(proxy_ndp) == "0" and not (tmp_path / SYSCTL_FILE).exists()
    r, p = routes(ns), proxies(ns)
    assert HA not in r and f"{HOA1} " not in r and f"{HOA2} " not in r
    assert "2001:db8:1::99 dev hl0" in r
    assert f"{HOA1} dev {LINK}" not in p and f"{HOA2} dev {LINK}" not in p
    assert "2001:db8:1::99 dev hl0 proxy" in p and f"{HOA1} dev hl1 proxy" in p
    assert h.cleanup_leftovers() == []
    # and it starts again on the same (persistent) devices
    fds = tuns(ns)
    try:
        h.setup()
        h.bind(HOA1)
        assert f"{HOA1} dev {HOME} proto 250" in routes(ns)
        assert (tmp_path / SYSCTL_FILE).exists()
        h.close()
        assert "proto 250" not in routes(ns)
        assert ns.sysctl_get(proxy_ndp) == "0" and not (tmp_path / SYSCTL_FILE).exists()
    finally:
        close_all(fds)
        ns.ip("link", "del", HOME)
        ns.ip("link", "del", WIRE)


MN_CONFIG = CONFIG.replace(f'home_link = "{LINK}"', 'home_link = ""')


def test_mobile_node_role(ns):
    from fastpath.netlink import HostSetup, HostSetupError
    cfg = parse(MN_CONFIG, "mn.toml")
    coa = "2001:db8:2::10"
    ns.addr(LINK, "2001:db8:2::1/64")             # the CoA's on-link prefix on hl0
    fds = tuns(ns)
    try:
        with pytest.raises(ValueError, match="not a home address"):
            HostSetup(cfg, role="mobile-node", home_address="2001:db8:1::99", netns=ns.name)
        with HostSetup(cfg, role="mobile-node", home_address=HOA1, netns=ns.name) as h:
            r = routes(ns)
            assert f"{coa} dev {WIRE} proto 250" in r
            assert f"default from {HOA1} dev {HOME} proto 250" in r
            assert f"{coa} dev {LINK} proxy" in proxies(ns)
            assert HOA1 in ns.ip("-6", "addr", "show", "dev", HOME).stdout
            assert ns.sysctl_get(f"net.ipv6.conf.{LINK}.proxy_ndp") == "1"
            h.bind(HOA1)                             # the HA's business: no-op here
        assert "proto 250" not in routes(ns) and proxies(ns).strip() == ""
        assert HOA1 not in ns.ip("-6", "addr", "show", "dev", HOME).stdout
        assert ns.sysctl_get(f"net.ipv6.conf.{LINK}.proxy_ndp") == "0"

        ns.addr("hl1", f"{coa}/64")                  # the CoA is local: refused
        h = HostSetup(cfg, role="mobile-node", home_address=HOA1, netns=ns.name)
        with pytest.raises(HostSetupError, match="assigned to hl1"):
            h.setup()
        h.close()
        assert "proto 250" not in routes(ns)
    finally:
        close_all(fds)


def _read_one(fd: int, timeout: float = 3.0) -> bytes | None:
    import select
    if not select.select([fd], [], [], timeout)[0]:
        return None
    return os.read(fd, 65535)


def _icmp_echo_from(fd: int, src: str, dst: str, timeout: float = 3.0) -> bool:
    """True once an ICMPv6 echo request src -> dst is read from the TUN fd."""
    import ipaddress
    import time
    want = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pkt = _read_one(fd, end - time.monotonic())
        if pkt and pkt[8:40] == want and pkt[6] == 58 and pkt[40] == 128:
            return True
    return False


def test_routes_reach_the_tuns_in_the_topology():
    """In the real topology the HA address lands in the HA's wire TUN, a bound
    HoA in its home TUN, and (mobile-node role, CoA owned by fastpath) the CoA
    in the MN's wire TUN -- the router finds it by proxy NDP."""
    from fastpath.netlink import HostSetup
    with topology(coa_on_mn=False) as t:
        cfg = parse(MN_CONFIG, "ha.toml")
        ha_fds = tuns(t.ha)
        mn_fds = tuns(t.mn)
        try:
            with HostSetup(cfg, netns=t.ha.name) as ha:
                ha.bind(t.HOA1)
                t.cn.ping(t.HA_ADDRESS, timeout=0.3)
                assert _icmp_echo_from(ha_fds[1], t.CN, t.HA_ADDRESS)
                t.cn.ping(t.HOA1, timeout=0.3)
                assert _icmp_echo_from(ha_fds[0], t.CN, t.HOA1)
                with HostSetup(cfg, role="mobile-node", home_address=t.HOA1,
                               netns=t.mn.name, enable_forwarding=True):
                    t.router.ping(t.COA1, timeout=0.3)
                    assert _icmp_echo_from(mn_fds[1], t.R_MN, t.COA1)
        finally:
            close_all(ha_fds + mn_fds)


# --------------------------------------------------------------------------
# tests/netns.py itself


def test_topology_smoke():
    with topology() as t:
        names = [n.name for n in t.namespaces]
        assert t.cn.ping(t.HA_CN)
        assert t.mn.ping(t.R_MN)
        assert t.mn.ping(t.R_MN2, src=t.COA2)
        atk = t.add_attacker()
        assert atk.ping(t.R_ATK)
        assert "2001:db8:ffff::/48 via 2001:db8:ff::1" in t.router.ip("-6", "route").stdout
        assert t.HA_ADDRESS not in t.ha.ip("-6", "addr").stdout
        names.append(atk.name)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in left for n in names)


def test_a_persistent_tun_gets_its_settings_back(ns, cfg):
    """A TUN an operator created (ip tuntap add: persistent) outlives the
    forwarder; its MTU, queue length and up/down state are put back on
    close, as the sysctls are."""
    from fastpath.netlink import HostSetup

    def link(name):
        return ns.ip("link", "show", name).stdout

    for name in (HOME, WIRE):
        ns.ip("tuntap", "add", "dev", name, "mode", "tun")
        ns.ip("link", "set", name, "mtu", "1400", "txqueuelen", "100")
    fds = tuns(ns)
    try:
        h = HostSetup(cfg, netns=ns.name)
        h.setup()
        assert "mtu 1500" in link(HOME) and "qlen 100 " not in link(HOME) + " "
        assert ",UP" in link(WIRE)
        h.close()
        for name in (HOME, WIRE):
            text = link(name)
            assert "mtu 1400" in text and "qlen 100" in text and ",UP" not in text, text
    finally:
        close_all(fds)
        for name in (HOME, WIRE):
            ns.ip("link", "del", name, check=False)
