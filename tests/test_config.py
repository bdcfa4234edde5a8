"""fastpath.config: the examples load, every refusal names entry, field and reason."""
from __future__ import annotations

import logging
import re
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import algorithms, config
from fastpath.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

SHA1_ENC = "00112233445566778899aabbccddeeff"
SHA1_AUTH = "000102030405060708090a0b0c0d0e0f10111213"

BASE = f"""\
[home_agent]
address = "2001:db8:ffff::1"
home_prefix = "2001:db8:1::/64"
mtu = 1500
state_dir = "/tmp/fp-test-state"

[[mobile_node]]
home_address = "2001:db8:1::10"
care_of_address = "2001:db8:2::10"
binding_lifetime_max = 3600

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "in"
  spi = 0x1000
  algorithm = "aes128-sha1"
  enc_key = "{SHA1_ENC}"
  auth_key = "{SHA1_AUTH}"
  replay_window = 64

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "out"
  spi = 0x1001
  algorithm = "aes128-sha1"
  enc_key = "{SHA1_ENC}"
  auth_key = "{SHA1_AUTH}"

[[mobile_node]]
home_address = "2001:db8:1::20"

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "in"
  spi = 0x2000
  algorithm = "aes128-sha1"
  enc_key = "{SHA1_ENC}"
  auth_key = "{SHA1_AUTH}"

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "out"
  spi = 0x2001
  algorithm = "aes128-sha1"
  enc_key = "{SHA1_ENC}"
  auth_key = "{SHA1_AUTH}"
"""


def sa_block(purpose, direction, spi, algorithm="aes128-sha1", extra=""):
    alg = algorithms.ALGORITHMS.get(algorithm)
    if alg is None or alg.kind == algorithms.KIND_CBC_HMAC:
        keys = (f'  enc_key = "{"ab" * (alg.enc_key_len if alg else 16)}"\n'
                f'  auth_key = "{"cd" * (alg.auth_key_len if alg else 20)}"\n')
    elif alg.kind == algorithms.KIND_GCM:
        keys = f'  key = "{"ef" * (alg.enc_key_len + 4)}"\n'
    else:
        keys = f'  auth_key = "{"cd" * alg.auth_key_len}"\n'
    return (f'\n  [[mobile_node.sa]]\n  purpose = "{purpose}"\n  direction = "{direction}"\n'
            f'  spi = {spi:#x}\n  algorithm = "{algorithm}"\n{keys}{extra}')


def with_mn0_sas(*blocks: str, base: str = BASE) -> str:
    """BASE with extra SAs appended to mobile_node[0] (before mobile_node[1])."""
    head, sep, tail = base.partition('[[mobile_node]]\nhome_address = "2001:db8:1::20"')
    return head.rstrip("\n") + "\n" + "".join(blocks) + "\n\n" + sep + tail


def fails(text: str, path: str = "ha.toml") -> str:
    with pytest.raises(ConfigError) as ei:
        parse(text, path)
    return str(ei.value)


def line_of(text: str, needle: str, nth: int = 0) -> int:
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    return hits[nth]


# ---------------------------------------------------------------- the good ones


def test_base_is_valid():
    cfg = parse(BASE, "ha.toml")
    assert len(cfg.mobile_nodes) == 2
    assert cfg.home_agent.address == IPv6Address("2001:db8:ffff::1")
    assert cfg.home_agent.home_prefix == IPv6Network("2001:db8:1::/64")
    assert cfg.interfaces == config.InterfacesConfig()
    mn0 = cfg.mobile_nodes[0]
    assert mn0.sa("binding", "in").replay_window == 64
    assert mn0.sa("binding", "out").replay_window == 0
    assert cfg.mobile_nodes[1].care_of_address is None
    assert cfg.mobile_nodes[1].sa("binding", "in").replay_window == 1024   # default
    assert cfg.mobile_nodes[1].binding_lifetime_max == 3600                 # default


