"""Two fastpath engines talking to each other: the home agent and the
mobile node's mirror image built from the same config file."""
import pytest

from fastpath import mh
from fastpath.config import load
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.tables import sad_from_config
from fastpath.verdicts import Reason, Verdict

from topo import BACKENDS, CN, REPO_EXAMPLES, inner

CFG = REPO_EXAMPLES / "ha.toml"


def run(engine, direction, packets):
    b = Batch(max(len(packets), 1))
    b.load(packets)
    getattr(engine, direction)(b)
    return b.results()


@pytest.fixture(params=BACKENDS)
def pair(request):
    cfg = load(CFG)
    mn_cfg = cfg.mobile_nodes[0]
    ha_sad = sad_from_config(cfg, request.param)
    mn_sad = sad_from_config(cfg, request.param, role="mobile-node",
                             home_address=str(mn_cfg.home_address))
    return (cfg, mn_cfg, ha_sad, Engine(ha_sad, request.param),
            mn_sad, Engine(mn_sad, request.param))


def test_payload_both_ways(pair):
    cfg, mn_cfg, ha_sad, ha, mn_sad, mn = pair
    hoa = mn_cfg.home_address.packed
    up = [inner(hoa, CN, 100 + k) for k in range(20)]
    wire = run(mn, "encap", up)
    assert {v for v, _, _ in wire} == {Verdict.TO_WIRE}
    assert all(p[8:24] == mn_cfg.care_of_address.packed and p[24:40] == cfg.home_agent.address.packed
               for _, _, p in wire)
    home = run(ha, "decap", [p for _, _, p in wire])
    assert [p for _, _, p in home] == up
    down = [inner(CN, hoa, 60 + k) for k in range(20)]
    wire = run(ha, "encap", down)
    back = run(mn, "decap", [p for _, _, p in wire])
    assert [(v, p) for v, _, p in back] == [(Verdict.TO_HOME, p) for p in down]
    # the MN refuses a tunnelled packet that is not for its home address
    stray = run(ha, "encap", [inner(CN, hoa, 80)])[0][2]
    other = run(mn, "encap", [inner(CN, CN, 80)])
    assert other[0][:2] == (Verdict.DROP, Reason.NO_BINDING)
    assert run(mn, "decap", [stray])[0][0] == Verdict.TO_HOME


def test_binding_update_and_ack_between_engines(pair):
    cfg, mn_cfg, ha_sad, ha, mn_sad, mn = pair
    hoa = mn_cfg.home_address.packed
    new_coa = bytes.fromhex("20010db8000400000000000000000010")
    mn_sad.relocate(hoa, new_coa)
    assert mn_sad.wait_grace(1.0)
    bu = mh.build(mh.BindingUpdate(sequence=7, lifetime=100, ack=True, home=True),
                  hoa, cfg.home_agent.address.packed)
    pkt = mn.seal_mobility(hoa, bu, new_coa)
    res = run(ha, "decap", [pkt])
    assert res[0][:2] == (Verdict.BINDING, Reason.NONE)
    [(slot, vb)] = ha.take_bindings()
    assert vb.source == new_coa and vb.home_address == hoa
    ha_sad.move(vb, new_coa)
    assert ha_sad.wait_grace(1.0)
    assert ha_sad.care_of_address(hoa) == new_coa
    ba = mh.build(mh.BindingAck(status=0, sequence=7, lifetime=100), cfg.home_agent.address.packed, hoa)
    back = run(mn, "decap", [ha.seal_mobility(hoa, ba, new_coa)])
    assert back[0][:2] == (Verdict.BINDING, Reason.NONE)
    [(slot, vba)] = mn.take_bindings()
    msg = mh.parse(vba.mobility_header, cfg.home_agent.address.packed, hoa)
    assert isinstance(msg, mh.BindingAck) and msg.sequence == 7
    # payload now flows to the new CoA
    wire = run(ha, "encap", [inner(CN, hoa, 100)])
    assert wire[0][2][24:40] == new_coa


def test_home_agent_cannot_relocate():
    cfg = load(CFG)
    sad = sad_from_config(cfg, "openssl")
    with pytest.raises(PermissionError):
        sad.relocate(cfg.mobile_nodes[0].home_address.packed, bytes(16))


def test_packet_too_big_lowers_the_mobile_nodes_own_path_mtu(pair, monkeypatch):
    """RFC 8201 at the mobile node: a Packet Too Big (built by scapy) quoting
    one of its tunnel packets (care-of address -> home agent) lowers the
    tunnel MTU from that care-of address; the engine then answers a large
    inner packet with a Packet Too Big of its own, and a smaller one still
    goes. One quoting the home agent's direction, or a care-of address the
    node has left, changes nothing; a move starts the new path at the
    configured MTU."""
    import ipaddress
    from collections import Counter
    from types import SimpleNamespace

    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6

    from fastpath import control
    from fastpath.ref.ipv6 import ntop
    cfg, mn_cfg, ha_sad, ha, mn_sad, mn = pair
    hoa, coa = mn_cfg.home_address.packed, mn_cfg.care_of_address.packed
    ha_addr = cfg.home_agent.address.packed
    now = [100.0]
    monkeypatch.setattr(control, "time", SimpleNamespace(monotonic=lambda: now[0]))
    fwd = SimpleNamespace(sad=mn_sad, opts=SimpleNamespace(role="mobile-node"), cfg=cfg)
    cp = SimpleNamespace(fwd=fwd, events=Counter(), _pmtu={}, bindings=None)
    cp._packet_too_big = lambda p: control.ControlPlane._packet_too_big(cp, p)

    def ptb(mtu, src, dst):
        quoted = bytes(IPv6(src=ntop(src), dst=ntop(dst), nh=50) / (b"\x00" * 1460))
        return bytes(IPv6(src="2001:db8:9::1", dst=ntop(coa)) / ICMPv6PacketTooBig(mtu=mtu)
                     / quoted[:1232])

    mtu = cfg.home_agent.mtu
    assert mn_sad.path_mtu(hoa) == mtu
    control.ControlPlane._punt(cp, ptb(1300, ha_addr, coa), [])     # the HA's direction
    assert mn_sad.path_mtu(hoa) == mtu
    control.ControlPlane._punt(cp, ptb(1300, coa, ha_addr), [])
    assert mn_sad.path_mtu(hoa) == 1300 and cp.events["path_mtu.lowered"] == 1
    assert mn_sad.wait_grace(1.0)
    big, small = inner(hoa, CN, 1300), inner(hoa, CN, 1200)
    res = run(mn, "encap", [big, small])
    assert [r[:2] for r in res] == [(Verdict.TO_HOME, Reason.TOO_BIG),
                                    (Verdict.TO_WIRE, Reason.NONE)]
    err = IPv6(res[0][2])
    assert err.dst == ntop(hoa) and 1280 <= err[ICMPv6PacketTooBig].mtu < 1300
    # a move: the new path starts at the configured MTU; the old CoA's PTB is stale
    new_coa = ipaddress.IPv6Address("2001:db8:4::10").packed
    mn_sad.relocate(hoa, new_coa)
    assert mn_sad.path_mtu(hoa) == mtu
    now[0] += control.PMTU_HOLD_S + 1
    control.ControlPlane._punt(cp, ptb(1290, coa, ha_addr), [])
    assert mn_sad.path_mtu(hoa) == mtu and cp.events["path_mtu.lowered"] == 1
