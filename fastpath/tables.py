"""Build the engine's SA table from a loaded config (fastpath.config)."""
from __future__ import annotations

import logging

from fastpath.core.esp import ipsecmb_available
from fastpath.core.sad import SADatabase

log = logging.getLogger("fastpath.tables")

BACKENDS = ("auto", "ipsecmb", "openssl")


def resolve_backend(name: str) -> str:
    """auto -> ipsecmb when this build links it and the CPU runs it, else openssl."""
    if name not in BACKENDS:
        raise ValueError(f"unknown crypto backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "auto":
        return "ipsecmb" if ipsecmb_available() else "openssl"
    if name == "ipsecmb" and not ipsecmb_available():
        raise ValueError("--crypto ipsecmb: this build has no intel-ipsec-mb "
                         "(apt-get install libipsec-mb-dev, then rebuild) or the CPU cannot run it")
    return name


def sad_from_config(cfg, backend: str = "auto", *, role: str = "home-agent",
                    home_address=None, spare_mobile_nodes: int = 0) -> SADatabase:
    """One SADatabase from a config.

    home-agent: every mobile node and SA of the config, with the static
    bindings (`care_of_address`) applied.
    mobile-node: the mirror image for the mobile node `home_address` (default:
    the config's only one): the same file describes both ends, so its SA
    directions are swapped (the HA's "in" SA is what this node sends on) and
    the care_of_address is this node's own starting CoA."""
    backend = resolve_backend(backend)
    mns = list(cfg.mobile_nodes)
    if role == "mobile-node":
        if home_address is None:
            if len(mns) != 1:
                raise ValueError("the config has several mobile nodes: name this one's "
                                 "home address (--home-address)")
            mns = mns[:1]
        else:
            import ipaddress
            want = ipaddress.IPv6Address(home_address)
            mns = [mn for mn in mns if mn.home_address == want]
            if not mns:
                raise ValueError(f"{want} is not a mobile node of {cfg.path}")
    elif role != "home-agent":
        raise ValueError(f"role is home-agent or mobile-node, not {role!r}")
    swap = {"in": "out", "out": "in"} if role == "mobile-node" else {"in": "in", "out": "out"}
    n_sas = sum(len(mn.sas) for mn in mns)
    sad = SADatabase(cfg.home_agent.address.packed, cfg.home_agent.mtu,
                     sa_capacity=max(n_sas, 1), mn_capacity=max(len(mns) + spare_mobile_nodes, 1),
                     ipsecmb=(backend == "ipsecmb"), role=role)
    for mn in mns:
        coa = mn.care_of_address.packed if mn.care_of_address is not None else None
        sad.add_mobile_node(mn.home_address.packed, coa)
        for sa in mn.sas:
            direction = swap[sa.direction]
            window = sa.replay_window if sa.direction == "in" else 1024
            sad.add_sa(mn.home_address.packed, sa.purpose, direction, sa.spi, sa.algorithm,
                       sa.enc_key, sa.auth_key, sa.salt, sa.esn,
                       window if direction == "in" else 0)
    log.info("SA table (%s): %d mobile nodes, %d SAs, crypto backend %s",
             role, len(mns), n_sas, backend)
    return sad