def test_example_ha_toml_loads():
    cfg = load(EXAMPLES / "ha.toml")
    assert cfg.path == EXAMPLES / "ha.toml"
    ha = cfg.home_agent
    assert ha.address == IPv6Address("2001:db8:ffff::1")
    assert ha.home_prefix == IPv6Network("2001:db8:1::/64")
    assert ha.state_dir == Path("/tmp/fastpath-example-state")
    assert not ha.allow_manual_aead
    mn1, mn2 = cfg.mobile_nodes
    assert mn1.home_address == IPv6Address("2001:db8:1::10")
    assert mn1.care_of_address == IPv6Address("2001:db8:2::10")
    assert mn1.purposes == ("binding", "return-routability", "payload")
    for d in ("in", "out"):
        assert mn1.sa("payload", d).algorithm.name == "aes128-sha1"
        assert mn1.sa("return-routability", d).algorithm.name == "aes256-sha256"
        assert mn1.sa("binding", d).mode == "transport"
        assert mn1.sa("payload", d).mode == "tunnel"
        assert mn1.sa("return-routability", d).mode == "tunnel"
    assert mn2.home_address == IPv6Address("2001:db8:1::20")
    assert mn2.care_of_address == IPv6Address("2001:db8:3::20")
    assert mn2.purposes == ("binding",)
    assert mn2.sa("payload", "in") is None and mn2.sa_pair("payload") is None
    assert mn2.sa_pair("binding") == (mn2.sa("binding", "in"), mn2.sa("binding", "out"))
    spis = [sa.spi for _, sa in cfg.sas()]
    assert len(spis) == len(set(spis)) == 8
    # ':' separators and 0x prefixes both parse
    assert mn1.sa("payload", "in").enc_key == bytes([0x3a]) * 16
    assert mn1.sa("binding", "in").auth_key == bytes([0x1b]) * 20
    assert cfg.sa_by_spi(0x1004)[1] is mn1.sa("return-routability", "in")
    assert cfg.mobile_node("2001:db8:1::20") is mn2
    assert len(cfg.summary_rows()) == 8


def test_realtime_scheduling_default_and_off():
    assert parse(BASE, Path("t.toml")).home_agent.realtime is True
    off = BASE.replace("mtu = 1500", "mtu = 1500\nrealtime = false", 1)
    assert parse(off, Path("t.toml")).home_agent.realtime is False


def test_example_gcm_loads_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fastpath.config"):
        cfg = load(EXAMPLES / "ha-gcm.toml")
    assert cfg.home_agent.allow_manual_aead
    mn1 = cfg.mobile_nodes[0]
    for d in ("in", "out"):
        sa = mn1.sa("payload", d)
        assert sa.algorithm.name == "aes128gcm16"
        assert len(sa.enc_key) == 16 and len(sa.salt) == 4 and sa.auth_key == b""
        assert sa.key_material == sa.enc_key + sa.salt
    assert mn1.sa("payload", "in").salt == bytes.fromhex("3c3c3c3c")
    msgs = [r.getMessage() for r in caplog.records if r.name == "fastpath.config"]
    assert msgs and all("RFC 4106" in m and "RFC 8221" in m for m in msgs)
    assert any("0x00001002" in m for m in msgs)


def test_keys_never_in_repr():
    cfg = load(EXAMPLES / "ha.toml")
    text = repr(cfg)
    assert "1a1a1a" not in text and "1b1b" not in text
    assert "\\x1a" not in text


def test_mode_property():
    cfg = parse(with_mn0_sas(sa_block("prefix-discovery", "in", 0x3000),
                             sa_block("prefix-discovery", "out", 0x3001),
                             sa_block("return-routability", "in", 0x3002),
                             sa_block("return-routability", "out", 0x3003)))
    mn = cfg.mobile_nodes[0]
    assert mn.sa("prefix-discovery", "in").mode == "transport"
    assert mn.sa("binding", "out").mode == "transport"
    assert mn.sa("return-routability", "out").mode == "tunnel"


def test_hex_forms():
    assert config.parse_hex("0x0a0B") == b"\x0a\x0b"
    assert config.parse_hex("0A:0b:ff") == b"\x0a\x0b\xff"
    assert config.parse_hex("  00ff ") == b"\x00\xff"
    for bad in ("", "0x", "zz", "abc", "0x0g"):
        with pytest.raises(ValueError):
            config.parse_hex(bad)


def test_null_sha256_and_esn():
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "null-sha256", "  esn = true\n"),
                        sa_block("payload", "out", 0x3001, "null-sha256", "  esn = true\n"))
    sa = parse(text).mobile_nodes[0].sa("payload", "in")
    assert sa.esn and sa.enc_key == b"" and sa.salt == b"" and len(sa.auth_key) == 32
    assert parse(BASE).mobile_nodes[0].sa("binding", "in").esn is False


