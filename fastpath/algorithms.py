"""ESP transforms fastpath supports (SPEC §3, RFC 8221), described once.

Every other module (config, reference path, Cython engine, Wireshark keys)
reads the numbers from here instead of repeating them.
"""
from __future__ import annotations

from dataclasses import dataclass

# Kind codes are shared with the Cython engine (pyx/sad.pxd ALG_KIND_*).
KIND_GCM = 1        # AES-GCM, RFC 4106
KIND_CBC_HMAC = 2   # AES-CBC (RFC 3602) + HMAC (RFC 2404 / RFC 4868)
KIND_NULL_HMAC = 3  # ENCR_NULL + HMAC: integrity only

HASH_NONE = 0
HASH_SHA1 = 1
HASH_SHA256 = 2


@dataclass(frozen=True)
class Algorithm:
    name: str            # config name, e.g. "aes128-sha1"
    kind: int            # KIND_*
    enc_key_len: int     # AES key bytes (GCM: without the 4-byte salt); 0 for NULL
    auth_key_len: int    # HMAC key bytes; 0 for GCM
    hash: int            # HASH_*
    icv_len: int         # bytes of ICV on the wire
    iv_len: int          # bytes of IV on the wire (GCM: explicit IV)
    align: int           # ESP payload+trailer alignment (RFC 4303 §2.4)
    wireshark_enc: str   # esp_sa encryption algorithm name in Wireshark's UAT
    wireshark_auth: str  # esp_sa authentication algorithm name in Wireshark's UAT

    @property
    def is_aead(self) -> bool:
        return self.kind == KIND_GCM

    @property
    def salt_len(self) -> int:
        return 4 if self.kind == KIND_GCM else 0

    @property
    def block(self) -> int:
        """Cipher block size for padding: 16 for CBC, else 4-byte alignment."""
        return self.align


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("aes128gcm16", KIND_GCM, 16, 0, HASH_NONE, 16, 8, 4,
                  "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
        Algorithm("aes256gcm16", KIND_GCM, 32, 0, HASH_NONE, 16, 8, 4,
                  "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
        Algorithm("aes128-sha1", KIND_CBC_HMAC, 16, 20, HASH_SHA1, 12, 16, 16,
                  "AES-CBC [RFC3602]", "HMAC-SHA-1-96 [RFC2404]"),
        Algorithm("aes256-sha1", KIND_CBC_HMAC, 32, 20, HASH_SHA1, 12, 16, 16,
                  "AES-CBC [RFC3602]", "HMAC-SHA-1-96 [RFC2404]"),
        Algorithm("aes128-sha256", KIND_CBC_HMAC, 16, 32, HASH_SHA256, 16, 16, 16,
                  "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
        Algorithm("aes256-sha256", KIND_CBC_HMAC, 32, 32, HASH_SHA256, 16, 16, 16,
                  "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
        Algorithm("null-sha256", KIND_NULL_HMAC, 0, 32, HASH_SHA256, 16, 0, 4,
                  "NULL", "HMAC-SHA-256-128 [RFC4868]"),
    )
}

# Names RFC 8221 forbids (MUST NOT) or that make no sense for us; the config
# refuses them with this reason instead of "unknown algorithm".
REFUSED: dict[str, str] = {
    "null": "NULL encryption without integrity is refused (RFC 8221 §5)",
    "null-null": "NULL encryption without integrity is refused (RFC 8221 §5)",
    "des-md5": "DES is MUST NOT (RFC 8221 §5)",
    "des-sha1": "DES is MUST NOT (RFC 8221 §5)",
    "3des-sha1": "3DES is SHOULD NOT+ and not offered (RFC 8221 §5)",
    "aes128-md5": "HMAC-MD5-96 is MUST NOT (RFC 8221 §6)",
    "aes128": "encryption without integrity is refused (RFC 8221 §5)",
    "aes256": "encryption without integrity is refused (RFC 8221 §5)",
}


def get(name: str) -> Algorithm:
    return ALGORITHMS[name]
