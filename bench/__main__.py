"""python -m bench SCENARIO [flags]   (python -m bench SCENARIO --help)

Scenarios are registered here by name -> (module, one-line help). A
scenario module provides add_arguments(parser) and run(args) -> exit
status; it is imported only when chosen.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# One core means one thread: keep numpy's BLAS from starting its own
# (before anything imports numpy; child processes inherit this).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

SCENARIOS: dict[str, tuple[str, str]] = {
    "engine": ("bench.engine",
               "in-memory batches through the Cython engine vs bare crypto, the "
               "pure-Python reference and openssl speed"),
    "scale": ("bench.scale",
              "1 -> 10^6 mobile nodes: encap throughput and memory per SA"),
    "forward": ("bench.forward",
                "the HA through its TUNs between network namespaces: CPU per packet at a "
                "fixed rate and saturated pps, against the null forwarder"),
    "swap": ("bench.swap", "CoA swaps under load: BU->BA latency, BU/s, stale packets after "
             "BA, throughput dip"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    chosen = (argv if argv is not None else sys.argv[1:])[:1]
    for name, (module, help_) in SCENARIOS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if chosen == [name]:                   # import only the scenario that runs
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    mod = importlib.import_module(SCENARIOS[args.scenario][0])
    return mod.run(args)


if __name__ == "__main__":
    sys.exit(main())
