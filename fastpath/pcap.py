"""Minimal classic-pcap reader and writer for raw IPv6 captures.

fastpath reads and writes captures whose packets start with the IPv6 header:
LINKTYPE_RAW (101) is what it writes, and on read it also takes
LINKTYPE_IPV6 (229) and the raw-IP DLT values some systems put in the file
header (DLT_RAW 12 and 14).  Both byte orders and both the microsecond
(0xa1b2c3d4) and nanosecond (0xa1b23c4d) magics are read.  pcapng is not: it
is detected and refused with a hint (``editcap -F pcap``).

    for ts, data in read_packets("in.pcap"):
        ...
    with PcapWriter("out.pcap") as w:
        w.write(packet_bytes, ts=1.5)

Every problem with a file raises :class:`PcapError` naming the file and, for a
damaged record, its byte offset and packet number.
"""
from __future__ import annotations

import os
import struct
import time
from typing import BinaryIO, Iterator

__all__ = [
    "PcapError",
    "PcapReader",
    "PcapWriter",
    "read_packets",
    "LINKTYPE_RAW",
    "LINKTYPE_IPV6",
    "RAW_LINKTYPES",
]

LINKTYPE_RAW = 101
LINKTYPE_IPV6 = 229
DLT_RAW_12 = 12      # DLT_RAW on most BSDs
DLT_RAW_14 = 14      # DLT_RAW on OpenBSD
RAW_LINKTYPES = frozenset({LINKTYPE_RAW, LINKTYPE_IPV6, DLT_RAW_12, DLT_RAW_14})

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
_MAGIC_PCAPNG = 0x0A0D0D0A
_MAGIC_KUZNETZOV = 0xA1B2CD34

GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
DEFAULT_SNAPLEN = 262144
MAX_RECORD_LEN = 16 * 1024 * 1024    # anything larger is a damaged file

_LINKTYPE_NAMES = {
    0: "BSD loopback", 1: "Ethernet", 113: "Linux cooked (SLL, from -i any)",
    276: "Linux cooked v2 (SLL2)", 105: "IEEE 802.11", 127: "802.11 radiotap",
    228: "IPv4",
}


class PcapError(ValueError):
    """A capture file that cannot be read or written as raw-IPv6 pcap."""


def _name(f: object, fallback: str) -> str:
    n = getattr(f, "name", None)
    return str(n) if isinstance(n, (str, bytes, os.PathLike)) else fallback


class PcapReader:
    """Iterate over ``(timestamp, packet bytes)`` of a classic pcap file.

    ``source`` is a path or a binary file object.  Attributes after opening:
    ``linktype``, ``snaplen``, ``nanosecond`` (bool), ``byteorder`` ('<'/'>').
    ``truncated`` counts records whose captured length was below the original
    length (the packet was cut by the snapshot length); they are still yielded.
    """

    def __init__(self, source: str | os.PathLike | BinaryIO):
        if hasattr(source, "read"):
            self._f: BinaryIO = source  # type: ignore[assignment]
            self._own = False
            self.name = _name(source, "<pcap>")
        else:
            self.name = os.fspath(source)
            try:
                self._f = open(source, "rb")
            except OSError as e:
                raise PcapError(f"{self.name}: cannot open: {e.strerror or e}") from None
            self._own = True
        self.truncated = 0
        self.count = 0
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> None:
        hdr = self._f.read(GLOBAL_HEADER_LEN)
        if not hdr:
            raise PcapError(f"{self.name}: empty file, no pcap header")
        if len(hdr) >= 4:
            le, = struct.unpack("<I", hdr[:4])
            if le == _MAGIC_PCAPNG:
                raise PcapError(f"{self.name}: this is a pcapng file; fastpath reads "
                                f"classic pcap: convert it with "
                                f"'editcap -F pcap {self.name} OUT.pcap'")
        if len(hdr) < GLOBAL_HEADER_LEN:
            raise PcapError(f"{self.name}: truncated pcap header: {len(hdr)} of "
                            f"{GLOBAL_HEADER_LEN} bytes")
        for order in ("<", ">"):
            magic, = struct.unpack(order + "I", hdr[:4])
            if magic in (MAGIC_US, MAGIC_NS):
                break
            if magic == _MAGIC_KUZNETZOV:
                raise PcapError(f"{self.name}: 'modified' (Kuznetzov) pcap is not "
                                f"supported; convert with 'editcap -F pcap'")
        else:
            raise PcapError(f"{self.name}: not a pcap file (magic "
                            f"0x{hdr[:4].hex()}, expected a1b2c3d4 or a1b23c4d)")
        self.byteorder = order
        self.nanosecond = magic == MAGIC_NS
        (_, vmaj, vmin, _zone, _sigfigs, snaplen,
         network) = struct.unpack(order + "IHHiIII", hdr)
        if vmaj != 2:
            raise PcapError(f"{self.name}: unsupported pcap version {vmaj}.{vmin} "
                            f"(expected 2.4)")
        self.version = (vmaj, vmin)
        self.snaplen = snaplen
        lt = network & 0x03FFFFFF      # upper bits: FCS length / F flag
        if lt not in RAW_LINKTYPES:
            what = _LINKTYPE_NAMES.get(lt, "unknown")
            raise PcapError(
                f"{self.name}: link type {lt} ({what}) is not supported: fastpath "
                f"needs raw IPv6 packets (LINKTYPE_RAW 101 or LINKTYPE_IPV6 229), "
                f"as captured on its TUN interfaces; 'editcap -F pcap -C 14 -T rawip IN OUT' "
                f"converts an Ethernet capture")
        self.linktype = lt
        self._offset = GLOBAL_HEADER_LEN

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        return self

    def __next__(self) -> tuple[float, bytes]:
        f = self._f
        off = self._offset
        if f.closed:
            raise StopIteration
        rec = f.read(RECORD_HEADER_LEN)
        if not rec:
            self.close()
            raise StopIteration
        n = self.count + 1
        if len(rec) < RECORD_HEADER_LEN:
            self.close()
            raise PcapError(f"{self.name}: truncated record header at offset {off} "
                            f"(packet {n}): {len(rec)} of {RECORD_HEADER_LEN} bytes")
        sec, frac, incl, orig = struct.unpack(self.byteorder + "IIII", rec)
        if incl > MAX_RECORD_LEN:
            self.close()
            raise PcapError(f"{self.name}: damaged record at offset {off} (packet {n}): "
                            f"captured length {incl} is implausible")
        data = f.read(incl)
        if len(data) < incl:
            self.close()
            raise PcapError(f"{self.name}: truncated packet data at offset "
                            f"{off + RECORD_HEADER_LEN} (packet {n}, record at offset "
                            f"{off}): {len(data)} of {incl} bytes")
        if incl < orig:
            self.truncated += 1
        self._offset = off + RECORD_HEADER_LEN + incl
        self.count = n
        ts = sec + frac / (1e9 if self.nanosecond else 1e6)
        return ts, data

    def close(self) -> None:
        if self._own and not self._f.closed:
            self._f.close()

    def __enter__(self) -> "PcapReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_packets(path: str | os.PathLike | BinaryIO) -> Iterator[tuple[float, bytes]]:
    """``(timestamp seconds, packet bytes)`` for each record of a raw-IP pcap.

    The file header is checked at once (PcapError if it is not raw-IP pcap);
    a damaged record raises PcapError when iteration reaches it.  A file opened
    from a path is closed when iteration ends or fails.
    """
    return PcapReader(path)


