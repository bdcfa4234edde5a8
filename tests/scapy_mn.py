"""A small Mobile IPv6 mobile node written with scapy (a test helper, not a
test file): the home agent's peer in tests/test_e2e_scapy_mn.py, so that
``fastpath run`` is exercised by an implementation that is not its own.

It shares no code with fastpath: packets are built, sealed and opened with
scapy's MIPv6 layers and ``SecurityAssociation``; they leave through a raw
IPv6 socket with the header included (``IPPROTO_RAW``, bound to the care-of
address they come from, so that source routing picks the right interface)
and are captured with ``AF_PACKET`` sockets on the MN's interfaces.

Run inside the mobile node's namespace::

    python tests/scapy_mn.py PARAMS_JSON

PARAMS_JSON: {"hoa": ..., "ha": ..., "ifaces": ["mn0", "mn1"],
"sas": {"payload_in"|"payload_out"|"binding_in"|"binding_out": {"spi": int,
"algorithm": "aes128-sha1"|"aes256-sha256"|"aes128gcm16"|...,
"enc_key"/"auth_key"/"key": hex}}} ("in" = MN -> HA, as in the HA's config).

Then one JSON command per line on stdin, one JSON answer per line on
stdout (the first line written is {"ready": true}):

* ``{"op": "send_tunnel", "coa": A, "packets": [hex]}``: each inner packet
  sealed in ESP tunnel mode with payload_in (outer CoA -> HA) and sent.
  Answer {"seqs": [ESP sequence numbers]}.
* ``{"op": "send_bu", "coa": A, "seq": n, "lifetime": units, "flags": "AH",
  "alt": A2 or null, "protect": "esp"|"clear"|"bad_icv", "esp_seq": n or
  null}``: IPv6(CoA -> HA) . DestOpt(HAO=HoA) . MH BU [. AltCoA], sealed in
  ESP transport mode with binding_in (unless "clear"; "bad_icv" flips the
  last bit of the ICV).  Answer {"esp_seq": n or null, "hex": wire}.
* ``{"op": "take", "iface": I, "sa": "payload_out"|"binding_out", "n": n,
  "timeout": s}``: wait for n ESP packets of that SA captured on I (fewer
  when the timeout passes), remove them from the capture and answer
  {"packets": [...]} with, per packet, the outer header, the ESP sequence
  number, the checks of the ESP trailer done here (padding 1, 2, 3, ... and
  next header) and the decrypted contents (the inner packet in tunnel mode;
  the dissected Binding Ack in transport mode).  An ICV that does not verify
  is reported as {"error": ...} for that packet.
* ``{"op": "count", "iface": I}``: {"esp": {spi: n}} of everything captured
  and not yet taken.
* ``{"op": "quit"}``.
"""
from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time

ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
IPV6_HDRINCL = getattr(socket, "IPV6_HDRINCL", 36)

SCAPY_ALGS = {  # algorithm name in the HA config -> SecurityAssociation keywords
    "aes128-sha1": ("AES-CBC", "HMAC-SHA1-96"),
    "aes256-sha1": ("AES-CBC", "HMAC-SHA1-96"),
    "aes128-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes256-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes128gcm16": ("AES-GCM", None),
    "aes256gcm16": ("AES-GCM", None),
    "null-sha256": ("NULL", "SHA2-256-128"),
}


def security_association(sa: dict, tunnel_header=None):
    """scapy's end of one SA of the config (`sa` as in PARAMS_JSON)."""
    from scapy.layers.ipsec import ESP, SecurityAssociation
    crypt, auth = SCAPY_ALGS[sa["algorithm"]]
    kw = {"crypt_algo": crypt}
    if crypt == "AES-GCM":
        kw["crypt_key"] = bytes.fromhex(sa["key"])          # AES key || 4-byte salt
    elif crypt == "AES-CBC":
        kw["crypt_key"] = bytes.fromhex(sa["enc_key"])
    if auth is not None:
        kw.update(auth_algo=auth, auth_key=bytes.fromhex(sa["auth_key"]))
    if tunnel_header is not None:
        kw["tunnel_header"] = tunnel_header
    return SecurityAssociation(ESP, spi=sa["spi"], **kw)