def test_defaults_and_interfaces():
    text = BASE.replace("mtu = 1500\n", "").replace('state_dir = "/tmp/fp-test-state"\n', "")
    text = text.replace("[[mobile_node]]", '[interfaces]\nhome = "tun-h"\nhome_link = "eth0"\n\n[[mobile_node]]', 1)
    cfg = parse(text, "/etc/fastpath/ha.toml")
    assert cfg.home_agent.mtu == 1500
    assert cfg.home_agent.state_dir == Path("/var/lib/fastpath")
    assert cfg.interfaces == config.InterfacesConfig(home="tun-h", wire="fp-wire", home_link="eth0")


def test_relative_state_dir_is_relative_to_file():
    text = BASE.replace('"/tmp/fp-test-state"', '"state"')
    assert parse(text, "/etc/fastpath/ha.toml").home_agent.state_dir == Path("/etc/fastpath/state")


def test_replay_window_bounds_accepted():
    for w in (0, 32, 65536):
        text = BASE.replace("replay_window = 64", f"replay_window = {w}")
        assert parse(text).mobile_nodes[0].sa("binding", "in").replay_window == w


def test_mn_with_static_coa_and_no_sas_is_fine():
    text = BASE + '\n[[mobile_node]]\nhome_address = "2001:db8:1::30"\ncare_of_address = "2001:db8:4::1"\n'
    cfg = parse(text)
    assert cfg.mobile_nodes[2].sas == ()
    assert cfg.summary_rows()[-1][0] == "2001:db8:1::30"


# ---------------------------------------------------------------- refusals


def test_unknown_key_typo_in_sa():
    text = BASE.replace("replay_window = 64", "replay_windw = 64")
    msg = fails(text)
    n = line_of(text, "replay_windw")
    assert f"ha.toml:{n}: mobile_node[0].sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): replay_windw: unknown key" in msg
    assert "did you mean 'replay_window'" in msg


def test_unknown_keys_elsewhere():
    msg = fails(BASE.replace("mtu = 1500", "mtu = 1500\nmut = 9000"))
    assert "[home_agent]: mut: unknown key" in msg and "'mtu'" in msg
    msg = fails(BASE.replace("binding_lifetime_max = 3600", "binding_lifetime = 3600"))
    assert "mobile_node[0] (HoA 2001:db8:1::10): binding_lifetime: unknown key" in msg
    text = BASE + '\n[home_agnet]\naddress = "2001:db8::1"\n'
    msg = fails(text)
    assert f"ha.toml:{line_of(text, '[home_agnet]')}: home_agnet: unknown top-level" in msg
    assert "did you mean 'home_agent'" in msg
    msg = fails(BASE + '\n[interfaces]\nhoem = "x"\n')
    assert "[interfaces]: hoem: unknown key" in msg


def test_missing_required_fields():
    text = BASE.replace("  spi = 0x1000\n", "")
    msg = fails(text)
    assert "mobile_node[0].sa[0] (HoA 2001:db8:1::10): spi: missing (required)" in msg
    msg = fails(BASE.replace('home_address = "2001:db8:1::20"\n', ""))
    assert "mobile_node[1]: home_address: missing (required)" in msg
    msg = fails(BASE.replace('home_prefix = "2001:db8:1::/64"\n', ""))
    assert "[home_agent]: home_prefix: missing (required)" in msg
    msg = fails(BASE.replace("[home_agent]", "[interfaces]").replace(
        'address = "2001:db8:ffff::1"\nhome_prefix = "2001:db8:1::/64"\nmtu = 1500\nstate_dir = "/tmp/fp-test-state"\n', ""))
    assert "[home_agent]: missing" in msg
    msg = fails(BASE.replace('  purpose = "binding"\n  direction = "out"\n  spi = 0x1001',
                             '  direction = "out"\n  spi = 0x1001'))
    assert "mobile_node[0].sa[1] (HoA 2001:db8:1::10, SPI 0x00001001): purpose: missing" in msg
    msg = fails(BASE.replace(f'  auth_key = "{SHA1_AUTH}"\n  replay_window', "  replay_window"))
    assert "sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): auth_key: missing (required)" in msg


