"""The stitched AES-CBC + HMAC-SHA1 / HMAC-SHA-256 sealing of lone packets
(fastpath/core/includes/fp_cbc_hmac.h, the ipsec-mb backend's path for
fewer than MB_FEW_SEAL packets) against the reference path, OpenSSL and scapy.

The routine only overlaps the two chains once the hash trails the cipher by
FP_STITCH_LAG (256) bytes, so the sizes here reach well past that, and past
a 1500-byte MTU; every pad length is hit on the way."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation

from fastpath import algorithms as algs
from fastpath.core import esp
from fastpath.core.esp import EspSA
from fastpath.ref.esp import RefSA
from fastpath.ref.ipv6 import ntop
from fastpath.verdicts import Reason, Verdict

from topo import BACKENDS, CN, COA1, HA, MN1, SPI, inner, make_topo

needs_stitched = pytest.mark.skipif(
    "ipsecmb" not in BACKENDS or not esp.stitched_available(),
    reason="the stitched routine serves the ipsec-mb backend on CPUs with AES-NI and SHA-NI")

CBC_ALGS = ["aes128-sha1", "aes256-sha1", "aes128-sha256", "aes256-sha256"]
SCAPY_AUTH = {"sha1": "HMAC-SHA1-96", "sha256": "SHA2-256-128"}


def sas(alg, esn, rnd):
    a = algs.get(alg)
    enc = bytes(rnd.getrandbits(8) for _ in range(a.enc_key_len))
    auth = bytes(rnd.getrandbits(8) for _ in range(a.auth_key_len))
    stitched = EspSA(a, 0x5151, enc, auth, esn=esn, backend="ipsecmb")
    plain = EspSA(a, 0x5151, enc, auth, esn=esn, backend="openssl")
    ref = RefSA(0x5151, a, enc, auth, b"", esn=esn, replay_window=0)
    return stitched, plain, ref, (enc, auth)


@needs_stitched
def test_used_only_where_it_applies():
    rnd = random.Random(1)
    for alg in CBC_ALGS:
        stitched, plain, _, _ = sas(alg, False, rnd)
        assert stitched.stitched and not plain.stitched
    for alg in ("aes128gcm16", "aes256gcm16", "null-sha256"):
        a = algs.get(alg)
        sa = EspSA(a, 1, bytes(a.enc_key_len), bytes(a.auth_key_len), bytes(a.salt_len),
                   backend="ipsecmb")
        assert not sa.stitched, alg
    was = esp._set_stitched(False)
    try:
        assert not sas("aes128-sha1", False, rnd)[0].stitched
    finally:
        esp._set_stitched(was)


@needs_stitched
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("alg", CBC_ALGS)
def test_seal_matches_reference_and_openssl(alg, esn):
    rnd = random.Random(f"{alg}{esn}")
    stitched, plain, ref, _ = sas(alg, esn, rnd)
    for size in list(range(0, 1600, 13)) + list(range(1380, 1460)) + [4000, 9000]:
        payload = bytes(rnd.getrandbits(8) for _ in range(size))
        seq = rnd.getrandbits(64 if esn else 32) or 1
        iv = bytes(rnd.getrandbits(8) for _ in range(16))
        out = stitched.seal(seq, payload, 41, iv=iv)
        assert out == ref.seal(seq, payload, 41, iv=iv), size
        assert out == plain.seal(seq, payload, 41, iv=iv), size
        assert stitched.open(out, seq) == (payload, 41)
        bad = bytearray(out)
        bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        with pytest.raises(ValueError, match="icv"):
            plain.open(bytes(bad), seq)


@needs_stitched
@settings(max_examples=150, deadline=None)
@given(alg=st.sampled_from(CBC_ALGS), esn=st.booleans(), size=st.integers(0, 3000),
       seed=st.integers(0, 2**32))
def test_seal_random(alg, esn, size, seed):
    rnd = random.Random(seed)
    stitched, _, ref, _ = sas(alg, esn, rnd)
    payload = bytes(rnd.getrandbits(8) for _ in range(size))
    seq = rnd.getrandbits(64 if esn else 32) or 1
    iv = bytes(rnd.getrandbits(8) for _ in range(16))
    assert stitched.seal(seq, payload, 4, iv=iv) == ref.seal(seq, payload, 4, iv=iv)


@needs_stitched
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("alg", CBC_ALGS)
def test_engine_lone_packets_decrypt_with_scapy(alg, esn):
    """The forwarder's case: one packet per batch through the engine, 1270 to
    1405 bytes (16 sizes 9 apart: every pad length; the largest that fit the
    1500-byte tunnel MTU with a 16-byte ICV), opened by scapy's ESP."""
    topo = make_topo(alg, esn, "ipsecmb")
    enc, auth, _ = topo.keys[SPI[(MN1, "payload", "out")]]
    kw = {"esn_en": True, "esn": 0} if esn else {}
    sa = SecurityAssociation(ESP, spi=SPI[(MN1, "payload", "out")], crypt_algo="AES-CBC",
                             crypt_key=enc, auth_algo=SCAPY_AUTH[alg.split("-")[1]],
                             auth_key=auth,
                             tunnel_header=IPv6(src=ntop(HA), dst=ntop(COA1)), **kw)
    for k, size in enumerate(range(1270, 1406, 9)):
        pkt = inner(CN, MN1, size, fill=bytes([k]))
        got, want = topo.run("encap", [pkt], ivs=[bytes([k]) * 16])
        assert got == want
        (v, r, out), = got
        assert (v, r) == (Verdict.TO_WIRE, Reason.NONE)
        o = IPv6(out)
        assert o[ESP].seq == k + 1
        assert bytes(sa.decrypt(o)) == pkt, size


def test_c_harness_every_layout():
    """The routine itself against OpenSSL in C (tests/c/cbc_hmac_harness.c):
    both hashes, every hashed length mod 64 (ESP reaches only 8), AES-128/256, up
    to 64 KiB, built with AddressSanitizer and UBSan: spans end at the end of
    their allocation, so an over-read fails the run."""
    import os
    import shutil
    import subprocess
    import tempfile
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    here = os.path.dirname(__file__)
    inc = os.path.join(here, "..", "fastpath", "core", "includes")
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "harness")
        subprocess.run([gcc, "-O1", "-g", "-fsanitize=address,undefined",
                        "-fno-sanitize-recover=all", "-I", inc, "-o", exe,
                        os.path.join(here, "c", "cbc_hmac_harness.c"), "-lcrypto"],
                       check=True, capture_output=True, text=True)
        r = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    if r.returncode == 2:
        pytest.skip("this CPU has no AES-NI / SHA-NI")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures" in r.stdout
