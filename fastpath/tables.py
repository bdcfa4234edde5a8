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


def sad_from_config(cfg, backend: str = "auto", *, spare_mobile_nodes: int = 0) -> SADatabase:
    """One SADatabase holding every mobile node and SA of the config, with the
    static bindings (`care_of_address`) applied."""
    backend = resolve_backend(backend)
    n_sas = sum(len(mn.sas) for mn in cfg.mobile_nodes)
    sad = SADatabase(cfg.home_agent.address.packed, cfg.home_agent.mtu,
                     sa_capacity=max(n_sas, 1), mn_capacity=max(len(cfg.mobile_nodes) + spare_mobile_nodes, 1),
                     ipsecmb=(backend == "ipsecmb"))
    for mn in cfg.mobile_nodes:
        coa = mn.care_of_address.packed if mn.care_of_address is not None else None
        sad.add_mobile_node(mn.home_address.packed, coa)
        for sa in mn.sas:
            sad.add_sa(mn.home_address.packed, sa.purpose, sa.direction, sa.spi, sa.algorithm,
                       sa.enc_key, sa.auth_key, sa.salt, sa.esn,
                       sa.replay_window if sa.direction == "in" else 0)
    log.info("SA table: %d mobile nodes, %d SAs, crypto backend %s",
             len(cfg.mobile_nodes), n_sas, backend)
    return sad