@pytest.mark.parametrize("old,new,field,reason", [
    ("spi = 0x1000", 'spi = "0x1000"', "spi", "must be an integer"),
    ("mtu = 1500", 'mtu = "1500"', "mtu", "must be an integer"),
    ("mtu = 1500", "mtu = 1500.0", "mtu", "got float"),
    ("replay_window = 64", "replay_window = true", "replay_window", "got boolean"),
    ("replay_window = 64", 'replay_window = 64\n  esn = "yes"', "esn", "must be true or false"),
    ("mtu = 1500", "mtu = 1500\nallow_manual_aead = 1", "allow_manual_aead", "must be true or false"),
    ("mtu = 1500", 'mtu = 1500\nrealtime = "no"', "realtime", "must be true or false"),
    ('address = "2001:db8:ffff::1"', "address = 2001", "address", "IPv6 address in quotes"),
    (f'enc_key = "{SHA1_ENC}"', "enc_key = 0x0011", "enc_key", "hex string in quotes"),
    ('algorithm = "aes128-sha1"', 'algorithm = ["aes128-sha1"]', "algorithm", "got an array"),
    ("binding_lifetime_max = 3600", 'binding_lifetime_max = "1h"', "binding_lifetime_max",
     "integer number of seconds"),
])
def test_wrong_types(old, new, field, reason):
    msg = fails(BASE.replace(old, new, 1))
    assert f": {field}: " in msg and reason in msg


def test_wrong_table_shapes():
    msg = fails(BASE.replace("[[mobile_node]]", "[mobile_node]", 1).split("  [[mobile_node.sa]]")[0])
    assert "mobile_node: must be an array of tables" in msg and "[[mobile_node]]" in msg
    text = BASE.replace("  [[mobile_node.sa]]", "  [mobile_node.sa]", 1).split("  [[mobile_node.sa]]")[0]
    msg = fails(text)
    assert "mobile_node[0] (HoA 2001:db8:1::10): sa: must be an array of tables" in msg
    msg = fails('home_agent = 5\n')
    assert "home_agent: must be a table" in msg


