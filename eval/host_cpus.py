"""Keep the servers sharing one GPU host off each other's CPU cores while one is measured.

An idle SGLang scheduler spins (without ``--sleep-on-idle``), and an eager decode step is bound by
the host: a measured scheduler that shares a physical core with an idle one, or with the client,
runs slower by an amount that changes from run to run. ``CpuLayout`` splits this process's
allowed CPUs, by whole physical cores, into cores for the idle servers, for the client (this
process) and for the measured server; ``isolate`` moves every thread of each onto its share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from eval.server import SGLangServer

# Fewer physical cores than this and there is nothing to split: every server shares them all.
MIN_PHYSICAL_CORES = 4


# The CPUs this process may use as it started, before ``isolate`` narrowed them to the client's.
ALLOWED_CPUS = frozenset(os.sched_getaffinity(0))


def physical_cores() -> list[list[int]]:
    """The allowed logical CPUs grouped by physical core (hyperthread siblings)."""
    cores: dict[tuple[int, ...], list[int]] = {}
    for cpu in sorted(ALLOWED_CPUS):
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        key = tuple(_cpu_list(siblings.read_text())) if siblings.exists() else (cpu,)
        cores.setdefault(key, []).append(cpu)
    return list(cores.values())


def _cpu_list(text: str) -> list[int]:
    """``0-3,8`` as ``[0, 1, 2, 3, 8]``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


@dataclass(frozen=True)
class CpuLayout:
    """Disjoint logical CPUs for the idle servers, the client and the measured server."""

    idle: tuple[int, ...]
    client: tuple[int, ...]
    measured: tuple[int, ...]

    @classmethod
    def for_host(cls, idle_cores: int = 1, client_cores: int = 2) -> CpuLayout | None:
        """One physical core for every idle server together, two for the client, the rest for the
        measured server; None where the host has fewer than ``MIN_PHYSICAL_CORES``."""
        cores = physical_cores()
        if len(cores) < max(MIN_PHYSICAL_CORES, idle_cores + client_cores + 1):
            return None

        def flat(group: list[list[int]]) -> tuple[int, ...]:
            return tuple(cpu for core in group for cpu in core)

        return cls(
            idle=flat(cores[:idle_cores]),
            client=flat(cores[idle_cores : idle_cores + client_cores]),
            measured=flat(cores[idle_cores + client_cores :]),
        )


def paired_cores(client_cores: int = 2) -> tuple[tuple[int, ...], ...] | None:
    """The client's cores, then two equal disjoint shares of the rest (whole physical cores),
    for two servers measured side by side; None where the host has too few cores."""
    cores = physical_cores()
    share = (len(cores) - client_cores) // 2
    if len(cores) < MIN_PHYSICAL_CORES or share < 1:
        return None
    groups = (cores[:client_cores], cores[client_cores : client_cores + share],
              cores[client_cores + share : client_cores + 2 * share])  # fmt: skip
    return tuple(tuple(cpu for core in group for cpu in core) for group in groups)


def set_affinity(pid: int, cpus: Iterable[int], *, with_children: bool) -> None:
    """Every thread of ``pid`` (and of its descendants, ``with_children``) onto ``cpus``; a
    process or thread that exits meanwhile is skipped."""
    cpus = set(cpus)
    try:
        root = psutil.Process(pid)
        procs = [root] + (root.children(recursive=True) if with_children else [])
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            threads = proc.threads()
        except psutil.NoSuchProcess:
            continue
        for thread in threads:
            try:
                os.sched_setaffinity(thread.id, cpus)
            except (ProcessLookupError, PermissionError):
                continue


def isolate(
    layout: CpuLayout | None, measured: SGLangServer, others: Iterable[SGLangServer]
) -> None:
    """The ``measured`` server's processes on the measured cores, the ``others`` on the idle
    cores, this process on the client cores; nothing without a layout."""
    if layout is None:
        return
    for server in others:
        if server is not measured and server.proc is not None:
            set_affinity(server.proc.pid, layout.idle, with_children=True)
    set_affinity(os.getpid(), layout.client, with_children=False)
    if measured.proc is not None:
        set_affinity(measured.proc.pid, layout.measured, with_children=True)


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, summed over this host's CPUs, so far."""
    return psutil.cpu_times().steal
