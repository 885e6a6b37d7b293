"""eval.host_cpus: the core split and the affinity of a real process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from eval import host_cpus
from eval.host_cpus import CpuLayout, set_affinity

# A child that starts a thread and a grandchild, then sleeps: a tree like a server's.
TREE = """
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", flush=True)
time.sleep(60)
"""


def test_cpu_list_parses_ranges_and_singles() -> None:
    assert host_cpus._cpu_list("0-3,8\n") == [0, 1, 2, 3, 8]
    assert host_cpus._cpu_list("5") == [5]


def test_layout_splits_whole_physical_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = [[i, i + 8] for i in range(8)]
    monkeypatch.setattr(host_cpus, "physical_cores", lambda: cores)
    layout = CpuLayout.for_host()
    assert layout == CpuLayout(
        idle=(0, 8), client=(1, 9, 2, 10), measured=(3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
    )


def test_layout_is_none_on_a_small_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_cpus, "physical_cores", lambda: [[0], [1], [2]])
    assert CpuLayout.for_host() is None


def test_physical_cores_cover_the_allowed_cpus() -> None:
    cores = host_cpus.physical_cores()
    assert sorted(c for core in cores for c in core) == sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_set_affinity_moves_every_thread_of_the_tree() -> None:
    target = {min(os.sched_getaffinity(0))}
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
        assert len(tree) == 2 and len(root.threads()) >= 2
        set_affinity(proc.pid, target, with_children=True)
        for member in tree:
            for thread in member.threads():
                assert os.sched_getaffinity(thread.id) == target
    finally:
        for member in psutil.Process(proc.pid).children(recursive=True):
            member.kill()
        proc.kill()
        proc.wait()


def test_paired_cores_give_two_equal_shares_beside_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host_cpus, "physical_cores", lambda: [[i, i + 8] for i in range(7)])
    assert host_cpus.paired_cores() == ((0, 8, 1, 9), (2, 10, 3, 11), (4, 12, 5, 13))
    monkeypatch.setattr(host_cpus, "physical_cores", lambda: [[0], [1], [2]])
    assert host_cpus.paired_cores() is None