@pytest.mark.parametrize("value,reason", [
    ("2001:db8::zz", "is not an IPv6 address"),
    ("192.0.2.1", "is an IPv4 address"),
    ("ff02::1", "multicast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("::ffff:192.0.2.1", "IPv4-mapped"),
])
def test_bad_ha_address(value, reason):
    text = BASE.replace('address = "2001:db8:ffff::1"', f'address = "{value}"')
    msg = fails(text)
    assert f"ha.toml:{line_of(text, 'address = ')}: [home_agent]: address: " in msg
    assert reason in msg


@pytest.mark.parametrize("value,reason", [
    ("ff0e::1", "multicast"),
    ("::", "unspecified"),
    ("2001:db8:2::", "is not an IPv6 address"),  # placeholder replaced below
])
def test_bad_coa(value, reason):
    if value == "2001:db8:2::":
        value, reason = "2001:db8:2:::10", "is not an IPv6 address"
    text = BASE.replace('care_of_address = "2001:db8:2::10"', f'care_of_address = "{value}"')
    msg = fails(text)
    n = line_of(text, "care_of_address")
    assert f"ha.toml:{n}: mobile_node[0] (HoA 2001:db8:1::10): care_of_address: " in msg
    assert reason in msg


def test_coa_inside_home_prefix_or_ha():
    msg = fails(BASE.replace('care_of_address = "2001:db8:2::10"', 'care_of_address = "2001:db8:1::99"'))
    assert "care_of_address: 2001:db8:1::99 lies inside home_prefix 2001:db8:1::/64" in msg
    msg = fails(BASE.replace('care_of_address = "2001:db8:2::10"', 'care_of_address = "2001:db8:ffff::1"'))
    assert "care_of_address: 2001:db8:ffff::1 is the home agent's own address" in msg


def test_hoa_outside_prefix():
    text = BASE.replace('home_address = "2001:db8:1::20"', 'home_address = "2001:db8:5::20"')
    msg = fails(text)
    assert (f"ha.toml:{line_of(text, '2001:db8:5::20')}: mobile_node[1] (HoA 2001:db8:5::20): "
            f"home_address: 2001:db8:5::20 is outside home_prefix 2001:db8:1::/64") in msg


def test_hoa_anycast_and_ha_address():
    msg = fails(BASE.replace('home_address = "2001:db8:1::20"', 'home_address = "2001:db8:1::"'))
    assert "Subnet-Router anycast" in msg
    text = BASE.replace('address = "2001:db8:ffff::1"', 'address = "2001:db8:1::1"')
    msg = fails(text.replace('home_address = "2001:db8:1::20"', 'home_address = "2001:db8:1::1"'))
    assert "mobile_node[1] (HoA 2001:db8:1::1): home_address: 2001:db8:1::1 is the home agent's own address" in msg


def test_duplicate_hoa():
    text = BASE.replace('home_address = "2001:db8:1::20"', 'home_address = "2001:db8:1:0::010"')
    msg = fails(text)
    n0 = line_of(text, 'home_address = "2001:db8:1::10"')
    assert "mobile_node[1] (HoA 2001:db8:1::10): home_address: duplicate home address" in msg
    assert f"already mobile_node[0] (line {n0})" in msg


def test_duplicate_spi_across_mns_and_directions():
    text = BASE.replace("spi = 0x2001", "spi = 0x1000")
    msg = fails(text)
    assert f"ha.toml:{line_of(text, 'spi = 0x1000', 1)}: mobile_node[1].sa[1] (HoA 2001:db8:1::20, SPI 0x00001000): spi: duplicate SPI" in msg
    assert f"mobile_node[0].sa[0] (line {line_of(text, 'spi = 0x1000')})" in msg
    msg = fails(BASE.replace("spi = 0x1001", "spi = 0x1000"))
    assert "mobile_node[0].sa[1] (HoA 2001:db8:1::10, SPI 0x00001000): spi: duplicate SPI 0x00001000" in msg


@pytest.mark.parametrize("spi", [0, 1, 255])
def test_reserved_spi(spi):
    msg = fails(BASE.replace("spi = 0x2000", f"spi = {spi}"))
    assert f"mobile_node[1].sa[0] (HoA 2001:db8:1::20): spi: {spi} is reserved" in msg
    assert "RFC 4303 §2.1" in msg


def test_spi_too_large_and_256_ok():
    msg = fails(BASE.replace("spi = 0x2000", "spi = 0x100000000"))
    assert "spi: 4294967296 does not fit" in msg
    assert parse(BASE.replace("spi = 0x2000", "spi = 256")).mobile_nodes[1].sas[0].spi == 256
    assert parse(BASE.replace("spi = 0x2000", "spi = 0xffffffff")).mobile_nodes[1].sas[0].spi == 0xFFFFFFFF
    msg = fails(BASE.replace("spi = 0x2000", "spi = -5"))
    assert "spi: -5" in msg


def test_key_lengths():
    msg = fails(BASE.replace(f'enc_key = "{SHA1_ENC}"', 'enc_key = "00112233445566778899aabbccddee"', 1))
    assert ("mobile_node[0].sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): enc_key: must be 16 bytes "
            "for aes128-sha1 (AES-128), got 15") in msg
    msg = fails(BASE.replace(f'auth_key = "{SHA1_AUTH}"', f'auth_key = "{"00" * 32}"', 1))
    assert "auth_key: must be 20 bytes for aes128-sha1 (HMAC-SHA-1, RFC 2404), got 32" in msg
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "aes256-sha256"),
                        sa_block("payload", "out", 0x3001, "aes256-sha256"))
    msg = fails(text.replace('enc_key = "' + "ab" * 32, 'enc_key = "' + "ab" * 16, 1))
    assert "enc_key: must be 32 bytes for aes256-sha256 (AES-256), got 16" in msg


def test_gcm_key_length_and_salt():
    head = BASE.replace("mtu = 1500", "mtu = 1500\nallow_manual_aead = true")
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "aes128gcm16"),
                        sa_block("payload", "out", 0x3001, "aes128gcm16"), base=head)
    cfg = parse(text)
    assert cfg.mobile_nodes[0].sa("payload", "in").salt == b"\xef" * 4
    msg = fails(text.replace('key = "' + "ef" * 20, 'key = "' + "ef" * 16, 1))
    assert "mobile_node[0].sa[2] (HoA 2001:db8:1::10, SPI 0x00003000): key: must be 20 bytes" in msg
    assert "4-byte salt" in msg and "salt is missing" in msg


def test_key_fields_must_match_algorithm():
    msg = fails(BASE.replace(f'enc_key = "{SHA1_ENC}"', f'enc_key = "{SHA1_ENC}"\n  key = "00"', 1))
    assert "sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): key: aes128-sha1 does not use key" in msg
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "null-sha256", '  enc_key = "00"\n'),
                        sa_block("payload", "out", 0x3001, "null-sha256"))
    msg = fails(text)
    assert "enc_key: null-sha256 does not use enc_key: it takes auth_key only" in msg


