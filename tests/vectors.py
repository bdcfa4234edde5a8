"""Where the published test vectors live, and how to load them.

The shared/ folder (SPEC, vectors) sits next to the repository clone, or
wherever $FASTPATH_SHARED points.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """$FASTPATH_SHARED if set and present, else ../shared next to the repo."""
    env = os.environ.get("FASTPATH_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for path in candidates:
        if (path / "vectors").is_dir():
            return path
    return None


MISSING = ("shared/vectors not found: set $FASTPATH_SHARED or put shared/ next to "
           "the repository")


def load(name: str) -> dict | None:
    """One vector file of shared/vectors, or None if shared/ is missing."""
    base = shared_dir()
    if base is None:
        return None
    return json.loads((base / "vectors" / name).read_text())


def params(name: str, key: str) -> list:
    """pytest parameters, one per vector of ``load(name)[key]`` (id = its id),
    or a single skipped parameter when shared/ is missing."""
    import pytest

    data = load(name)
    if data is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING))]
    return [pytest.param(v, id=v["id"]) for v in data[key]]


def h(s: str | None) -> bytes:
    """Bytes of a lowercase-hex vector field."""
    return bytes.fromhex(s or "")
