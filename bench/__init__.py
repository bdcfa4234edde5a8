"""fastpath benchmark harness (SPEC §8).

Run ``python -m bench --help`` from the repository root (after
``python3 setup.py build_ext --inplace``). Each scenario prints a table and
writes a JSON file that names the commit, the flags and the machine.

Layout:
  __main__.py  the scenario registry and the command line
  common.py    machine/commit facts, pinning, timing, openssl speed, tables, JSON
  topo.py      addresses, keys and packets shared by the scenarios
  engine.py    ``engine``: in-memory batches through the Cython engine
  scale.py     ``scale``: 1 .. 10^6 mobile nodes, throughput and memory per SA
"""