class Capture:
    """Incoming IPv6 packets carrying ESP, per interface (AF_PACKET)."""

    def __init__(self, ifaces):
        self.cond = threading.Condition()
        self.packets = {i: [] for i in ifaces}       # iface -> [bytes]
        self.socks = {}
        for i in ifaces:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IPV6))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((i, ETH_P_IPV6))
            self.socks[i] = s
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        by_fd = {s.fileno(): i for i, s in self.socks.items()}
        while True:
            ready, _, _ = select.select(list(self.socks.values()), [], [], 0.2)
            for s in ready:
                data, addr = s.recvfrom(65535)
                if addr[2] == PACKET_OUTGOING or len(data) < 40 or data[0] >> 4 != 6:
                    continue
                if _esp_spi(data) is None:
                    continue
                with self.cond:
                    self.packets[by_fd[s.fileno()]].append(data)
                    self.cond.notify_all()

    def take(self, iface, spi, n, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                mine = [p for p in self.packets[iface] if _esp_spi(p) == spi]
                left = end - time.monotonic()
                if len(mine) >= n or left <= 0:
                    break
                self.cond.wait(left)
            mine = mine[:n]
            taken = set(map(id, mine))
            self.packets[iface] = [p for p in self.packets[iface] if id(p) not in taken]
            return mine

    def count(self, iface):
        with self.cond:
            out = {}
            for p in self.packets[iface]:
                spi = _esp_spi(p)
                out[spi] = out.get(spi, 0) + 1
            return out


def _esp_spi(data: bytes):
    """The SPI of the ESP header after the IPv6 extension headers, or None."""
    nh, off = data[6], 40
    while nh in (0, 43, 60) and off + 8 <= len(data):
        nh, off = data[off], off + (data[off + 1] + 1) * 8
    if nh != 50 or off + 8 > len(data):
        return None
    return int.from_bytes(data[off:off + 4], "big")


class MobileNode:
    def __init__(self, params):
        from scapy.layers.inet6 import IPv6
        self.p = params
        self.hoa, self.ha = params["hoa"], params["ha"]
        self.sas = params["sas"]
        self.seq = {"payload_in": 0, "binding_in": 0}
        self.capture = Capture(params["ifaces"])
        self.raw = {}
        self.IPv6 = IPv6

    def _sock(self, coa):
        if coa not in self.raw:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
            s.bind((coa, 0))        # the route lookup uses it: source-specific default
            self.raw[coa] = s
        return self.raw[coa]

    def _send(self, coa, wire: bytes):
        self._sock(coa).sendto(wire, (self.ha, 0))

    # -- commands ------------------------------------------------------------------
    def send_tunnel(self, coa, packets):
        IPv6 = self.IPv6
        sa = security_association(self.sas["payload_in"], IPv6(src=coa, dst=self.ha))
        seqs = []
        for h in packets:
            self.seq["payload_in"] += 1
            n = self.seq["payload_in"]
            wire = bytes(sa.encrypt(IPv6(bytes.fromhex(h)), seq_num=n))
            self._send(coa, wire)
            seqs.append(n)
            time.sleep(0.001)
        return {"seqs": seqs}

    def send_bu(self, coa, seq, lifetime, flags="AH", alt=None, protect="esp", esp_seq=None):
        from scapy.layers.inet6 import HAO, IPv6ExtHdrDestOpt, MIP6MH_BU, MIP6OptAltCoA
        IPv6 = self.IPv6
        opts = [MIP6OptAltCoA(acoa=alt)] if alt else []
        # built and re-parsed: the MH checksum uses the HAO's address as source
        pkt = IPv6(bytes(IPv6(src=coa, dst=self.ha)
                         / IPv6ExtHdrDestOpt(options=[HAO(hoa=self.hoa)])
                         / MIP6MH_BU(seq=seq, flags=flags, mhtime=lifetime, options=opts)))
        if protect == "clear":
            wire, esp_seq = bytes(pkt), None
        else:
            if esp_seq is None:
                self.seq["binding_in"] += 1
                esp_seq = self.seq["binding_in"]
            else:
                self.seq["binding_in"] = max(self.seq["binding_in"], esp_seq)
            wire = bytes(security_association(self.sas["binding_in"]).encrypt(pkt, seq_num=esp_seq))
            if protect == "bad_icv":
                wire = wire[:-1] + bytes([wire[-1] ^ 0x01])
        self._send(coa, wire)
        return {"esp_seq": esp_seq, "hex": wire.hex()}

    def take(self, iface, sa, n, timeout):
        spi = self.sas[sa]["spi"]
        return {"packets": [self._open(sa, w) for w in self.capture.take(iface, spi, n, timeout)]}

    def count(self, iface):
        return {"esp": {str(k): v for k, v in self.capture.count(iface).items()}}

    # -- opening what the home agent sent ----------------------------------------------
    def _open(self, name, wire: bytes) -> dict:
        from scapy.layers.inet6 import IPv6ExtHdrRouting, MIP6MH_BA
        from scapy.layers.ipsec import ESP
        IPv6 = self.IPv6
        outer = IPv6(wire)
        tunnel = name.startswith("payload")
        sa = security_association(self.sas[name], IPv6(src=self.ha, dst=outer.dst)
                                  if tunnel else None)
        out = {"src": outer.src, "dst": outer.dst, "hlim": outer.hlim,
               "seq": outer[ESP].seq, "spi": outer[ESP].spi, "len": len(wire)}
        if IPv6ExtHdrRouting in outer:
            rh = outer[IPv6ExtHdrRouting]
            out["rh"] = {"type": rh.type, "segleft": rh.segleft, "addresses": list(rh.addresses)}
        # the trailer, checked here (scapy's decrypt drops it unchecked)
        try:
            esp = outer[ESP]
            sa.check_spi(outer)
            sa.auth_algo.verify(esp, sa.auth_key)
            icv = sa.crypt_icv_size or sa.crypt_algo.icv_size or sa.auth_algo.icv_size
            plain = sa.crypt_algo.decrypt(sa, esp, sa.crypt_key, icv)
        except Exception as e:           # noqa: BLE001 - reported to the test
            out["error"] = f"{type(e).__name__}: {e}"
            return out
        pad = bytes(plain.padding)
        out["padding_ok"] = pad == bytes(range(1, len(pad) + 1))
        out["next_header"] = plain.nh
        # re-parsed: scapy's transport-mode decrypt stacks the payload under
        # the IPv6 header even when extension headers (here the RH2) precede it
        opened = IPv6(bytes(sa.decrypt(IPv6(wire))))
        if tunnel:
            out["inner"] = bytes(opened).hex()
            return out
        out["plain"] = bytes(opened).hex()
        if MIP6MH_BA in opened:
            ba = opened[MIP6MH_BA]
            again = IPv6(bytes(opened))
            del again[MIP6MH_BA].cksum
            out["ba"] = {"status": ba.status, "seq": ba.seq, "mhtime": ba.mhtime,
                         "flags": str(ba.flags), "cksum_ok":
                         IPv6(bytes(again))[MIP6MH_BA].cksum == ba.cksum}
        return out


def main() -> None:
    params = json.loads(sys.argv[1])
    node = MobileNode(params)
    ops = {"send_tunnel": node.send_tunnel, "send_bu": node.send_bu, "take": node.take,
           "count": node.count}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        try:
            reply = ops[op](**cmd)
        except Exception as e:           # noqa: BLE001 - the test shows it
            import traceback
            reply = {"exception": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
