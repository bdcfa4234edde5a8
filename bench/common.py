"""Shared pieces of every scenario: what machine and commit a figure comes
from, pinning, timing loops, ``openssl speed``, tables and JSON."""
from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"      # git-ignored


# --- where a figure comes from ---------------------------------------------

def _run(cmd: Sequence[str], timeout: float = 30) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_info() -> dict:
    commit = _run(["git", "rev-parse", "HEAD"]) or "unknown"
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(status),
            "modified": [line[3:] for line in status.splitlines()][:50]}


def _cpuinfo() -> dict:
    info: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                    # the first processor is enough
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


INTERESTING_FLAGS = ("aes", "pclmulqdq", "avx2", "avx512f", "avx512vl", "vaes",
                     "vpclmulqdq", "sha_ni", "hypervisor")


def machine_info() -> dict:
    ci = _cpuinfo()
    flags = set(ci.get("flags", "").split())
    try:
        from fastpath.core.esp import ipsecmb_arch, ipsecmb_available
        mb = ipsecmb_arch() if ipsecmb_available() else "unavailable"
    except Exception as e:                       # an unbuilt tree still reports
        mb = f"error: {e}"
    import numpy
    import ssl
    return {
        "cpu_model": ci.get("model name", platform.processor() or "unknown"),
        "cpu_vendor": ci.get("vendor_id", ""),
        "cpu_family_model": f"{ci.get('cpu family', '?')}/{ci.get('model', '?')}",
        "cpu_flags": sorted(flags.intersection(INTERESTING_FLAGS)),
        "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "openssl_cli": _run(["openssl", "version"]),
        "openssl_python": ssl.OPENSSL_VERSION,
        "ipsecmb_arch": mb,
        "mem_total_kb": _meminfo("MemTotal"),
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def build_info() -> dict:
    """When the compiled engine was built, and which .pyx are newer than
    their module (others may edit the tree while a benchmark runs)."""
    core = REPO / "fastpath" / "core"
    mods, stale = {}, []
    for pyx in sorted(core.glob("*.pyx")):
        so = sorted(core.glob(pyx.stem + ".*.so"))
        if not so:
            stale.append(pyx.name)
            continue
        mtime = so[-1].stat().st_mtime
        mods[so[-1].name] = _dt.datetime.fromtimestamp(mtime).isoformat(timespec="seconds")
        if pyx.stat().st_mtime > mtime:
            stale.append(pyx.name)
    return {"modules": mods, "pyx_newer_than_build": stale}


def cpu_times() -> list[int]:
    """The aggregate 'cpu' line of /proc/stat (user nice system idle iowait
    irq softirq steal ...), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def host_load(before: list[int], after: list[int]) -> dict:
    """Share of all CPUs' time that was busy and that was stolen by the
    hypervisor between two cpu_times() snapshots."""
    if not before or not after:
        return {}
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8]) or 1
    idle = d[3] + d[4]
    return {"busy_pct": 100.0 * (total - idle) / total,
            "steal_pct": 100.0 * d[7] / total if len(d) > 7 else None}


def rss_bytes() -> int:
    """Resident set size now (VmRSS), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def settle_memory() -> None:
    """Collect garbage and hand freed heap back to the kernel, so that an
    RSS difference measures what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def pin_cpu(cpu: int | None = None) -> int:
    """Pin this process (and the children it starts, e.g. openssl speed) to
    one CPU: by default the highest one it may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        cpu = allowed[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


# --- timing ---------------------------------------------------------------

Step = Callable[[int], float]    # run n iterations, return the seconds they took

# Steps time themselves with clock(). By default that is this thread's CPU
# time: on a shared machine, time spent preempted by other processes is not
# the engine's (openssl speed counts user CPU time too, unless -elapsed).
# measure*() also keep the wall time and report the CPU share.
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def set_clock(name: str) -> None:
    global clock
    clock = CLOCKS[name]


def calibrate(step: Step, chunk_seconds: float, max_n: int = 1 << 30) -> int:
    """Iterations per chunk so that one chunk lasts about chunk_seconds."""
    n = 1
    while True:
        t = step(n)
        if t >= chunk_seconds / 4 or n >= max_n:
            break
        n = min(max_n, n * 4 if t < chunk_seconds / 64 else n * 2)
    return max(1, min(max_n, int(n * chunk_seconds / max(t, 1e-9))))


@dataclass
class Timing:
    per_iter: float          # median seconds per iteration over the chunks
    best: float              # fastest chunk, seconds per iteration
    spread: float            # (slowest - fastest) / median over the chunks
    iterations: int
    seconds: float           # clock time of the timed chunks
    cpu_share: float | None = None   # clock time / wall time (cpu clock: < 1 = preempted)
    samples: tuple = ()      # seconds per iteration of each chunk, in order

    def as_dict(self) -> dict:
        return {"per_iter_s": self.per_iter, "best_per_iter_s": self.best,
                "spread": self.spread, "iterations": self.iterations,
                "seconds": self.seconds, "cpu_share": self.cpu_share,
                "chunks_per_iter_s": list(self.samples)}


def _timing(samples: list[float], n: int, wall: float | None = None,
            clocked: float | None = None) -> Timing:
    med = statistics.median(samples)
    total = sum(samples) * n
    share = (clocked if clocked is not None else total) / wall if wall else None
    return Timing(med, min(samples), (max(samples) - min(samples)) / med if med else 0.0,
                  n * len(samples), total, share, tuple(samples))


def measure(step: Step, seconds: float, chunks: int = 5) -> Timing:
    """Median time per iteration over `chunks` chunks of about seconds/chunks."""
    n = calibrate(step, seconds / chunks)
    w0 = time.perf_counter()
    samples = [step(n) / n for _ in range(chunks)]
    return _timing(samples, n, time.perf_counter() - w0)


def measure_interleaved(items, seconds: float, chunks: int = 10) -> dict:
    """Several measurements in round-robin chunks, so that they all see the
    same machine: slow drifts of a shared host (other guests, frequency)
    then move them together and their ratios hold.

    items: [(name, step, base, share)]: `step` is calibrated to take about
    share * seconds / chunks per chunk; `base` (or None) is its overhead-only
    twin, run right after it with the same iteration count.
    Returns {name: (Timing of step, Timing of base or None)}."""
    plan = [(name, step, base, calibrate(step, seconds * share / chunks))
            for name, step, base, share in items]
    a: dict = {name: [] for name, *_ in plan}
    b: dict = {name: [] for name, *_ in plan}
    w0 = time.perf_counter()
    for _ in range(chunks):
        for name, step, base, n in plan:
            a[name].append(step(n) / n)
            if base is not None:
                b[name].append(base(n) / n)
    wall = time.perf_counter() - w0
    clocked = sum(sum(a[name]) * n + sum(b[name]) * n for name, _, _, n in plan)
    return {name: (_timing(a[name], n, wall, clocked),
                   _timing(b[name], n, wall, clocked) if base is not None else None)
            for name, _, base, n in plan}


def paired_ratio(num: Timing, num_base: Timing | None, den: Timing,
                 den_base: Timing | None) -> float | None:
    """Median over the chunks of (num - num_base) / (den - den_base), each
    chunk's figures taken side by side in one round of measure_interleaved:
    a ratio that a host slowing down between rounds leaves alone (a ratio of
    medians does not, when the slowdown catches more chunks of one of them).
    None when a difference is not positive."""
    out = []
    for k in range(len(num.samples)):
        a = num.samples[k] - (num_base.samples[k] if num_base else 0.0)
        b = den.samples[k] - (den_base.samples[k] if den_base else 0.0)
        if a <= 0 or b <= 0:
            return None
        out.append(a / b)
    return statistics.median(out) if out else None


def measure_paired(step: Step, base: Step, seconds: float,
                   chunks: int = 5) -> tuple[Timing, Timing]:
    """Time `step` and its overhead-only twin `base` in alternating chunks of
    the same iteration count, so both see the same machine state; the
    difference of the medians is the cost of what step adds."""
    n = calibrate(step, seconds / chunks)
    a: list[float] = []
    b: list[float] = []
    w0 = time.perf_counter()
    for _ in range(chunks):
        a.append(step(n) / n)
        b.append(base(n) / n)
    wall = time.perf_counter() - w0
    clocked = (sum(a) + sum(b)) * n
    return _timing(a, n, wall, clocked), _timing(b, n, wall, clocked)


# --- openssl speed ----------------------------------------------------------

# What `openssl speed` runs for each ESP transform: the cipher and, for the
# CBC suites, the HMAC too (the figure for a suite adds their times).
OPENSSL_SPEED_PARTS = {
    "aes128gcm16": [("-evp", "aes-128-gcm")],
    "aes256gcm16": [("-evp", "aes-256-gcm")],
    "aes128-sha1": [("-evp", "aes-128-cbc"), ("-hmac", "sha1")],
    "aes256-sha1": [("-evp", "aes-256-cbc"), ("-hmac", "sha1")],
    "aes128-sha256": [("-evp", "aes-128-cbc"), ("-hmac", "sha256")],
    "aes256-sha256": [("-evp", "aes-256-cbc"), ("-hmac", "sha256")],
    "null-sha256": [("-hmac", "sha256")],
}

_SPEED_CACHE: dict[tuple[str, str, int, int], dict] = {}
_NUMBERS_NOTE = "The 'numbers' are in 1000s of bytes per second processed"


def parse_openssl_speed(out: str, size: int) -> float:
    """The kB/s figure of a one-size `openssl speed` run, as bytes/s."""
    if _NUMBERS_NOTE not in out:
        raise ValueError("no 'numbers' table in openssl speed output")
    tail = out.split(_NUMBERS_NOTE, 1)[1]
    m = re.search(r"^type\s+(\d+) bytes\s*$", tail, re.M)
    if not m or int(m.group(1)) != size:
        raise ValueError(f"openssl speed table is not for {size} bytes")
    rows = [ln for ln in tail[m.end():].splitlines() if ln.strip()]
    if not rows:
        raise ValueError("openssl speed table has no row")
    value = rows[0].split()[-1]
    if not value.endswith("k"):
        raise ValueError(f"unexpected openssl speed figure {value!r}")
    return float(value[:-1]) * 1000.0


def openssl_speed_one(flag: str, name: str, size: int, seconds: int = 1) -> dict:
    key = (flag, name, size, seconds)
    if key in _SPEED_CACHE:
        return _SPEED_CACHE[key]
    cmd = ["openssl", "speed", flag, name, "-bytes", str(size), "-seconds", str(seconds)]
    res: dict = {"command": " ".join(cmd)}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30 + 4 * seconds)
        bps = parse_openssl_speed(p.stdout, size)
        res.update(bytes_per_s=bps, mpps=bps / size / 1e6)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        res["error"] = str(e)
    _SPEED_CACHE[key] = res
    return res


def openssl_speed(alg: str, size: int, seconds: int = 1) -> dict:
    """`openssl speed` for the primitives of one ESP transform at one size:
    {'mpps': combined (1 / sum of 1/mpps of the parts), 'parts': [...]}."""
    parts = [openssl_speed_one(flag, name, size, seconds)
             for flag, name in OPENSSL_SPEED_PARTS.get(alg, [])]
    ok = parts and all("mpps" in p for p in parts)
    return {"mpps": 1.0 / sum(1.0 / p["mpps"] for p in parts) if ok else None,
            "parts": parts}


# --- tables ---------------------------------------------------------------

@dataclass
class Column:
    key: str
    header: str
    fmt: str = "{}"          # applied to non-None values
    align: str = ">"


def fmt_cell(col: Column, value) -> str:
    if value is None:
        return "-"
    try:
        return col.fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def render_table(columns: Sequence[Column], rows: Iterable[dict]) -> str:
    cells = [[c.header for c in columns]]
    for r in rows:
        cells.append([fmt_cell(c, r.get(c.key)) for c in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = []
    for k, row in enumerate(cells):
        out.append("  ".join(f"{v:{c.align}{w}}" for v, c, w in zip(row, columns, widths))
                   .rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


# --- JSON -----------------------------------------------------------------

def header(scenario: str, args) -> dict:
    """The facts every result file starts with."""
    flags = {k: v for k, v in vars(args).items() if not callable(v)}
    return {
        "scenario": scenario,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "command": " ".join([Path(sys.executable).name, "-m", "bench"] + sys.argv[1:]),
        "flags": flags,
        "machine": machine_info(),
        "build": build_info(),
    }


def default_json_path(scenario: str, commit: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{scenario}-{commit[:10]}-{stamp}.json"


def write_json(path: str | Path | None, doc: dict) -> Path:
    p = Path(path) if path else default_json_path(doc["scenario"], doc["git"]["commit"])
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
        f.write("\n")
    return p


def _json_default(o):
    try:
        import numpy
        if isinstance(o, numpy.generic):
            return o.item()
    except ImportError:
        pass
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def describe_machine(doc: dict) -> str:
    m, g = doc["machine"], doc["git"]
    stale = doc.get("build", {}).get("pyx_newer_than_build")
    return (("WARNING: rebuild needed, newer than the build: " + ", ".join(stale) + "\n"
             if stale else "") +
            f"commit {g['commit'][:12]}{' (dirty)' if g['dirty'] else ''} | "
            f"{m['cpu_model']} ({m['cpu_vendor']} {m['cpu_family_model']}), "
            f"{m['cores']} cores, pinned to CPU {doc.get('pinned_cpu')} | "
            f"kernel {m['kernel']} | {m['openssl_cli']} | ipsec-mb {m['ipsecmb_arch']} | "
            f"load {', '.join(f'{x:.2f}' for x in m['loadavg'])}")


def now() -> float:
    return time.perf_counter()


# --- charts (optional: matplotlib, the project's `bench` extra) -------------

def plot(path: Path, panels: list[dict], title: str) -> Path | None:
    """One PNG of side-by-side line charts. Each panel: {'title', 'xlabel',
    'ylabel', 'logx', 'logy', 'series': {label: (xs, ys)}}. Returns None
    (and says so) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no PNG: matplotlib is not installed; pip install '.[bench]')")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for label, (xs, ys) in p["series"].items():
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(p["title"])
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p["ylabel"])
        if p.get("logx"):
            ax.set_xscale("log")
        if p.get("logy"):
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chart_title(doc: dict) -> str:
    m, g = doc["machine"], doc["git"]
    return (f"fastpath {doc['scenario']} @ {g['commit'][:10]}{'+dirty' if g['dirty'] else ''}, "
            f"{doc['started']}\n{m['cpu_model']}, pinned 1 core | {m['openssl_cli'].split('(')[0].strip()} | "
            f"ipsec-mb {m['ipsecmb_arch']}")
