"""ESP (RFC 4303) of the reference path: framing, seal/open, anti-replay.

Framing, per docs/engine-semantics.md:

    SPI(4) | seq_lo(4) | IV | ciphertext(payload | pad 1,2,3.. | pad_len | nh) | ICV

Algorithm numbers (key, IV, ICV lengths, alignment) come from
fastpath.algorithms; nothing here repeats them.
"""
from __future__ import annotations

import hmac as _hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fastpath import algorithms as algs
from fastpath.algorithms import Algorithm
from fastpath.verdicts import Reason

HEADER_LEN = 8          # SPI + low 32 bits of the sequence number
TRAILER_LEN = 2         # pad length + next header
SEQ32_MAX = 0xFFFFFFFF
SEQ64_MAX = 0xFFFFFFFFFFFFFFFF


class EspDrop(Exception):
    """An inbound ESP packet is dropped for ``reason``."""

    def __init__(self, reason: Reason):
        super().__init__(reason.name.lower())
        self.reason = reason


# --- HMAC --------------------------------------------------------------------

_HASHES = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_HASH_OF_ALG = {algs.HASH_SHA1: "sha1", algs.HASH_SHA256: "sha256"}


def hmac_icv(hash_name: str, key: bytes, data: bytes, icv_len: int) -> bytes:
    """HMAC(key, data) truncated to its leading ``icv_len`` bytes
    (RFC 2404 / RFC 4868). ``hash_name``: sha1, sha256, sha384, sha512."""
    mac = crypto_hmac.HMAC(key, _HASHES[hash_name]())
    mac.update(data)
    return mac.finalize()[:icv_len]


# --- framing -----------------------------------------------------------------

def pad_length(payload_len: int, align: int) -> int:
    """Minimal padding so that payload + pad + 2 is a multiple of ``align``."""
    return -(payload_len + TRAILER_LEN) % align


def frame(payload: bytes, next_header: int, align: int) -> bytes:
    """Plaintext to encrypt: payload, pad 1,2,3.., pad length, next header."""
    n = pad_length(len(payload), align)
    return bytes(payload) + bytes(range(1, n + 1)) + bytes([n, next_header])


def unframe(plaintext: bytes) -> tuple[bytes, int]:
    """(payload, next_header) of a decrypted plaintext; EspDrop(BAD_PADDING)
    if the pad length overruns the plaintext or a pad byte is not 1,2,3,..."""
    n = plaintext[-2]
    end = len(plaintext) - TRAILER_LEN - n
    if end < 0:
        raise EspDrop(Reason.BAD_PADDING)
    if plaintext[end:-TRAILER_LEN] != bytes(range(1, n + 1)):
        raise EspDrop(Reason.BAD_PADDING)
    return plaintext[:end], plaintext[-1]


def parse_header(esp: bytes) -> tuple[int, int]:
    """(spi, seq_lo) of an ESP packet of at least 8 bytes."""
    return struct.unpack_from("!II", esp)


# --- the SA ------------------------------------------------------------------

