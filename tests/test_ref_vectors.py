"""Every published vector of shared/vectors, reproduced by the reference path.

ESP packets are compared byte for byte; HMAC vectors go through the HMAC
helper that RefSA itself uses (tested below to be the one it uses).
"""
from __future__ import annotations

import dataclasses
import struct

import pytest

from fastpath import algorithms as algs
from fastpath.ref.esp import EspDrop, RefSA, frame, hmac_icv
from fastpath.verdicts import Reason
from tests.vectors import h, load, params, shared_dir

GCM = "gcm_esp_draft_mcgrew_gcm_test_01.json"
CBC = "rfc3602_aes_cbc.json"
HMAC_FILES = {
    "rfc2202_hmac_sha1.json": "vectors",
    "rfc4231_hmac_sha256.json": "vectors",
    "rfc4868_hmac_sha2.json": "vectors",
}
# Every list of vectors of every file, and who tests it.
COVERED = {GCM: {"vectors"}, CBC: {"aes_cbc_cases", "esp_packet_cases"},
           **{f: {k} for f, k in HMAC_FILES.items()}}


def test_every_vector_file_is_covered():
    base = shared_dir()
    if base is None:
        pytest.skip("shared/vectors not found")
    files = {p.name for p in (base / "vectors").glob("*.json")}
    assert files == set(COVERED), "a vector file is new or gone: cover it here"
    for name, keys in COVERED.items():
        lists = {k for k, v in load(name).items() if isinstance(v, list) and v
                 and isinstance(v[0], dict) and "id" in v[0]}
        assert lists == keys, name


# --- AES-GCM ESP packets (draft-mcgrew-gcm-test-01) ---------------------------

