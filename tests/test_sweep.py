"""The sweep's CPU smoke: real servers, two configurations at two pool sizes, one workload."""

from __future__ import annotations

import gzip
import json
import threading

import pytest
from conftest import SHARED_PREFIX_SETTINGS

import eval.sweep
from eval.common import flush_cache
from eval.sweep import (
    CONFIGURATIONS,
    UNLIMITED,
    measure_by_gpu,
    merge,
    per_cell,
    run_sweep,
    standings,
)


def test_every_policy_is_a_stock_flag_or_asymcache():
    assert set(CONFIGURATIONS) >= {"lru", "lfu", "slru", "priority", "no-radix", "asymcache"}
    stock = [c for c, flags in CONFIGURATIONS.items() if "--enable-asymcache" not in flags]
    assert all(CONFIGURATIONS[c][0].startswith("--") for c in stock)


def test_sweep_two_configurations_two_pools_two_seeds_on_the_cpu(tiny_model, tmp_path, monkeypatch):
    flushed = []

    def flush(url: str) -> None:
        flush_cache(url)  # the real endpoint: it raises unless the server flushed
        flushed.append(url)

    monkeypatch.setattr(eval.sweep, "flush_cache", flush)
    sweep = run_sweep(
        str(tiny_model), "generated-shared-prefix", SHARED_PREFIX_SETTINGS, ["lru", "asymcache"],
        [1200, 2400], tmp_path, cpu=True, seeds=[0, 1],
    )  # fmt: skip
    runs = {(r["config"], r["pool"], r["seed"]): r for r in sweep["runs"]}
    assert set(runs) == {
        (c, p, s) for c in ("lru", "asymcache") for p in ("1200", "2400") for s in (0, 1)
    }
    for (config, pool, seed), run in runs.items():
        assert run["workload"]["seed"] == seed
        assert run["server"]["max_total_num_tokens"] == int(pool)
        assert run["server"]["radix_eviction_policy"] == "lru"
        assert run["metrics"]["requests"] == 6 and run["metrics"]["cached_tokens"] > 0
        assert len(run["metrics"]["ttft_samples_s"]) == 6
        calls = run["metrics"]["calls"]
        assert len(calls) == 6 and sum(c[3] for c in calls) == run["metrics"]["cached_tokens"]
        assert (
            run["metrics"]["itl_p99_s"] > 0 and run["metrics"]["computed_prompt_tokens_per_s"] > 0
        )
        assert bool(run["asymcache"]) == (config == "asymcache")
        if config == "asymcache":  # this run's counters, not the server's totals since start
            assert run["asymcache"]["cached_tokens"] == run["metrics"]["cached_tokens"]
        assert json.loads((tmp_path / f"{config}_{pool}_seed{seed}.json").read_text()) == (
            json.loads(json.dumps(run))
        )
    # Before every run: each CPU server runs its two seeds in turn.
    assert len(flushed) == 8 and all(flushed[i] == flushed[i + 1] for i in range(0, 8, 2))
    recorded = json.loads((tmp_path / "sweep.json").read_text())
    assert len(recorded["runs"]) == 8 and recorded["one_at_a_time"] is True
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert (tmp_path / "sweep_cdf.png").stat().st_size > 0
    assert UNLIMITED not in {r["pool"] for r in sweep["runs"]}


def test_servers_on_one_gpu_are_measured_in_turn_and_gpus_side_by_side():
    started = threading.Barrier(2, timeout=10)

    def measure(config: str) -> dict:
        if config in ("a", "b"):  # the first on each GPU: both must be running at once
            started.wait()
        return {"config": config, "thread": threading.get_ident()}

    runs = measure_by_gpu(["a", "b", "c", "d", "e"], 2, measure)
    assert [r["config"] for r in runs] == ["a", "b", "c", "d", "e"]
    threads = {r["config"]: r["thread"] for r in runs}
    assert threads["a"] == threads["c"] == threads["e"] != threads["b"] == threads["d"]


def _sweep(workload: str, date: str, runs: list[tuple[str, str, float]], card: str = "H") -> dict:
    return {
        "card": card, "commit": "c", "date": date, "workload": workload, "overrides": [],
        "base_args": ["--x"], "configurations": {c: CONFIGURATIONS[c] for c, _, _ in runs},
        "runs": [
            {"config": c, "pool": p, "date": date,
             "metrics": {"ttft_mean_s": t, "ttft_p90_s": 2 * t}}
            for c, p, t in runs
        ],
    }  # fmt: skip


