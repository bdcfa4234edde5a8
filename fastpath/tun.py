"""TUN devices (SPEC §1): ``fp-home`` and ``fp-wire`` are layer-3 TUNs opened
with ``IFF_TUN | IFF_NO_PI`` (no 4-byte packet-information header: every read
is one IPv6 packet starting at its version nibble).

``open_tun(name)`` attaches one file descriptor (one *queue*) to the device
``name``, creating the device when it does not exist.  The fd is non-blocking
and close-on-exec.  A device that is not persistent disappears with its last
fd, and with it every route through it: that is what makes a ``kill -9`` of
the forwarder mostly self-cleaning.

Multi-queue: with ``multi_queue=True`` the device is created with
``IFF_MULTI_QUEUE`` and every further ``open_tun(name, multi_queue=True)``
attaches one more queue (the kernel spreads flows over the queues by hash);
``tun_queues(name, n)`` opens ``n`` of them.  Opening a second fd on a device
that is *not* multi-queue fails with ``EBUSY``; opening with a multi-queue
setting different from the live device's fails with ``EINVAL`` -- both are
reported as :class:`TunError` with the reason.  Beware: the kernel does *not*
refuse a queue opened with another ``IFF_VNET_HDR`` (or ``IFF_NO_PI``) setting
-- it silently applies the newest queue's setting to the whole device, so
every queue of one device must be opened with the same ``vnet_hdr``
(``tun_queues`` does that).

``vnet_hdr=True`` adds ``IFF_VNET_HDR``: every read and write is then
prefixed by a ``struct virtio_net_hdr`` (10 bytes by default, see
:func:`set_vnet_hdr_size`), which is what GSO/GRO batching below the TUN
needs (:func:`set_offload` enables the offloads).

Network namespaces
------------------
A TUN device is created in the network namespace of the *thread* that opens
``/dev/net/tun``, and the fd keeps that device whatever the thread does next.
``open_tun(..., netns="NAME")`` therefore opens the device from a short-lived
helper thread that first ``setns(2)``'s itself into ``/run/netns/NAME`` (only
that thread changes namespace; the process stays where it is).  The product
runs in the namespace it was started in and passes ``netns=None``; tests use
the argument to build devices inside throw-away namespaces.
:func:`call_in_netns` is the same mechanism for any callable (the netlink
module uses it for sysctls).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading
from typing import Any, Callable, TypeVar

__all__ = [
    "TunError",
    "open_tun",
    "tun_queues",
    "set_persist",
    "set_offload",
    "set_vnet_hdr_size",
    "call_in_netns",
    "netns_path",
    "TUN_PATH",
    "IFNAMSIZ",
    "IFF_TUN",
    "IFF_TAP",
    "IFF_NO_PI",
    "IFF_MULTI_QUEUE",
    "IFF_VNET_HDR",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_TSO_ECN",
    "TUN_F_UFO",
    "TUN_F_USO4",
    "TUN_F_USO6",
]

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16                 # including the terminating NUL: names up to 15 bytes

# <linux/if_tun.h>
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8

# struct virtio_net_hdr: what every read and write of a TUN opened with
# IFF_VNET_HDR starts with (TUNSETVNETHDRSZ's default, which fastpath keeps;
# fastpath/core/offload.pxd VNET_HDR_LEN is the same number). All zeros: an
# ordinary packet, no offload asked of the kernel.
VNET_HDR_LEN = 10

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

_SIZEOF_IFREQ = 40            # struct ifreq on 64-bit Linux
_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x00000003
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class TunError(OSError):
    """A TUN device could not be opened; ``str()`` says why and what to do.

    It is an ``OSError`` carrying the kernel's ``errno`` (``EBUSY``, ``EINVAL``,
    ``ENOENT``, ``EPERM``...) so callers may still test ``e.errno``.
    """

    def __init__(self, err: int, message: str):
        super().__init__(err, message)

    def __str__(self) -> str:          # OSError's default is "[Errno n] msg"
        return self.strerror or super().__str__()


# --------------------------------------------------------------------------
# network namespaces (per thread)


def netns_path(netns: str) -> str:
    """``/run/netns/NAME`` for a name, the argument itself for a path."""
    return netns if "/" in netns else os.path.join("/run/netns", netns)


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def call_in_netns(netns: str | None, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run ``fn(*args, **kw)`` in network namespace ``netns`` and return its result.

    ``netns=None`` calls ``fn`` directly.  Otherwise a helper thread enters the
    namespace (``setns(2)`` changes only the calling thread) and runs ``fn``;
    its exception, if any, is re-raised here.  Sockets and fds ``fn`` creates
    stay bound to that namespace and can be used from any thread.
    """
    if netns is None:
        return fn(*args, **kw)
    path = netns_path(netns)
    try:
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"network namespace {netns!r} does not "
                                f"exist ({path} is missing)") from None
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            _setns(nsfd)
            box["result"] = fn(*args, **kw)
        except BaseException as e:      # handed to the caller
            box["error"] = e

    try:
        t = threading.Thread(target=runner, name=f"netns-{netns}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(nsfd)
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------
# TUN


def _check_name(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"TUN name must be a str, got {type(name).__name__}")
    raw = name.encode()
    if not raw:
        raise ValueError("TUN name is empty")
    if len(raw) >= IFNAMSIZ:
        raise ValueError(f"TUN name {name!r} is too long: {len(raw)} bytes, Linux "
                         f"interface names are at most {IFNAMSIZ - 1}")
    if name in (".", "..") or any(c in name for c in "/:%") or any(c.isspace() for c in name):
        raise ValueError(f"TUN name {name!r} is not a valid interface name "
                         f"(no '/', ':', '%' or white space, not '.' or '..')")
    return raw


def _driver_of(name: str) -> str | None:
    """The kernel driver behind interface ``name`` in this thread's namespace
    (ETHTOOL_GDRVINFO), or None when there is no such interface."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        info = bytearray(196)                          # struct ethtool_drvinfo
        struct.pack_into("I", info, 0, _ETHTOOL_GDRVINFO)
        buf = ctypes.create_string_buffer(bytes(info))
        ifr = struct.pack("16sP", name.encode(), ctypes.addressof(buf))
        ifr += bytes(_SIZEOF_IFREQ - len(ifr))
        try:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifr)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            return "?"                                 # exists, driver unknown
        return buf.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        s.close()


def _open(name: str, flags: int) -> int:
    raw = _check_name(name)
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError(errno.ENOENT, f"TUN device {TUN_PATH} is missing: load the tun "
                       f"module (modprobe tun) or, in a container, pass the device in "
                       f"(e.g. docker run --device /dev/net/tun)") from None
    except (PermissionError, OSError) as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise TunError(e.errno, f"cannot open {TUN_PATH}: {e.strerror}: creating "
                           f"TUN devices needs root or CAP_NET_ADMIN") from None
        if e.errno in (errno.ENODEV, errno.ENXIO):
            raise TunError(e.errno, f"cannot open {TUN_PATH}: the kernel has no TUN "
                           f"driver (modprobe tun; CONFIG_TUN)") from None
        raise TunError(e.errno, f"cannot open {TUN_PATH}: {e.strerror}") from None
    ifr = struct.pack("16sH", raw, flags)
    ifr += bytes(_SIZEOF_IFREQ - len(ifr))
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as e:
        os.close(fd)
        raise _explain(name, flags, e) from None
    return fd


def _explain(name: str, flags: int, e: OSError) -> TunError:
    err = e.errno
    mq = bool(flags & IFF_MULTI_QUEUE)
    if err == errno.EBUSY:
        return TunError(err, f"TUN device {name!r} is busy: it exists, is not multi-queue "
                        f"and another file descriptor (another fastpath, or another "
                        f"program) has it open; stop that process or choose another name"
                        f" (--home-if / --wire-if)")
    if err in (errno.EPERM, errno.EACCES):
        return TunError(err, f"cannot attach to TUN device {name!r}: {e.strerror}: it "
                        f"needs root or CAP_NET_ADMIN (or the device's owner)")
    if err == errno.EINVAL:
        driver = _driver_of(name)
        if driver is not None and driver != "tun":
            return TunError(err, f"interface {name!r} exists and is not a TUN device "
                            f"(driver {driver!r}): choose another name (--home-if / "
                            f"--wire-if) or delete that interface")
        if driver == "tun":
            return TunError(err, f"TUN/TAP device {name!r} exists with other settings: "
                            f"it is a TAP device, or its multi-queue setting differs "
                            f"from this request (multi_queue={mq}); close its other "
                            f"users or delete it")
    if err == errno.E2BIG:
        return TunError(err, f"TUN device {name!r} has the maximum number of queues")
    return TunError(err, f"TUNSETIFF on {name!r} failed: {e.strerror}")


def open_tun(name: str, *, multi_queue: bool = False, vnet_hdr: bool = False,
             netns: str | None = None) -> int:
    """Open (creating when needed) the layer-3 TUN ``name`` and return its fd.

    Flags: ``IFF_TUN | IFF_NO_PI`` plus ``IFF_MULTI_QUEUE`` / ``IFF_VNET_HDR``
    as asked.  The fd is ``O_NONBLOCK`` and close-on-exec.  Each call on a
    multi-queue device adds one queue.  ``netns`` (a name under /run/netns or a
    path) opens the device inside that namespace (see the module docstring).

    Raises ``ValueError`` for a bad name and :class:`TunError` (an ``OSError``
    with the kernel's errno) for everything the kernel refuses.
    """
    flags = IFF_TUN | IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    _check_name(name)
    return call_in_netns(netns, _open, name, flags)


def tun_queues(name: str, n: int, *, multi_queue: bool | None = None,
               vnet_hdr: bool = False, netns: str | None = None) -> list[int]:
    """Open ``n`` queues of TUN ``name``: a list of ``n`` fds.

    ``multi_queue`` defaults to ``n > 1``; ``n > 1`` without it is an error.
    On failure every fd opened so far is closed again.
    """
    if n < 1:
        raise ValueError(f"need at least one queue, got {n}")
    if multi_queue is None:
        multi_queue = n > 1
    if n > 1 and not multi_queue:
        raise ValueError(f"{n} queues of {name!r} need multi_queue=True")
    fds: list[int] = []
    try:
        for _ in range(n):
            fds.append(open_tun(name, multi_queue=multi_queue, vnet_hdr=vnet_hdr,
                                netns=netns))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def set_persist(fd: int, persist: bool = True) -> None:
    """TUNSETPERSIST: keep the device when its last fd closes (tests use it to
    simulate a device that outlives a killed forwarder)."""
    fcntl.ioctl(fd, TUNSETPERSIST, int(persist))


def set_offload(fd: int, flags: int) -> None:
    """TUNSETOFFLOAD with ``TUN_F_*`` flags (needs a device opened with vnet_hdr)."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


def set_vnet_hdr_size(fd: int, size: int) -> None:
    """TUNSETVNETHDRSZ: 10 (virtio_net_hdr, the default) or 12 (with num_buffers)."""
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", size))