def gcm_algorithm(key_bits: int) -> algs.Algorithm:
    by_bits = {a.enc_key_len * 8: a for a in algs.ALGORITHMS.values() if a.is_aead}
    if key_bits in by_bits:
        return by_bits[key_bits]
    # AES-192-GCM is not a fastpath suite; the vector still exercises the code.
    return dataclasses.replace(by_bits[128], name=f"aes{key_bits}gcm16-vector",
                               enc_key_len=key_bits // 8)


def gcm_case(v):
    alg = gcm_algorithm(v["key_bits"])
    sa = RefSA(int(v["spi"], 16), alg, enc_key=h(v["key"]), salt=h(v["salt"]), esn=v["esn"])
    plaintext = h(v["plaintext"])
    payload = plaintext[:len(plaintext) - 2 - v["pad_length"]]
    return sa, int(v["seq"], 16), plaintext, payload


@pytest.mark.parametrize("v", params(GCM, "vectors"))
def test_gcm_vector_seal(v):
    sa, seq, plaintext, payload = gcm_case(v)
    assert h(v["key"]) + h(v["salt"]) == h(v["keymat_rfc4106"])
    assert sa.aad(seq) == h(v["aad"])
    assert seq & 0xFFFFFFFF == int(v["seq_low"], 16)
    # Our minimal padding rebuilds the published trailer exactly.
    assert plaintext[-1] == v["next_header"]
    assert frame(payload, v["next_header"], sa.alg.align) == plaintext
    esp = sa.seal_framed(seq, plaintext, h(v["iv"]))
    assert esp == h(v["esp_packet"])
    assert esp[-16:] == h(v["icv"])
    assert esp[16:-16] == h(v["ciphertext"])
    # seal() takes the explicit IV from the sequence number, never another one.
    if h(v["iv"]) == struct.pack("!Q", seq):
        assert sa.seal(seq, payload, v["next_header"]) == esp
    else:
        with pytest.raises(ValueError):
            sa.seal(seq, payload, v["next_header"], iv=h(v["iv"]))
        assert sa.seal(seq, payload, v["next_header"])[8:16] == struct.pack("!Q", seq)


@pytest.mark.parametrize("v", params(GCM, "vectors"))
def test_gcm_vector_open(v):
    sa, seq, plaintext, payload = gcm_case(v)
    esp = h(v["esp_packet"])
    assert sa.open(esp, seq >> 32) == (seq & 0xFFFFFFFF, payload, v["next_header"])
    if not v["esn"]:
        assert sa.open(esp, 7)[1] == payload       # seq_hi only matters with ESN
    else:
        # The high half is only in the AAD: a wrong guess fails the tag.
        with pytest.raises(EspDrop) as e:
            sa.open(esp, ((seq >> 32) + 1) & 0xFFFFFFFF)
        assert e.value.reason == Reason.ICV
    # (A flipped SPI byte would name another SA: that is the engine's lookup.)
    for pos in (5, 9, len(esp) // 2, len(esp) - 1):   # seq, IV, data, tag
        bad = bytearray(esp)
        bad[pos] ^= 0x01
        with pytest.raises(EspDrop) as e:
            sa.open(bytes(bad), seq >> 32)
        assert e.value.reason == Reason.ICV


# --- RFC 3602 ----------------------------------------------------------------

def cbc_no_icv(key_len: int) -> algs.Algorithm:
    """AES-CBC without integrity: only for RFC 3602's encryption-only samples
    (the config refuses such a suite, RFC 8221)."""
    return dataclasses.replace(algs.get("aes128-sha1"), name="aes-cbc-vector",
                               enc_key_len=key_len, auth_key_len=0,
                               hash=algs.HASH_NONE, icv_len=0)


@pytest.mark.parametrize("v", params(CBC, "aes_cbc_cases"))
def test_rfc3602_cbc(v):
    key = h(v["key"])
    sa = RefSA(1, cbc_no_icv(len(key)), enc_key=key)
    esp = sa.seal_framed(1, h(v["plaintext"]), h(v["iv"]))
    assert esp[8 + 16:] == h(v["ciphertext"])


@pytest.mark.parametrize("v", params(CBC, "esp_packet_cases"))
def test_rfc3602_esp_packet(v):
    key = h(v["key"])
    sa = RefSA(int(v["spi"], 16), cbc_no_icv(len(key)), enc_key=key)
    payload, nh = h(v["payload"]), v["next_header"]
    esp = sa.seal(v["seq"], payload, nh, iv=h(v["iv"]))
    assert esp == h(v["esp_packet"])
    assert esp[24:] == h(v["ciphertext"])
    if v.get("padding"):
        framed = frame(payload, nh, sa.alg.align)
        assert framed[len(payload):-2] == h(v["padding"])
        assert framed[-2] == v["pad_length"]
    if v.get("post_encryption_ip_header"):
        # The IPv4 total length accounts for exactly this ESP packet.
        assert struct.unpack("!H", h(v["post_encryption_ip_header"])[2:4])[0] == 20 + len(esp)
    assert sa.open(esp) == (v["seq"], payload, nh)


# --- HMAC --------------------------------------------------------------------

@pytest.mark.parametrize("v", params("rfc2202_hmac_sha1.json", "vectors"))
def test_rfc2202_hmac_sha1_96(v):
    key, data = h(v["key"]), h(v["data"])
    assert hmac_icv("sha1", key, data, 20) == h(v["digest"])
    icv_len = algs.get("aes128-sha1").icv_len
    assert hmac_icv("sha1", key, data, icv_len) == h(v["digest_96"])


@pytest.mark.parametrize("v", params("rfc4231_hmac_sha256.json", "vectors"))
def test_rfc4231_hmac_sha256_128(v):
    key, data = h(v["key"]), h(v["data"])
    if v.get("hmac_sha256"):
        assert hmac_icv("sha256", key, data, 32) == h(v["hmac_sha256"])
    icv_len = algs.get("aes128-sha256").icv_len
    assert hmac_icv("sha256", key, data, icv_len) == h(v["hmac_sha256_128"])


@pytest.mark.parametrize("v", params("rfc4868_hmac_sha2.json", "vectors"))
def test_rfc4868_hmac_sha2(v):
    key, data = h(v["key"]), h(v["data"])
    full = h(v["prf_hmac"])
    assert hmac_icv(v["hash"], key, data, len(full)) == full
    assert hmac_icv(v["hash"], key, data, v["truncated_bytes"]) == h(v["truncated_icv"])


@pytest.mark.parametrize("name", ["aes128-sha1", "aes256-sha256", "null-sha256"])
@pytest.mark.parametrize("esn", [False, True])
def test_esp_icv_is_the_vector_tested_hmac(name, esn):
    """The ICV RefSA puts on the wire is hmac_icv over SPI..next_header,
    followed by seq_hi with ESN (RFC 4303 §2.2.1) — the helper the vectors test."""
    alg = algs.get(name)
    sa = RefSA(0x1234, alg, enc_key=bytes(range(alg.enc_key_len)),
               auth_key=bytes(range(100, 100 + alg.auth_key_len)), esn=esn)
    seq = (7 << 32 | 9) if esn else 9
    esp = sa.seal(seq, b"hello", 41, iv=None if alg.iv_len == 0 else bytes(alg.iv_len))
    hash_name = {algs.HASH_SHA1: "sha1", algs.HASH_SHA256: "sha256"}[alg.hash]
    covered = esp[:-alg.icv_len] + (struct.pack("!I", 7) if esn else b"")
    assert esp[-alg.icv_len:] == hmac_icv(hash_name, sa.auth_key, covered, alg.icv_len)
