"""CPU scheduling of a home agent's threads (SCHED_FIFO, at low priorities).

A Binding Ack has to wait for three threads: the worker that reads the
Binding Update, the control thread that processes it, and every worker
again, which must reach a batch boundary before the grace period ends
(SPEC §4). With ordinary (SCHED_OTHER) scheduling, each of them can wait
for a CPU behind other runnable processes. The kernel then switches at its
tick (4 ms at HZ=250) or when a slice ends. On a loaded machine that added
milliseconds to one move in twenty (issue 4: BU->BA p99 6-10 ms at 80 %
load, p50 0.5 ms).

So a home agent runs its workers at SCHED_FIFO priority WORKER_PRIORITY and
its control thread one above (CONTROL_PRIORITY). These are the lowest
real-time priorities, below the kernel's own threads (threaded IRQs run
at 50). The control thread must be the higher of the two. It runs in
short bursts when an eventfd or a timer wakes it, and its grace-period
wait *sleeps* (sad.wait_grace), so a worker it preempted on the same CPU
finishes its batch meanwhile. With the order the other way round, a busy
worker could keep the control thread off a CPU.

What this costs: a worker that is never idle (the forwarder saturated)
keeps its CPU. The kernel's real-time throttling leaves other tasks 5 %
of it (kernel.sched_rt_runtime_us) and moves what it can to other CPUs.
A flood of packets to the home agent's address keeps the control thread
busy in the same way. Operators who would rather share fairly set
`[home_agent] realtime = false`. Without the privilege (CAP_SYS_NICE or
RLIMIT_RTPRIO, or a cgroup with no real-time runtime), fastpath logs it
and runs with ordinary scheduling.

Threads these threads create (the executor that fsyncs sequence
reservations, for example) do not inherit the policy
(SCHED_RESET_ON_FORK). The mobile-node role does not use this. A mobile
node is a host: a busy real-time worker would take CPU time from the
applications whose traffic it carries.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("fastpath.sched")

WORKER_PRIORITY = 1
CONTROL_PRIORITY = 2


def set_realtime(tid: int, priority: int) -> str | None:
    """SCHED_FIFO at `priority` for thread `tid` (0: the calling thread),
    not inherited by the threads and processes it creates. None when it was
    applied, else why not (the thread keeps its scheduling)."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
    except OSError as e:          # EPERM: no CAP_SYS_NICE / RLIMIT_RTPRIO, or no RT runtime
        return e.strerror or str(e)
    return None


def policy(tid: int = 0) -> tuple[str, int]:
    """(policy name, priority) of thread `tid`, e.g. ("fifo", 2)."""
    p = os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK
    names = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr",
             getattr(os, "SCHED_BATCH", -1): "batch", getattr(os, "SCHED_IDLE", -2): "idle"}
    return names.get(p, str(p)), os.sched_getparam(tid).sched_priority


def prioritise(worker_threads) -> dict:
    """Make the calling thread (the control loop) and `worker_threads`
    (threading.Thread objects, started) real-time as the module doc says.
    Returns {"control": reason-or-None, "workers": [reason-or-None, ...]}."""
    out = {"control": set_realtime(0, CONTROL_PRIORITY), "workers": []}
    for t in worker_threads:
        tid = getattr(t, "native_id", None)
        if tid is None or not t.is_alive():
            out["workers"].append("not running")
            continue
        out["workers"].append(set_realtime(tid, WORKER_PRIORITY))
    failed = [r for r in [out["control"], *out["workers"]] if r is not None]
    if failed:
        log.warning("real-time scheduling not applied (%s): Binding Acks may wait for a CPU "
                    "behind other processes; grant CAP_SYS_NICE, or set [home_agent] "
                    "realtime = false to silence this", failed[0])
    else:
        log.info("real-time scheduling: control thread SCHED_FIFO %d, %d worker(s) "
                 "SCHED_FIFO %d", CONTROL_PRIORITY, len(out["workers"]), WORKER_PRIORITY)
    return out