@pytest.mark.parametrize("value,reason", [
    ("zz00112233445566778899aabbccddee", "is not hexadecimal: unexpected 'z'"),
    ("0011223344556677889aabbccddeeff", "has an odd number of hex digits (31)"),
    ("", "is empty"),
])
def test_bad_hex(value, reason):
    msg = fails(BASE.replace(f'enc_key = "{SHA1_ENC}"', f'enc_key = "{value}"', 1))
    assert "mobile_node[0].sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): enc_key: " + reason in msg


def test_unknown_algorithm_lists_valid_names():
    text = BASE.replace('algorithm = "aes128-sha1"', 'algorithm = "aes128-sha512"', 1)
    msg = fails(text)
    n = line_of(text, "aes128-sha512")
    assert f"ha.toml:{n}: mobile_node[0].sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): algorithm: unknown algorithm 'aes128-sha512'" in msg
    for name in algorithms.ALGORITHMS:
        assert name in msg
    msg = fails(BASE.replace('algorithm = "aes128-sha1"', 'algorithm = "AES128-SHA1"', 1))
    assert "did you mean 'aes128-sha1'" in msg


@pytest.mark.parametrize("name", sorted(algorithms.REFUSED))
def test_refused_algorithms_give_reason(name):
    msg = fails(BASE.replace('algorithm = "aes128-sha1"', f'algorithm = "{name}"', 1))
    assert f"algorithm: '{name}' is refused: {algorithms.REFUSED[name]}" in msg


def test_gcm_refused_without_opt_in():
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "aes256gcm16"),
                        sa_block("payload", "out", 0x3001, "aes256gcm16"))
    msg = fails(text)
    assert "mobile_node[0].sa[2] (HoA 2001:db8:1::10, SPI 0x00003000): algorithm: aes256gcm16 (AES-GCM) is refused" in msg
    assert "RFC 4106 §8.1" in msg and "RFC 8221 §3" in msg and "allow_manual_aead = true" in msg


def test_gcm_allowed_with_opt_in_logs_warning(caplog):
    head = BASE.replace("mtu = 1500", "mtu = 1500\nallow_manual_aead = true")
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "aes256gcm16"),
                        sa_block("payload", "out", 0x3001, "aes256gcm16"), base=head)
    with caplog.at_level(logging.WARNING, logger="fastpath.config"):
        cfg = parse(text, "lab.toml")
    assert len(cfg.mobile_nodes[0].sa("payload", "out").enc_key) == 32
    warns = [r for r in caplog.records if r.name == "fastpath.config" and r.levelno == logging.WARNING]
    assert len(warns) == 2
    assert all("RFC 4106 §8.1" in r.getMessage() and "lab.toml" in r.getMessage() for r in warns)


def test_no_warning_when_config_fails(caplog):
    head = BASE.replace("mtu = 1500", "mtu = 1")
    text = with_mn0_sas(sa_block("payload", "in", 0x3000, "aes256gcm16"),
                        sa_block("payload", "out", 0x3001, "aes256gcm16"), base=head)
    with caplog.at_level(logging.WARNING, logger="fastpath.config"):
        fails(text)
    assert not [r for r in caplog.records if r.name == "fastpath.config"]


def test_replay_window_on_out_sa_refused():
    text = BASE.replace('direction = "out"\n  spi = 0x1001', 'direction = "out"\n  spi = 0x1001\n  replay_window = 64')
    msg = fails(text)
    n = line_of(text, "replay_window = 64", 1)
    assert f"ha.toml:{n}: mobile_node[0].sa[1] (HoA 2001:db8:1::10, SPI 0x00001001): replay_window: is for in SAs only" in msg
    assert "RFC 4303 §3.4.3" in msg


@pytest.mark.parametrize("w", [1000, 16, 65568, -32, 1])
def test_replay_window_range(w):
    msg = fails(BASE.replace("replay_window = 64", f"replay_window = {w}"))
    assert f"mobile_node[0].sa[0] (HoA 2001:db8:1::10, SPI 0x00001000): replay_window: {w} is not allowed" in msg
    assert "multiple of 32" in msg and "65536" in msg


@pytest.mark.parametrize("mtu", [0, 1279, 65536])
def test_mtu_range(mtu):
    text = BASE.replace("mtu = 1500", f"mtu = {mtu}")
    msg = fails(text)
    assert f"ha.toml:{line_of(text, 'mtu =')}: [home_agent]: mtu: {mtu} is out of range" in msg
    assert "1280" in msg


