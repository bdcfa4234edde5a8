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