class RefSA:
    """One ESP SA's transform: keys and algorithm, plus its replay window.

    Sequence numbers given to seal() are 64-bit; the wire carries the low 32
    bits, and with ESN the high 32 bits enter the ICV / GCM AAD only.
    """

    def __init__(self, spi: int, algorithm: str | Algorithm, enc_key: bytes = b"",
                 auth_key: bytes = b"", salt: bytes = b"", esn: bool = False,
                 replay_window: int = 1024):
        alg = algs.get(algorithm) if isinstance(algorithm, str) else algorithm
        if not 0 <= spi <= SEQ32_MAX:
            raise ValueError("SPI is 32 bits")
        if len(enc_key) != alg.enc_key_len:
            raise ValueError(f"{alg.name}: enc_key is {alg.enc_key_len} bytes")
        if len(auth_key) != alg.auth_key_len:
            raise ValueError(f"{alg.name}: auth_key is {alg.auth_key_len} bytes")
        if len(salt) != alg.salt_len:
            raise ValueError(f"{alg.name}: salt is {alg.salt_len} bytes")
        self.spi = spi
        self.alg = alg
        self.enc_key = bytes(enc_key)
        self.auth_key = bytes(auth_key)
        self.salt = bytes(salt)
        self.esn = esn
        self.replay = ReplayWindow(replay_window, esn)
        self._hash = _HASH_OF_ALG.get(alg.hash)
        self._gcm = AESGCM(self.enc_key) if alg.is_aead else None

    @property
    def max_seq(self) -> int:
        return SEQ64_MAX if self.esn else SEQ32_MAX

    # -- helpers shared by seal and open

    def aad(self, seq: int) -> bytes:
        """GCM AAD (RFC 4106 §5): SPI | seq_hi | seq_lo with ESN, else SPI | seq_lo."""
        if self.esn:
            return struct.pack("!IQ", self.spi, seq)
        return struct.pack("!II", self.spi, seq & SEQ32_MAX)

    def _icv(self, covered: bytes, seq: int) -> bytes:
        """HMAC ICV over SPI..next_header, then seq_hi with ESN (RFC 4303 §2.2.1).
        An algorithm without a hash has an empty ICV (only the RFC 3602 sample
        packets of the test vectors use that)."""
        if self._hash is None:
            return b""
        if self.esn:
            covered += struct.pack("!I", seq >> 32)
        return hmac_icv(self._hash, self.auth_key, covered, self.alg.icv_len)

    def framing_ok(self, esp: bytes) -> bool:
        """Inbound step 3 length rule: room for IV + trailer + ICV, and a
        ciphertext that is a whole number of ``align`` blocks."""
        body = len(esp) - HEADER_LEN
        if body < self.alg.iv_len + TRAILER_LEN + self.alg.icv_len:
            return False
        return (body - self.alg.iv_len - self.alg.icv_len) % self.alg.align == 0

    # -- outbound

    def max_payload(self, room: int) -> int:
        """The longest payload whose ESP packet fits in `room` bytes."""
        a = self.alg
        return ((room - 8 - a.iv_len - a.icv_len) // a.align) * a.align - 2

    def sealed_len(self, payload_len: int) -> int:
        """Length of seal()'s output for a payload of this length."""
        a = self.alg
        framed = payload_len + pad_length(payload_len, a.align) + TRAILER_LEN
        return HEADER_LEN + a.iv_len + framed + a.icv_len

    def seal(self, seq: int, payload: bytes, next_header: int,
             iv: bytes | None = None) -> bytes:
        """SPI..ICV for ``payload`` with minimal padding.

        CBC: ``iv`` or 16 random bytes. GCM: the explicit IV is the 64-bit
        sequence number (unique per key by construction); an ``iv`` other than
        None must equal it. NULL: no IV, ``iv`` must be None or empty.
        """
        if not 0 <= seq <= self.max_seq:
            raise ValueError(f"sequence number {seq:#x} out of range for this SA")
        if self.alg.is_aead:
            want = struct.pack("!Q", seq)
            if iv is not None and bytes(iv) != want:
                raise ValueError("GCM explicit IV must be the sequence number")
            iv = want
        elif self.alg.iv_len == 0:
            if iv:
                raise ValueError(f"{self.alg.name} has no IV")
            iv = b""
        elif iv is None:
            iv = os.urandom(self.alg.iv_len)
        return self.seal_framed(seq, frame(payload, next_header, self.alg.align), iv)

    def seal_framed(self, seq: int, plaintext: bytes, iv: bytes) -> bytes:
        """Encrypt and authenticate an already framed plaintext with this IV,
        without any of seal()'s rules: for test vectors and crafted packets
        (bad padding with a valid ICV, sequence number 0, ...)."""
        if len(iv) != self.alg.iv_len:
            raise ValueError(f"{self.alg.name}: IV is {self.alg.iv_len} bytes")
        header = struct.pack("!II", self.spi, seq & SEQ32_MAX)
        if self.alg.is_aead:
            sealed = self._gcm.encrypt(self.salt + iv, bytes(plaintext), self.aad(seq))
            return header + iv + sealed
        if self.alg.kind == algs.KIND_CBC_HMAC:
            enc = Cipher(algorithms.AES(self.enc_key), modes.CBC(iv)).encryptor()
            ciphertext = enc.update(bytes(plaintext)) + enc.finalize()
        else:
            ciphertext = bytes(plaintext)
        covered = header + iv + ciphertext
        return covered + self._icv(covered, seq)

    # -- inbound

    def open(self, esp: bytes, seq_hi: int = 0) -> tuple[int, bytes, int]:
        """Verify and decrypt; (seq_lo, payload, next_header).

        ``seq_hi`` is the inferred high half of the sequence number (ESN only;
        ignored otherwise). Replay is the caller's: see ReplayWindow.
        Raises EspDrop(MALFORMED | ICV | BAD_PADDING).
        """
        esp = bytes(esp)
        if not self.framing_ok(esp):
            raise EspDrop(Reason.MALFORMED)
        _, seq_lo = parse_header(esp)
        seq = (seq_hi << 32 | seq_lo) if self.esn else seq_lo
        a = self.alg
        iv = esp[HEADER_LEN:HEADER_LEN + a.iv_len]
        if a.is_aead:
            try:
                plaintext = self._gcm.decrypt(self.salt + iv, esp[HEADER_LEN + a.iv_len:],
                                              self.aad(seq))
            except InvalidTag:
                raise EspDrop(Reason.ICV) from None
        else:
            covered = esp[:len(esp) - a.icv_len]
            # Constant-time: the ICV must not leak how many bytes matched.
            if not _hmac.compare_digest(self._icv(covered, seq), esp[len(covered):]):
                raise EspDrop(Reason.ICV)
            ciphertext = covered[HEADER_LEN + a.iv_len:]
            if a.kind == algs.KIND_CBC_HMAC:
                dec = Cipher(algorithms.AES(self.enc_key), modes.CBC(iv)).decryptor()
                plaintext = dec.update(ciphertext) + dec.finalize()
            else:
                plaintext = ciphertext
        payload, next_header = unframe(plaintext)
        return seq_lo, payload, next_header


# --- anti-replay -------------------------------------------------------------

class ReplayWindow:
    """RFC 4303 Appendix A anti-replay window of ``size`` packets (0 = off).

    T (``top``) is the highest sequence number accepted so far (0 before
    the first). Bit i of ``bitmap`` records whether T - i has been accepted.
    The 64-bit number 0 is never sent (counters start at 1), so it is always
    refused, window or not, ESN or not; infer() maps numbers that would fall
    before it to 0 as well.
    """

    def __init__(self, size: int, esn: bool):
        if size < 0:
            raise ValueError("replay window size is >= 0")
        self.size = size
        self.esn = esn
        self.top = 0
        self.bitmap = 0

    def infer(self, seq_lo: int) -> int:
        """64-bit sequence number of a received low half (RFC 4303 A2.1).

        Without ESN the wire value is the sequence number. With ESN the high
        half is T's, or the next one when seq_lo is below the window, or the
        previous one when the window straddles a 2^32 boundary and seq_lo
        lies in its older part. Without a window, 2^31 stands in for W so the
        candidate closest to T wins. There is no subspace before the first:
        a number that would fall there comes back as 0 (refused by check()).
        """
        if not self.esn:
            return seq_lo
        w = self.size or 1 << 31
        th, tl = self.top >> 32, self.top & SEQ32_MAX
        bottom = (tl - w + 1) & SEQ32_MAX
        if tl >= w - 1:          # window within one subspace
            hi = th if seq_lo >= bottom else th + 1
        else:                    # window spans two subspaces
            hi = th - 1 if seq_lo >= bottom else th
        if hi < 0:
            return 0
        return hi << 32 | seq_lo

    def check(self, seq: int) -> bool:
        """True if ``seq`` (64-bit) may be accepted (pre-check, no state change)."""
        if seq == 0:
            return False
        if self.size == 0:
            return True
        if seq > self.top:
            return True
        if seq + self.size <= self.top:
            return False
        return not (self.bitmap >> (self.top - seq)) & 1

    def commit(self, seq: int) -> None:
        """Record ``seq`` as accepted (after its ICV checked out)."""
        if seq > self.top:
            shift = seq - self.top
            # A jump past the whole window forgets it (and avoids a 2^32-bit shift).
            self.bitmap = (self.bitmap << shift | 1) if shift < self.size else 1
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)
        self.bitmap &= (1 << self.size) - 1
