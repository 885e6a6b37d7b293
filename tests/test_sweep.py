"""The sweep's CPU smoke: real servers, two configurations at two pool sizes, one workload."""

from __future__ import annotations

import json
import threading

from eval.sweep import CONFIGURATIONS, UNLIMITED, measure_by_gpu, run_sweep

SETTINGS = ["groups=2", "prompts_per_group=3", "system_prompt_tokens=200", "question_tokens=20",
            "output_tokens=4", "max_in_flight=2", "vocab=10,500"]  # fmt: skip


def test_every_policy_is_a_stock_flag_or_asymcache():
    assert set(CONFIGURATIONS) >= {"lru", "lfu", "slru", "priority", "no-radix", "asymcache"}
    stock = [c for c, flags in CONFIGURATIONS.items() if "--enable-asymcache" not in flags]
    assert all(CONFIGURATIONS[c][0].startswith("--") for c in stock)


def test_sweep_two_configurations_two_pools_on_the_cpu(tiny_model, tmp_path):
    sweep = run_sweep(
        str(tiny_model), "generated-shared-prefix", SETTINGS, ["lru", "asymcache"],
        [1200, 2400], tmp_path, cpu=True,
    )  # fmt: skip
    runs = {(r["config"], r["pool"]): r for r in sweep["runs"]}
    assert set(runs) == {(c, p) for c in ("lru", "asymcache") for p in ("1200", "2400")}
    for (config, pool), run in runs.items():
        assert run["server"]["max_total_num_tokens"] == int(pool)
        assert run["server"]["radix_eviction_policy"] == "lru"
        assert run["metrics"]["requests"] == 6 and run["metrics"]["cached_tokens"] > 0
        assert len(run["metrics"]["ttft_samples_s"]) == 6
        assert (
            run["metrics"]["itl_p99_s"] > 0 and run["metrics"]["computed_prompt_tokens_per_s"] > 0
        )
        assert bool(run["asymcache"]) == (config == "asymcache")
        assert json.loads((tmp_path / f"{config}_{pool}.json").read_text()) == json.loads(
            json.dumps(run)
        )
    assert len(json.loads((tmp_path / "sweep.json").read_text())["runs"]) == 4
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
