"""Host set-up around the two TUNs (SPEC §1), with pyroute2.

:class:`HostSetup` does what the kernel must do for fastpath, records each
change, and undoes exactly those changes on :meth:`HostSetup.close`:

home-agent role (the default)
    * both TUN links up, with their MTU: ``[home_agent] mtu`` on the wire TUN,
      the same on the home TUN unless ``home_mtu`` overrides it; and a queue
      of ``queue_len`` packets (txqueuelen: what the kernel holds for the
      worker to read; TUN's default of 500 overflows under bursts of TCP);
    * ``HA/128 dev <wire TUN>``: every packet to the HA address is read from
      the wire TUN;
    * :meth:`~HostSetup.bind` / :meth:`~HostSetup.unbind` a home address:
      ``HoA/128 dev <home TUN>`` and, when ``[interfaces] home_link`` is set,
      a proxy-NDP entry for the HoA on that link (``ip -6 neigh add proxy HoA
      dev LINK``) with ``net.ipv6.conf.<home_link>.proxy_ndp = 1``;
    * ``net.ipv6.conf.all.forwarding`` must be 1 (the kernel forwards between
      the TUNs and the real links): :class:`ForwardingDisabled` names the sysctl
      when it is 0, unless ``enable_forwarding=True`` turns it on -- and
      :meth:`close` turns it off again.

mobile-node role (``role="mobile-node"``, the mirror image used by the tests
and the demo: static care-of address from the config; ``home_address`` says
which mobile node of the config this is, default the first, as the forwarder)
    * both TUN links up with their MTU, forwarding as above;
    * ``CoA/128 dev <wire TUN>`` (the mirror of the HA address), and a proxy
      NDP entry for the CoA on the link whose on-link prefix holds the CoA
      (found in the routing table, or ``coa_link=``), so the access router
      can reach it.  The CoA must therefore *not* be a local address: a local
      address would be delivered to the host instead of routed into the TUN,
      and setup() refuses it with a clear message;
    * the home address on the home TUN (``HoA/128``, no DAD) and a
      source-specific default route ``::/0 from HoA/128 dev <home TUN>``:
      what applications send from the HoA goes into fastpath, which
      tunnels it to the HA; decapsulated packets written to the home TUN are
      delivered locally;
    * bind()/unbind() do nothing (the HA binds home addresses).

Routes and proxy entries carry the routing protocol number
:data:`RTPROT_FASTPATH` (``proto 250`` in ``ip -6 route`` /
``ip -6 neigh show proxy``).  :meth:`~HostSetup.cleanup_leftovers`, run before
setup() by a forwarder that starts after a ``kill -9``, removes the routes and
proxy entries a dead run left behind: routes to the configured HA address /
home addresses (care-of address in the mobile-node role) that go through the
configured TUN names or carry :data:`RTPROT_FASTPATH`, and proxy entries for
those addresses that carry :data:`RTPROT_FASTPATH` or sit on ``home_link``.
Sysctls a killed run changed (forwarding, proxy_ndp) stay as they are: the
safe state for a forwarder about to start again.  Note that a TUN that is not
persistent disappears with its last fd and takes its routes with it, so after
a kill the leftovers are mostly proxy entries.

Every change is logged at INFO on ``fastpath.netlink``.  Adding what already
exists is not an error (routes and proxy entries are *replaced*).

Threads, event loops and namespaces
-----------------------------------
pyroute2 0.9's synchronous ``IPRoute`` keeps its netlink socket and its
asyncio event loop *per thread* (``threading.local``), cannot be used from a
thread that runs an event loop ("Cannot run the event loop while another loop
is running"), and opens a new socket in whatever thread calls it.  HostSetup
therefore runs every netlink request and sysctl access on one private thread
("fastpath-netlink") and the public methods hand their work to it and wait:
they may be called from any thread, including the uvloop control thread
(``bind`` blocks it for the time of one netlink round trip; ``await
host.abind(hoa)`` does not).

``netns="NAME"`` (tests): the private thread first ``setns(2)``'s itself into
``/run/netns/NAME``, so the netlink socket *and* the ``/proc/sys/net`` files
it opens belong to that namespace while the rest of the process stays where
it is.  Open the TUNs in the same namespace with
``fastpath.tun.open_tun(name, netns="NAME")``.  The product passes nothing
and works in the namespace it runs in.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import queue
import socket
import threading
from concurrent.futures import Future
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any, Callable

from fastpath.tun import _setns, netns_path

__all__ = [
    "HostSetup",
    "HostSetupError",
    "ForwardingDisabled",
    "RTPROT_FASTPATH",
    "FORWARDING_SYSCTL",
]

log = logging.getLogger("fastpath.netlink")

SYSCTL_FILE = "changed-sysctls.json"   # in state_dir while a run has sysctls changed
RTPROT_FASTPATH = 250          # routing protocol number on fastpath's routes/proxies
FORWARDING_SYSCTL = "net.ipv6.conf.all.forwarding"
NTF_PROXY = 0x08
IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


class HostSetupError(RuntimeError):
    """The host cannot be prepared for fastpath; the message says why."""


class ForwardingDisabled(HostSetupError):
    """net.ipv6.conf.all.forwarding is 0 and enable_forwarding was not given."""


def _addr(value: Any) -> IPv6Address:
    if isinstance(value, IPv6Address):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != 16:
            raise ValueError(f"an IPv6 address is 16 bytes, got {len(value)}")
        return IPv6Address(bytes(value))
    return IPv6Address(value)


def _sysctl_path(name: str) -> str:
    # net.ipv6.conf.<ifname>.key -- interface names may contain dots
    parts = name.split(".")
    if parts[:3] == ["net", "ipv6", "conf"] and len(parts) > 5:
        parts = parts[:3] + [".".join(parts[3:-1])] + parts[-1:]
    return os.path.join("/proc/sys", *parts)


class _NetlinkThread:
    """One thread owning the IPRoute socket (and, in tests, a namespace)."""

    def __init__(self, netns: str | None):
        self.netns = netns
        self.nsfd = -1
        if netns is not None:
            path = netns_path(netns)
            try:
                self.nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise HostSetupError(f"network namespace {netns!r} does not exist "
                                     f"({path} is missing)") from None
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.ipr = None
        self.ready: Future = Future()
        self.thread = threading.Thread(target=self._main, name="fastpath-netlink",
                                       daemon=True)
        self.thread.start()
        try:
            self.ready.result()
        finally:
            if self.nsfd >= 0:
                os.close(self.nsfd)
                self.nsfd = -1

    def _main(self) -> None:
        try:
            if self.nsfd >= 0:
                _setns(self.nsfd)
            from pyroute2 import IPRoute
            self.ipr = IPRoute()
        except BaseException as e:
            self.ready.set_exception(e)
            return
        self.ready.set_result(None)
        while True:
            item = self.q.get()
            if item is None:
                break
            fn, args, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)
        try:
            self.ipr.close()
        except Exception:                      # pragma: no cover - best effort
            pass

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        if threading.current_thread() is self.thread:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)
            return fut
        if not self.thread.is_alive():
            raise HostSetupError("HostSetup is closed")
        self.q.put((fn, args, fut))
        return fut

    def call(self, fn: Callable, *args):
        return self.submit(fn, *args).result()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.q.put(None)
            if threading.current_thread() is not self.thread:
                self.thread.join(timeout=10)


QUEUE_LEN = 4096     # packets queued at a TUN for its worker (txqueuelen)


class HostSetup:
    """Routes, proxy NDP, link state and sysctls for one fastpath process.

    ``HostSetup(cfg, *, home_if=None, wire_if=None, home_link=None,
    home_mtu=None, enable_forwarding=False, role="home-agent",
    home_address=None, coa_link=None, netns=None, queue_len=QUEUE_LEN)``

    Names default to the config (``[interfaces] home``, ``wire``,
    ``home_link``); ``home_mtu`` overrides the home TUN's MTU (default
    ``[home_agent] mtu``, like the wire TUN).  ``home_address`` picks the
    mobile node in the mobile-node role; ``coa_link`` overrides the link on
    which that role proxies its CoA; ``netns`` is for tests (module docstring).
    Nothing changes until :meth:`setup` (or ``with``).  Call
    :meth:`cleanup_leftovers` before :meth:`setup` after a crash.  The HA role
    does not bind static bindings by itself: the caller binds each HoA that
    has a ``care_of_address`` after :meth:`setup`.
    """

    def __init__(self, cfg, *, home_if: str | None = None, wire_if: str | None = None,
                 home_link: str | None = None, home_mtu: int | None = None,
                 enable_forwarding: bool = False, role: str = "home-agent",
                 home_address: Any = None, coa_link: str | None = None,
                 netns: str | None = None, queue_len: int = QUEUE_LEN,
                 state_dir: Any = None):
        """`state_dir`: where the sysctls' original values are kept while
        changed, so that a run after a crash (cleanup_leftovers) restores them."""
        if role not in ("home-agent", "mobile-node"):
            raise ValueError(f"role must be 'home-agent' or 'mobile-node', got {role!r}")
        self.cfg = cfg
        self.role = role
        self.home_if = home_if or cfg.interfaces.home
        self.wire_if = wire_if or cfg.interfaces.wire
        self.home_link = cfg.interfaces.home_link if home_link is None else home_link
        self.wire_mtu = cfg.home_agent.mtu
        self.home_mtu = home_mtu if home_mtu is not None else cfg.home_agent.mtu
        self.enable_forwarding = enable_forwarding
        self.queue_len = queue_len
        self.coa_link = coa_link
        self.netns = netns
        self.ha_address: IPv6Address = cfg.home_agent.address
        self.home_addresses = frozenset(mn.home_address for mn in cfg.mobile_nodes)
        self.mn = None
        if role == "mobile-node":
            self.mn = self._pick_mn(home_address)
        if role == "mobile-node" and self.mn is not None:
            self.home_link = ""            # [interfaces] home_link is the HA's link
        self._thread: _NetlinkThread | None = _NetlinkThread(netns)
        self._started = False
        self._closed = False
        self._home_idx = self._wire_idx = 0
        self._home_link_idx = 0
        # what we changed, in order
        self._routes: dict[tuple, tuple[str, int, str]] = {}  # key -> (desc, idx, ifname)
        self._proxies: dict[IPv6Address, tuple[int, str]] = {}
        self._addrs: list[tuple[IPv6Address, int, str]] = []
        self._sysctls: list[tuple[str, str]] = []             # (name, old value)
        self._links: list[tuple[int, str, tuple]] = []        # (idx, name, (mtu, qlen, up))
        self._sysctl_file = Path(state_dir) / SYSCTL_FILE if state_dir is not None else None
        self._bound: set[IPv6Address] = set()

    def _pick_mn(self, home_address):
        mns = self.cfg.mobile_nodes
        if home_address is None:
            if not mns:
                raise ValueError("mobile-node role: the config has no mobile node")
            if len(mns) > 1:
                log.info("mobile-node role: no home address given, taking the first "
                         "mobile node of the config (%s)", mns[0].home_address)
            return mns[0]
        mn = self.cfg.mobile_node(_addr(home_address))
        if mn is None:
            raise ValueError(f"mobile-node role: {_addr(home_address)} is not a home "
                             f"address of the config")
        return mn

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> "HostSetup":
        if not self._started:
            self.setup()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        ns = f", netns={self.netns!r}" if self.netns else ""
        return (f"HostSetup(role={self.role}, home={self.home_if}, wire={self.wire_if}, "
                f"home_link={self.home_link or '-'}{ns})")

    @property
    def bound(self) -> frozenset[IPv6Address]:
        """Home addresses currently routed into the home TUN."""
        return frozenset(self._bound)

    # -- thread plumbing --------------------------------------------------------------
    def _call(self, fn: Callable, *args):
        if self._thread is None:
            raise HostSetupError("HostSetup is closed")
        return self._thread.call(fn, *args)

    @property
    def _ipr(self):
        return self._thread.ipr

    # -- sysctls (run on the netlink thread: its namespace) ------------------------
    def _sysctl_get(self, name: str) -> str | None:
        try:
            with open(_sysctl_path(name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def _sysctl_set(self, name: str, value: str) -> None:
        old = self._sysctl_get(name)
        if old is None:
            raise HostSetupError(f"sysctl {name} does not exist")
        if old == value:
            return
        self._sysctls.append((name, old))
        self._save_sysctls()        # on disk before the change: a crash cannot lose `old`
        try:
            with open(_sysctl_path(name), "w") as f:
                f.write(value)
        except OSError as e:
            raise HostSetupError(f"cannot set {name} = {value}: {e.strerror}") from None
        log.info("sysctl %s = %s (was %s)", name, value, old)

    def _save_sysctls(self) -> None:
        if self._sysctl_file is None:
            return
        if not self._sysctls:
            self._sysctl_file.unlink(missing_ok=True)
            return
        tmp = self._sysctl_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(dict(self._sysctls), indent=1))
            os.replace(tmp, self._sysctl_file)
        except OSError as e:
            raise HostSetupError(f"{self._sysctl_file}: cannot record the sysctls' original "
                                 f"values: {e.strerror}") from None

    def _restore_saved_sysctls(self) -> list[str]:
        """The sysctls a killed run changed, back to what they were before it."""
        if self._sysctl_file is None:
            return []
        try:
            saved = json.loads(self._sysctl_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); sysctls a killed run changed are not restored",
                        self._sysctl_file, e)
            return []
        done = []
        for name, old in (saved.items() if isinstance(saved, dict) else ()):
            if self._sysctl_get(name) in (None, str(old)):
                continue
            try:
                with open(_sysctl_path(name), "w") as f:
                    f.write(str(old))
            except OSError as e:
                log.warning("could not restore %s = %s: %s", name, old, e.strerror)
                continue
            desc = f"sysctl {name} = {old}"
            log.info("leftover %s restored", desc)
            done.append(desc)
        self._sysctl_file.unlink(missing_ok=True)
        return done

    # -- links ------------------------------------------------------------------------
    def _index(self, ifname: str) -> int | None:
        found = self._ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def _tun_index(self, ifname: str, side: str) -> int:
        idx = self._index(ifname)
        if idx is None:
            raise HostSetupError(f"{side} TUN {ifname!r} does not exist: open it "
                                 f"(fastpath.tun.open_tun) before HostSetup.setup(); a "
                                 f"TUN lives only while a file descriptor holds it")
        return idx

    def _link_up(self, idx: int, ifname: str, mtu: int) -> None:
        # No link-local address on our TUNs: otherwise the kernel sends MLD
        # reports and router solicitations into them on every start, which the
        # engine can only count as drops and punts. (The TUN goes away with
        # its fds, so this is not recorded for restoring.)
        try:
            with open(_sysctl_path(f"net.ipv6.conf.{ifname}.addr_gen_mode"), "w") as f:
                f.write("1")
        except OSError as e:
            log.debug("addr_gen_mode on %s: %s", ifname, e)
        # A persistent TUN (ip tuntap add) outlives us: what we change on it
        # is put back by _undo, as a sysctl would be.
        try:
            [link] = self._ipr.get_links(idx)
            before = (link.get("IFLA_MTU"), link.get("IFLA_TXQLEN"), link["flags"] & 1)
        except Exception:
            before = None
        try:
            self._ipr.link("set", index=idx, mtu=mtu, txqlen=self.queue_len, state="up")
        except Exception as e:
            raise HostSetupError(f"cannot set {ifname} up with MTU {mtu}: {e}") from None
        if before is not None and before != (mtu, self.queue_len, 1):
            self._links.append((idx, ifname, before))
        log.info("link %s up, mtu %d, queue %d packets", ifname, mtu, self.queue_len)

    # -- routes -----------------------------------------------------------------------
    def _route_add(self, dst: IPv6Address, idx: int, ifname: str,
                   src: IPv6Address | None = None) -> None:
        key = ("route", dst, 128, src)
        kw: dict[str, Any] = dict(dst=f"{dst}/128", oif=idx, family=socket.AF_INET6,
                                  proto=RTPROT_FASTPATH, table=RT_TABLE_MAIN)
        desc = f"{dst}/128 dev {ifname}"
        if src is not None:
            kw["dst"] = "::/0"
            kw["src"] = f"{src}/128"
            key = ("route", IPv6Address("::"), 0, src)
            desc = f"default from {src}/128 dev {ifname}"
        try:
            self._ipr.route("replace", **kw)
        except Exception as e:
            raise HostSetupError(f"cannot add route {desc}: {e}") from None
        self._routes[key] = (desc, idx, ifname)
        log.info("route %s proto %d", desc, RTPROT_FASTPATH)

    def _route_del(self, key: tuple) -> None:
        desc, idx, ifname = self._routes.pop(key)
        _, dst, plen, src = key
        kw: dict[str, Any] = dict(dst=f"{dst}/{plen}", oif=idx, family=socket.AF_INET6,
                                  table=RT_TABLE_MAIN)
        if src is not None:
            kw["src"] = f"{src}/128"
        if self._delete(lambda: self._ipr.route("del", **kw), f"route {desc}"):
            log.info("route %s removed", desc)

    def _delete(self, fn: Callable, what: str) -> bool:
        try:
            fn()
        except Exception as e:
            code = getattr(e, "code", None)
            if code in _GONE:
                log.debug("%s already gone", what)
                return False
            log.warning("could not remove %s: %s", what, e)
            return False
        return True

    # -- proxy NDP --------------------------------------------------------------------
    def _proxy_add(self, addr: IPv6Address, idx: int, link: str) -> None:
        try:
            self._ipr.neigh("replace", dst=str(addr), ifindex=idx, flags=NTF_PROXY,
                            family=socket.AF_INET6, NDA_PROTOCOL=RTPROT_FASTPATH)
        except Exception as e:
            raise HostSetupError(f"cannot add proxy NDP entry {addr} on {link}: {e}") from None
        self._proxies[addr] = (idx, link)
        log.info("proxy NDP %s on %s", addr, link)

    def _proxy_del(self, addr: IPv6Address) -> None:
        idx, link = self._proxies.pop(addr)
        if self._delete(lambda: self._ipr.neigh("del", dst=str(addr), ifindex=idx,
                                                flags=NTF_PROXY, family=socket.AF_INET6),
                        f"proxy NDP {addr} on {link}"):
            log.info("proxy NDP %s on %s removed", addr, link)

    def _proxy_dump(self) -> list:
        # pyroute2 0.9 turns every dump keyword except family into a reply
        # filter; the kernel lists proxy entries only when the *request* says
        # ndm_flags = NTF_PROXY, which an explicit dump_filter lets through.
        return list(self._ipr.neigh("dump", family=socket.AF_INET6, flags=NTF_PROXY,
                                    dump_filter=lambda msg: bool(msg["flags"] & NTF_PROXY)))

    # -- setup ------------------------------------------------------------------------
    def setup(self) -> None:
        """Links up, MTU, forwarding check, HA (or CoA) route, proxy-NDP sysctl.

        On error everything done so far is undone and :class:`HostSetupError`
        (or :class:`ForwardingDisabled`) is raised.
        """
        if self._closed:
            raise HostSetupError("HostSetup is closed")
        if self._started:
            return
        try:
            self._call(self._setup)
        except BaseException:
            self._call(self._undo)
            raise
        self._started = True

    def _setup(self) -> None:
        self._check_forwarding()
        self._home_idx = self._tun_index(self.home_if, "home")
        self._wire_idx = self._tun_index(self.wire_if, "wire")
        if self.home_link:
            idx = self._index(self.home_link)
            if idx is None:
                raise HostSetupError(f"home link {self.home_link!r} ([interfaces] "
                                     f"home_link) does not exist")
            self._home_link_idx = idx
        self._link_up(self._wire_idx, self.wire_if, self.wire_mtu)
        self._link_up(self._home_idx, self.home_if, self.home_mtu)
        if self.role == "home-agent":
            self._route_add(self.ha_address, self._wire_idx, self.wire_if)
            if self.home_link:
                self._sysctl_set(f"net.ipv6.conf.{self.home_link}.proxy_ndp", "1")
                # answer proxied solicitations at once (the default waits up to
                # 0.8 s, and the neighbour drops what it queued meanwhile)
                self._sysctl_set(f"net.ipv6.neigh.{self.home_link}.proxy_delay", "0")
                fwd = self._sysctl_get(f"net.ipv6.conf.{self.home_link}.forwarding")
                if fwd == "0":
                    log.warning("net.ipv6.conf.%s.forwarding = 0: the kernel answers "
                                "neighbour solicitations for proxied home addresses "
                                "only on links with forwarding on", self.home_link)
        else:
            self._setup_mobile_node()

    def _check_forwarding(self) -> None:
        value = self._sysctl_get(FORWARDING_SYSCTL)
        if value == "1":
            return
        if value is None:
            raise HostSetupError(f"{FORWARDING_SYSCTL} does not exist: is IPv6 disabled "
                                 f"(ipv6.disable=1 on the kernel command line)?")
        if not self.enable_forwarding:
            raise ForwardingDisabled(
                f"IPv6 forwarding is off ({FORWARDING_SYSCTL} = {value}): the kernel "
                f"must forward packets between fastpath's TUNs and the network. Turn it "
                f"on (sysctl -w {FORWARDING_SYSCTL}=1) or run with --enable-forwarding "
                f"(fastpath then sets it and restores it on exit)")
        self._sysctl_set(FORWARDING_SYSCTL, "1")

    def _setup_mobile_node(self) -> None:
        mn = self.mn
        coa, hoa = mn.care_of_address, mn.home_address
        if coa is None:
            raise HostSetupError(f"mobile-node role: {mn.entry} (HoA {hoa}) has no "
                                 f"care_of_address in the config")
        where = self._local_address(coa)
        if where is not None:
            raise HostSetupError(
                f"mobile-node role: the care-of address {coa} is assigned to {where}: "
                f"the kernel would deliver the tunnel packets to the host instead of "
                f"routing them into {self.wire_if}; remove the address (fastpath "
                f"routes it into {self.wire_if} and answers neighbour solicitations "
                f"for it by proxy NDP)")
        link = self.coa_link
        if link:
            idx = self._index(link)
            if idx is None:
                raise HostSetupError(f"mobile-node role: care-of link {link!r} does not exist")
        else:
            idx, link = self._onlink_for(coa)
        self._route_coa(coa, idx, link)
        try:
            self._ipr.addr("add", index=self._home_idx, address=str(hoa), prefixlen=128,
                           flags=IFA_F_NODAD)
        except Exception as e:
            if getattr(e, "code", None) != errno.EEXIST:
                raise HostSetupError(f"cannot add {hoa}/128 to {self.home_if}: {e}") from None
        self._addrs.append((hoa, self._home_idx, self.home_if))
        log.info("address %s/128 on %s", hoa, self.home_if)
        self._route_add(IPv6Address("::"), self._home_idx, self.home_if, src=hoa)

    def _local_address(self, addr: IPv6Address) -> str | None:
        for msg in self._ipr.get_addr(family=socket.AF_INET6):
            if msg.get("IFA_ADDRESS") and IPv6Address(msg.get("IFA_ADDRESS")) == addr:
                idx = msg["index"]
                names = [l.get("IFLA_IFNAME") for l in self._ipr.get_links(idx)]
                return names[0] if names else f"ifindex {idx}"
        return None

    def _onlink_for(self, addr: IPv6Address) -> tuple[int, str]:
        """The link whose on-link prefix route (no gateway) holds addr."""
        best = (-1, 0, "")
        for r in self._ipr.route("dump", family=socket.AF_INET6):
            if r.get("RTA_TABLE", r["table"]) != RT_TABLE_MAIN or r.get("RTA_GATEWAY"):
                continue
            oif = r.get("RTA_OIF")
            if not oif or oif in (self._home_idx, self._wire_idx):
                continue
            dst = r.get("RTA_DST") or "::"
            try:
                net = IPv6Network(f"{dst}/{r['dst_len']}")
            except ValueError:
                continue
            if r["dst_len"] >= 128 or r["dst_len"] == 0 or addr not in net:
                continue
            if r["dst_len"] > best[0]:
                names = [l.get("IFLA_IFNAME") for l in self._ipr.get_links(oif)]
                best = (r["dst_len"], oif, names[0] if names else "")
        return best[1], best[2]

    # -- bindings -----------------------------------------------------------------------
    def bind(self, hoa) -> None:
        """Route home address ``hoa`` (str, bytes or IPv6Address) into the home
        TUN and proxy it on the home link.  Binding a bound HoA does nothing."""
        hoa = _addr(hoa)
        if self.role != "home-agent":
            log.debug("mobile-node role: bind(%s) ignored", hoa)
            return
        if hoa not in self.home_addresses:
            raise ValueError(f"{hoa} is not a home address of the config")
        self._call(self._bind, hoa)

    def unbind(self, hoa) -> None:
        """Remove the route and proxy entry of ``hoa``; unbound HoAs are ignored."""
        hoa = _addr(hoa)
        if self.role != "home-agent":
            return
        self._call(self._unbind, hoa)

    def relocate(self, coa) -> None:
        """Mobile-node role: this node now also uses care-of address ``coa``:
        route it into the wire TUN and answer neighbour solicitations for it on
        the link whose prefix holds it. The old care-of address stays routed
        (packets already in flight to it still arrive) until close()."""
        coa = _addr(coa)
        if self.role != "mobile-node":
            raise PermissionError("only a mobile node relocates itself")
        self._call(self._relocate, coa)

    def _relocate(self, coa: IPv6Address) -> None:
        if ("route", coa, 128, None) not in self._routes:
            self._route_coa(coa, *self._onlink_for(coa))

    def _route_coa(self, coa: IPv6Address, idx: int, link: str) -> None:
        """A care-of address of ours: routed into the wire TUN, and answered
        for by proxy NDP on `link` so the access router reaches it."""
        self._route_add(coa, self._wire_idx, self.wire_if)
        if idx:
            self._sysctl_set(f"net.ipv6.conf.{link}.proxy_ndp", "1")
            self._sysctl_set(f"net.ipv6.neigh.{link}.proxy_delay", "0")
            self._proxy_add(coa, idx, link)
        else:
            log.warning("mobile-node role: no on-link prefix holds the care-of address "
                        "%s: no proxy NDP entry; the access router must reach it by "
                        "other means", coa)

    async def abind(self, hoa) -> None:
        """:meth:`bind` for a coroutine: waits without blocking the event loop."""
        hoa = _addr(hoa)
        if self.role != "home-agent":
            return
        if hoa not in self.home_addresses:
            raise ValueError(f"{hoa} is not a home address of the config")
        await self._acall(self._bind, hoa)

    async def aunbind(self, hoa) -> None:
        """:meth:`unbind` for a coroutine."""
        hoa = _addr(hoa)
        if self.role != "home-agent":
            return
        await self._acall(self._unbind, hoa)

    async def _acall(self, fn: Callable, *args):
        if self._thread is None:
            raise HostSetupError("HostSetup is closed")
        return await asyncio.wrap_future(self._thread.submit(fn, *args))

    def _bind(self, hoa: IPv6Address) -> None:
        if not self._started:
            raise HostSetupError("bind() before setup()")
        if hoa in self._bound:
            return
        self._route_add(hoa, self._home_idx, self.home_if)
        self._bound.add(hoa)
        if self.home_link:
            self._proxy_add(hoa, self._home_link_idx, self.home_link)

    def _unbind(self, hoa: IPv6Address) -> None:
        if hoa not in self._bound:
            log.debug("unbind(%s): not bound", hoa)
            return
        self._bound.discard(hoa)
        if hoa in self._proxies:
            self._proxy_del(hoa)
        key = ("route", hoa, 128, None)
        if key in self._routes:
            self._route_del(key)

    # -- teardown -----------------------------------------------------------------------
    def close(self) -> None:
        """Undo everything this HostSetup did, then stop its thread. Idempotent."""
        if self._thread is None:
            return
        try:
            self._call(self._undo)
        finally:
            self._started = False
            self._closed = True
            self._thread.stop()
            self._thread = None

    def _undo(self) -> None:
        for hoa in list(self._bound):
            self._unbind(hoa)
        for addr in list(self._proxies):
            self._proxy_del(addr)
        for key in list(self._routes):
            self._route_del(key)
        for addr, idx, ifname in reversed(self._addrs):
            if self._delete(lambda: self._ipr.addr("del", index=idx, address=str(addr),
                                                   prefixlen=128),
                            f"address {addr}/128 on {ifname}"):
                log.info("address %s/128 on %s removed", addr, ifname)
        self._addrs.clear()
        for idx, ifname, (mtu, qlen, up) in reversed(self._links):
            # only a link that is still there: a TUN without persist went with its fds
            if self._delete(lambda: self._ipr.link("set", index=idx, mtu=mtu, txqlen=qlen,
                                                   state="up" if up else "down"),
                            f"link {ifname} settings"):
                log.info("link %s back to mtu %s, queue %s, %s", ifname, mtu, qlen,
                         "up" if up else "down")
        self._links.clear()
        for name, old in reversed(self._sysctls):
            try:
                with open(_sysctl_path(name), "w") as f:
                    f.write(old)
                log.info("sysctl %s = %s (restored)", name, old)
            except OSError as e:
                log.warning("could not restore %s = %s: %s", name, old, e.strerror)
        self._sysctls.clear()
        try:
            self._save_sysctls()
        except HostSetupError as e:
            log.warning("%s", e)

    # -- after a crash ------------------------------------------------------------------
    def cleanup_leftovers(self) -> list[str]:
        """Remove the routes and proxy entries a killed run left behind.

        Returns one line per removed item (each also logged at INFO).  Call it
        before :meth:`setup`; what this instance installed itself is kept.
        """
        return self._call(self._cleanup_leftovers)

    def _cleanup_leftovers(self) -> list[str]:
        if self.role == "home-agent":
            targets = {self.ha_address} | set(self.home_addresses)
            proxy_targets = set(self.home_addresses)
            sources: set[IPv6Address] = set()
        else:
            coa = self.mn.care_of_address
            targets = {coa} if coa is not None else set()
            proxy_targets = set(targets)
            sources = {self.mn.home_address}
        tun_idx = {i for i in (self._index(self.home_if), self._index(self.wire_if)) if i}
        names = {l["index"]: l.get("IFLA_IFNAME") for l in self._ipr.get_links()}
        link_idx = self._index(self.home_link) if self.home_link else None
        mine_routes = {(k[1], k[2], k[3]) for k in self._routes}
        removed: list[str] = [] if self._sysctls else self._restore_saved_sysctls()

        for r in self._ipr.route("dump", family=socket.AF_INET6):
            if r.get("RTA_TABLE", r["table"]) != RT_TABLE_MAIN:
                continue
            oif = r.get("RTA_OIF")
            dst = IPv6Address(r.get("RTA_DST") or "::")
            src = IPv6Address(r.get("RTA_SRC")) if r.get("RTA_SRC") else None
            ours = r["proto"] == RTPROT_FASTPATH or (oif in tun_idx)
            hit = (r["dst_len"] == 128 and dst in targets and r["src_len"] == 0) or \
                  (src is not None and r["src_len"] == 128 and src in sources
                   and r["proto"] == RTPROT_FASTPATH)
            if not (ours and hit):
                continue
            if (dst, r["dst_len"], src) in mine_routes:
                continue
            kw: dict[str, Any] = dict(dst=f"{dst}/{r['dst_len']}", family=socket.AF_INET6,
                                      table=RT_TABLE_MAIN)
            if oif:
                kw["oif"] = oif
            if src is not None:
                kw["src"] = f"{src}/{r['src_len']}"
            desc = (f"route {dst}/{r['dst_len']}" + (f" from {src}/{r['src_len']}" if src else "")
                    + f" dev {names.get(oif, oif)} proto {r['proto']}")
            if self._delete(lambda: self._ipr.route("del", **kw), desc):
                log.info("leftover %s removed", desc)
                removed.append(desc)

        for n in self._proxy_dump():
            dst = n.get("NDA_DST")
            if not dst:
                continue
            addr = IPv6Address(dst)
            idx = n["ifindex"]
            if addr not in proxy_targets or self._proxies.get(addr, (None,))[0] == idx:
                continue
            if not (n.get("NDA_PROTOCOL") == RTPROT_FASTPATH or (link_idx and idx == link_idx)):
                continue
            desc = f"proxy NDP {addr} on {names.get(idx, idx)}"
            if self._delete(lambda: self._ipr.neigh("del", dst=str(addr), ifindex=idx,
                                                    flags=NTF_PROXY, family=socket.AF_INET6),
                            desc):
                log.info("leftover %s removed", desc)
                removed.append(desc)
        if not removed:
            log.debug("no leftovers")
        return removed