def test_mtu_bounds_ok():
    for mtu in (1280, 65535):
        assert parse(BASE.replace("mtu = 1500", f"mtu = {mtu}")).home_agent.mtu == mtu


@pytest.mark.parametrize("life,reason", [
    (0, "out of range"), (3, "out of range"), (262144, "out of range"),
    (3601, "not a multiple of 4"), (262141, "out of range"),
])
def test_binding_lifetime_range(life, reason):
    msg = fails(BASE.replace("binding_lifetime_max = 3600", f"binding_lifetime_max = {life}"))
    assert f"mobile_node[0] (HoA 2001:db8:1::10): binding_lifetime_max: {life} s" in msg
    assert reason in msg and "RFC 6275" in msg


def test_binding_lifetime_bounds_ok():
    for life in (4, 262140):
        cfg = parse(BASE.replace("binding_lifetime_max = 3600", f"binding_lifetime_max = {life}"))
        assert cfg.mobile_nodes[0].binding_lifetime_max == life


def test_one_sa_per_purpose_and_direction():
    text = with_mn0_sas(sa_block("binding", "in", 0x3000))
    msg = fails(text)
    assert "mobile_node[0].sa[2] (SPI 0x00003000): purpose: a second binding in SA" in msg
    assert "mobile_node[0].sa[0] (SPI 0x00001000) already is one" in msg


def test_sas_come_in_pairs():
    msg = fails(with_mn0_sas(sa_block("payload", "in", 0x3000)))
    assert "mobile_node[0] (HoA 2001:db8:1::10): sa: has a payload in SA (mobile_node[0].sa[2], SPI 0x00003000) but no payload out SA" in msg
    msg = fails(with_mn0_sas(sa_block("return-routability", "out", 0x3000)))
    assert "has a return-routability out SA" in msg and "no return-routability in SA" in msg
    # transport mode too
    text = BASE.replace("spi = 0x2001", "spi = 0x2002").replace(
        '  [[mobile_node.sa]]\n  purpose = "binding"\n  direction = "out"\n  spi = 0x2002', '  [[mobile_node.sa]]\n  purpose = "prefix-discovery"\n  direction = "out"\n  spi = 0x2002')
    msg = fails(text)
    assert "mobile_node[1] (HoA 2001:db8:1::20): sa: has a binding in SA" in msg
    assert "transport-mode SAs come in pairs" in msg


def test_mn_without_binding_sas_needs_coa():
    text = BASE + '\n[[mobile_node]]\nhome_address = "2001:db8:1::30"\n'
    msg = fails(text)
    assert "mobile_node[2] (HoA 2001:db8:1::30): sa: has no binding SAs and no static care_of_address" in msg


def test_bad_purpose_and_direction():
    msg = fails(BASE.replace('purpose = "binding"', 'purpose = "bindings"', 1))
    assert "purpose: unknown purpose 'bindings' (did you mean 'binding'?)" in msg
    msg = fails(BASE.replace('direction = "in"', 'direction = "inbound"', 1))
    assert "direction: must be \"in\" (MN to HA) or \"out\" (HA to MN), got 'inbound'" in msg


def test_home_prefix_problems():
    msg = fails(BASE.replace('"2001:db8:1::/64"', '"2001:db8:1::5/64"'))
    assert "home_prefix: '2001:db8:1::5/64' has host bits set (did you mean \"2001:db8:1::/64\"?)" in msg
    msg = fails(BASE.replace('"2001:db8:1::/64"', '"2001:db8:1::"'))
    assert "home_prefix: '2001:db8:1::' has no prefix length" in msg
    msg = fails(BASE.replace('"2001:db8:1::/64"', '"ff00::/8"'))
    assert "not a unicast prefix" in msg


def test_interface_problems():
    msg = fails(BASE + '\n[interfaces]\nhome = "a-very-long-interface-name"\n')
    assert "[interfaces]: home: interface name 'a-very-long-interface-name' is 26 bytes" in msg
    msg = fails(BASE + '\n[interfaces]\nhome = "x"\nwire = "x"\n')
    assert "[interfaces]: wire: the home and wire TUNs must differ" in msg
    msg = fails(BASE + '\n[interfaces]\nhome_link = "eth 0"\n')
    assert "home_link: interface name 'eth 0' contains ' '" in msg