def test_merge_keeps_the_latest_run_per_cell_and_ranks_against_the_best_stock_policy(tmp_path):
    first = _sweep("agents", "2026-12-01", [("lru", "100", 4.0), ("asymcache", "100", 3.0)])
    second = _sweep(
        "agents", "2026-12-02", [("lfu", "100", 2.0), ("lru", "100", 5.0), ("lru", UNLIMITED, 1.0)]
    )
    other = _sweep("long-multi-turn", "2026-12-02", [("lru", "50", 9.0), ("asymcache", "50", 9.9)])
    paths = []
    for i, sweep in enumerate((second, first, other)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(sweep))
    merged = merge(paths, tmp_path / "out" / "h_sweep.json")
    agents = merged["workloads"]["agents"]
    cells = [(r["config"], r["pool"], r["metrics"]["ttft_mean_s"]) for r in agents["runs"]]
    assert cells == [("lru", "100", 5.0), ("lru", UNLIMITED, 1.0), ("asymcache", "100", 3.0),
                     ("lfu", "100", 2.0)]  # fmt: skip
    assert agents["standings"] == [
        {"pool": 100, "best_stock": "lfu", "ttft_mean_ratio": 1.5, "ttft_p90_ratio": 1.5}
    ]
    assert merged["workloads"]["long-multi-turn"]["standings"][0]["ttft_mean_ratio"] == 1.1
    assert [p["date"] for p in agents["parts"]] == ["2026-12-01", "2026-12-02"]
    for name in ("h_sweep_agents.png", "h_sweep_agents_cdf.png", "h_sweep_long-multi-turn.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "h_sweep.json").read_text()) == json.loads(
        json.dumps(merged)
    )


def test_lru_under_lpm_admission_counts_as_a_stock_policy_in_the_standings():
    runs = _sweep(
        "agents", "2026-12-01",
        [("lru", "100", 4.0), ("lru+lpm", "100", 2.0), ("asymcache+lpm", "100", 1.0),
         ("asymcache", "100", 3.0)],
    )["runs"]  # fmt: skip
    assert standings(runs) == [
        {"pool": 100, "best_stock": "lru+lpm", "ttft_mean_ratio": 1.5, "ttft_p90_ratio": 1.5}
    ]


def test_a_merged_file_merges_again_with_a_later_sweep(tmp_path):
    first = tmp_path / "first.json"
    first.write_text(json.dumps(_sweep("agents", "2026-12-01", [("lru", "100", 4.0)])))
    merge([first], tmp_path / "merged.json")
    later = tmp_path / "later.json"
    later.write_text(
        json.dumps(_sweep("agents", "2026-12-02", [("lru", "200", 2.0), ("lru", "100", 3.0)]))
    )
    again = merge([tmp_path / "merged.json", later], tmp_path / "again.json")["workloads"]["agents"]
    assert [(r["pool"], r["metrics"]["ttft_mean_s"]) for r in again["runs"]] == [
        ("100", 3.0), ("200", 2.0)
    ]  # fmt: skip
    assert [p["cells"] for p in again["parts"]] == [["lru@100"], ["lru@100", "lru@200"]]


def test_runs_of_several_seeds_are_kept_apart_and_ranked_by_their_means(tmp_path):
    sweep = _sweep(
        "agents", "2026-12-01",
        [("lru", "100", 4.0), ("asymcache", "100", 3.0), ("lru", "100", 2.0),
         ("asymcache", "100", 3.0)],
    )  # fmt: skip
    for run, seed in zip(sweep["runs"], (0, 0, 1, 1)):
        run["seed"] = seed
        run["metrics"]["ttft_samples_s"] = [run["metrics"]["ttft_mean_s"]]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(sweep))
    agents = merge([path], tmp_path / "m.json")["workloads"]["agents"]
    assert [(r["config"], r["seed"]) for r in agents["runs"]] == [
        ("lru", 0), ("lru", 1), ("asymcache", 0), ("asymcache", 1)
    ]  # fmt: skip
    assert agents["standings"] == [
        {"pool": 100, "best_stock": "lru", "ttft_mean_ratio": 1.0, "ttft_p90_ratio": 1.0}
    ]
    cells = per_cell(agents["runs"])
    assert [(c["config"], c["seeds"], c["metrics"]["ttft_samples_s"]) for c in cells] == [
        ("lru", 2, [2.0, 4.0]), ("asymcache", 2, [3.0, 3.0])
    ]  # fmt: skip


def test_a_gzipped_merge_reads_back_and_names_its_plots_without_the_suffixes(tmp_path):
    first = tmp_path / "first.json"
    first.write_text(json.dumps(_sweep("agents", "2026-12-01", [("lru", "100", 4.0)])))
    merged = merge([first], tmp_path / "h_policy.json.gz")
    assert json.loads(gzip.decompress((tmp_path / "h_policy.json.gz").read_bytes())) == merged
    assert (tmp_path / "h_policy_agents.png").stat().st_size > 0
    later = tmp_path / "later.json"
    later.write_text(json.dumps(_sweep("agents", "2026-12-02", [("lru", "100", 3.0)])))
    again = merge([tmp_path / "h_policy.json.gz", later], tmp_path / "again.json")
    assert [r["metrics"]["ttft_mean_s"] for r in again["workloads"]["agents"]["runs"]] == [3.0]


def test_merge_refuses_two_cards_or_two_flag_sets(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_sweep("agents", "1", [("lru", "1", 1.0)])))
    b = tmp_path / "b.json"
    b.write_text(json.dumps(_sweep("agents", "2", [("lru", "1", 1.0)], card="other")))
    with pytest.raises(ValueError, match="different cards"):
        merge([a, b], tmp_path / "m.json")
    flags = _sweep("agents", "2", [("lru", "1", 1.0)])
    flags["base_args"] = ["--y"]
    b.write_text(json.dumps(flags))
    with pytest.raises(ValueError, match="base_args differ"):
        merge([a, b], tmp_path / "m.json")