class PcapWriter:
    """Write raw IPv6 packets as classic pcap (LINKTYPE_RAW, microseconds).

    ``PcapWriter(path)`` truncates/creates the file; a binary file object is
    also accepted (and left open).  ``write(data, ts=None)`` appends one packet;
    ``ts`` defaults to the current time.  A packet longer than ``snaplen``
    raises PcapError rather than being cut silently.
    """

    def __init__(self, dest: str | os.PathLike | BinaryIO, *,
                 linktype: int = LINKTYPE_RAW, snaplen: int = DEFAULT_SNAPLEN,
                 nanosecond: bool = False):
        if linktype not in RAW_LINKTYPES:
            raise PcapError(f"link type {linktype} is not a raw-IP link type")
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise PcapError(f"snaplen {snaplen} out of range")
        if hasattr(dest, "write"):
            self._f: BinaryIO = dest  # type: ignore[assignment]
            self._own = False
            self.name = _name(dest, "<pcap>")
        else:
            self.name = os.fspath(dest)
            try:
                self._f = open(dest, "wb")
            except OSError as e:
                raise PcapError(f"{self.name}: cannot create: {e.strerror or e}") from None
            self._own = True
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.count = 0
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        self._f.write(struct.pack("<IHHiIII", MAGIC_NS if nanosecond else MAGIC_US,
                                  2, 4, 0, 0, snaplen, linktype))

    def write(self, data: bytes | bytearray | memoryview, ts: float | None = None) -> None:
        if self._f is None:
            raise PcapError(f"{self.name}: write to a closed PcapWriter")
        n = len(data)
        if n > self.snaplen:
            raise PcapError(f"{self.name}: packet {self.count + 1} is {n} bytes, "
                            f"longer than the snapshot length {self.snaplen}")
        if ts is None:
            ts = time.time()
        if ts < 0:
            raise PcapError(f"{self.name}: negative timestamp {ts}")
        sec, frac = divmod(round(ts * self._scale), self._scale)
        if sec > 0xFFFFFFFF:
            raise PcapError(f"{self.name}: timestamp {ts} does not fit 32-bit seconds")
        try:
            self._f.write(struct.pack("<IIII", sec, frac, n, n))
            self._f.write(data)
        except OSError as e:                # a full disk, /dev/full, a closed pipe
            raise PcapError(f"{self.name}: cannot write: {e.strerror or e}") from None
        self.count += 1

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is None:
            return
        try:
            if self._own:
                self._f.close()
            else:
                self._f.flush()
        except OSError as e:                # buffered data that did not fit
            raise PcapError(f"{self.name}: cannot write: {e.strerror or e}") from None
        finally:
            self._f = None  # type: ignore[assignment]

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