def test_multiple_problems_reported_together():
    text = BASE.replace("mtu = 1500", "mtu = 10").replace("spi = 0x2000", "spi = 7")
    with pytest.raises(ConfigError) as ei:
        parse(text, "ha.toml")
    fields = [p.field for p in ei.value.problems]
    assert "mtu" in fields and "spi" in fields
    assert len(str(ei.value).splitlines()) == len(ei.value.problems) >= 2
    for p in ei.value.problems:
        assert p.path == "ha.toml" and p.line is not None


def test_toml_syntax_error_has_line():
    text = BASE.replace("mtu = 1500", "mtu = = 1500")
    msg = fails(text)
    assert msg.startswith(f"ha.toml:{line_of(text, 'mtu = =')}: TOML syntax error")


def test_load_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        load(missing)
    assert str(missing) in str(ei.value) and "cannot read" in str(ei.value)
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace("spi = 0x2000", "spi = 3"))
    with pytest.raises(ConfigError) as ei:
        load(bad)
    assert str(ei.value).startswith(f"{bad}:")
    binf = tmp_path / "bin.toml"
    binf.write_bytes(b"\xff\xfe[home_agent]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(binf)


def test_line_numbers_of_table_headers_when_key_missing():
    text = BASE.replace("  spi = 0x2001\n", "")
    with pytest.raises(ConfigError) as ei:
        parse(text, "ha.toml")
    (p,) = ei.value.problems
    # the 4th [[mobile_node.sa]] header in the file
    assert p.line == line_of(text, "[[mobile_node.sa]]", 3)
    assert p.entry == "mobile_node[1].sa[1] (HoA 2001:db8:1::20)"


# ---------------------------------------------------------------- fuzzing

EXAMPLE_TEXT = (EXAMPLES / "ha.toml").read_text()
EXAMPLE_LINES = EXAMPLE_TEXT.splitlines()
VALUE_LINES = [i for i, ln in enumerate(EXAMPLE_LINES) if re.match(r"\s*[a-z_]+\s*=", ln)]
TOML_VALUES = [
    '""', '"x"', "0", "-1", "1.5", "true", "false", "[]", "{}", "[1, 2]", '["a"]',
    "{ a = 1 }", "1979-05-27", "1979-05-27T07:32:00Z", "07:32:00", "inf", "nan",
    "0x100", "0xffffffff", "0x100000000", "65536", "1280", "1024", "4", '"ff02::1"',
    '"::"', '"2001:db8:1::10"', '"2001:db8:2::10"', '"2001:db8:1::/64"', '"zz"', '"0x"',
    '"aes128gcm16"', '"null"', '"null-sha256"', '"binding"', '"payload"', '"out"', '"in"',
    '"' + "ab" * 20 + '"', '"' + "ab" * 32 + '"', '"a\\u0000b"', '"fe80::1%eth0"',
]


@st.composite
def mutated_config(draw):
    lines = list(EXAMPLE_LINES)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["value", "value", "value", "delete", "dup", "insert", "swap", "text"]))
        if op == "value":
            i = draw(st.sampled_from(VALUE_LINES))
            if i < len(lines) and "=" in lines[i]:
                key = lines[i].split("=", 1)[0]
                lines[i] = key + "= " + draw(st.sampled_from(TOML_VALUES))
        elif op == "delete" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
        elif op == "dup" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
        elif op == "insert":
            key = draw(st.sampled_from(["spi", "esn", "mtu", "sa", "mobile_node", "key",
                                        "purpose", "home_agent", "replay_window", "typo"]))
            lines.insert(draw(st.integers(0, len(lines))),
                         f"{key} = {draw(st.sampled_from(TOML_VALUES))}")
        elif op == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "text" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            pos = draw(st.integers(0, len(lines[i])))
            junk = draw(st.text(min_size=1, max_size=5))
            lines[i] = lines[i][:pos] + junk + lines[i][pos:]
    return "\n".join(lines) + "\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_config())
def test_mutations_only_raise_config_error(text):
    try:
        cfg = parse(text, "fuzz.toml")
    except ConfigError as e:
        assert e.problems and str(e)
        for p in e.problems:
            assert p.path == "fuzz.toml" and p.reason
    else:
        assert isinstance(cfg, config.Config)
        cfg.summary_rows()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_config_error(text):
    try:
        parse(text, "fuzz.toml")
    except ConfigError:
        pass
