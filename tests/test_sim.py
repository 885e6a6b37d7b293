"""The simulator: its accounting, a case with a known answer, the caches it drives, its inputs."""

from __future__ import annotations

import dataclasses
import json
import math
from array import array
from pathlib import Path

import pytest
from sglang.srt.managers.schedule_policy import PrefillAdder
from sglang.srt.plugins.hook_registry import HookRegistry

from asymcache_sglang.core.cost import StaticCostModel
from asymcache_sglang.core.hit_density import HitDensityConfig
from asymcache_sglang.core.latency_fit import BatchFeatures
from asymcache_sglang.core.reuse import ReuseEstimator
from asymcache_sglang.plugin import register
from eval.agent_workload import AgentPrograms
from eval.common import CALL_FIELDS
from eval.mooncake_trace import TraceCut
from eval.sim.__main__ import advice, run_calls, run_sweep, seed_sweep, serving_path
from eval.sim.engine import (
    CACHES,
    ORACLE,
    SIM_ONLY,
    Engine,
    EngineConfig,
    cached_slots,
    held_slots,
    is_configuration,
    simulate,
    unhooked,
)
from eval.sim.learned import ClassHitDensityTree
from eval.sim.oracle import NextUseHoleAwareTree
from eval.sim.scripts import (
    Call,
    RoundRobinClient,
    Script,
    SessionClient,
    agent_scripts,
    long_multi_turn_scripts,
    mooncake_scripts,
)
from eval.sim.step_model import StepModel, fit_step_model, host_time_per_step
from eval.sim.summary import compare_calls, summarize
from eval.sweep import CONFIGURATIONS, plot, plot_cdf
from eval.workloads import LongMultiTurn, MultiTurnWorkload

TRACE = (
    Path(__file__).resolve().parents[1]
    / "eval/results/traces/h200_b1c14b1_engage_pressure.jsonl.gz"
)
SMALL = LongMultiTurn(
    sessions=4, turns=4, doc_tokens=(1500, 2500), question_tokens=(20, 60), answer_tokens=8,
    think_s=(0.5, 1.5), arrival_gap_s=0.2,
)  # fmt: skip


@pytest.fixture(scope="module")
def step() -> StepModel:
    model, fit = fit_step_model(TRACE)
    assert fit["steps"] > 500 and fit["mean_abs_rel_err"] < 0.1, fit
    return model


def test_the_simulator_runs_what_the_gpu_sweep_runs():
    assert set(CACHES) <= set(CONFIGURATIONS)
    assert all(is_configuration(c) for c in CONFIGURATIONS)
    assert not is_configuration("lru+dfs-weight") and not is_configuration("fifo")


@pytest.mark.parametrize("cache", [*CACHES, *SIM_ONLY])
def test_every_slot_is_free_cached_or_held_after_every_step(cache, step):
    pool = 4000
    scripts = long_multi_turn_scripts(SMALL)
    seen = []

    def check(engine: Engine) -> None:
        total = engine.allocator.available_size() + cached_slots(engine) + held_slots(engine)
        assert total == pool, (engine.now, total)
        seen.append(engine.now)

    result = Engine(EngineConfig(pool_tokens=pool, cache=cache, chunk_tokens=512), step).run(
        SessionClient(scripts), on_step=check
    )
    assert len(seen) > 50 and seen == sorted(seen)
    assert len(result.records) == SMALL.sessions * SMALL.turns
    assert all(r.output_tokens == SMALL.answer_tokens for r in result.records)
    if cache.startswith("asymcache"):
        assert result.counters["chunk_fallbacks"] == 0
        assert (result.counters["plans"] > 0) == (cache != "asymcache-no-holes")


def test_one_request_takes_its_chunks_then_its_decodes():
    """1 s per step, 1 ms per new token, 0.1 s per decode request: a 2,500-token prompt in
    chunks of 1,000 is three steps (3 s + 2.5 s) and each later token one step of 1.1 s."""
    step = StepModel((1.0, 1e-3, 0.0, 0.1, 0.0, 0.0))
    script = Script(0, 2.0, list(range(10, 2510)), [Call(5, [], None)])
    config = EngineConfig(pool_tokens=10_000, cache="lru", chunk_tokens=1000)
    result = simulate([script], config, step)
    (record,) = result.records
    assert record.ttft_s == pytest.approx(5.5)
    assert record.tpot_s == pytest.approx(1.1)
    assert record.computed_prompt_tokens == 2500
    metrics = summarize(result, jobs=True)
    assert metrics["itl_p99_s"] == pytest.approx(1.1) and metrics["jct_mean_s"] == pytest.approx(
        9.9
    )
    assert metrics["computed_prompt_tokens_per_s"] == pytest.approx(2500 / 9.9)
    # Admitted as it arrived (nothing ran before it); all of its TTFT is its three prefill steps.
    assert record.admitted_s == 2.0
    assert metrics["ttft_stages"]["queued"]["mean"] == 0.0
    assert metrics["ttft_stages"]["prefill"]["mean"] == pytest.approx(5.5)


@pytest.mark.parametrize("overlap", [True, False])
def test_the_overlap_scheduler_takes_an_arrival_one_step_late(overlap):
    """1 s per step. A decodes from t=1; B arrives at 1.5, during the step [1, 2]. SGLang's
    overlap loop formed the step after it, [2, 3], when [1, 2] started, so B's prefill is [3, 4]
    (TTFT 2.5 s); without overlap it is [2, 3] (1.5 s)."""
    step = StepModel((1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    scripts = [
        Script(0, 0.0, list(range(10, 20)), [Call(6, [], None)]),
        Script(1, 1.5, list(range(30, 40)), [Call(2, [], None)]),
    ]
    config = EngineConfig(pool_tokens=10_000, overlap_schedule=overlap)
    first, second = simulate(scripts, config, step).records
    assert first.ttft_s == 1.0
    assert second.admitted_s == 2.0
    assert second.ttft_s == (2.5 if overlap else 1.5)


def test_the_trips_outside_the_scheduler_add_to_ttft_and_delay_the_next_call():
    """1 s per step; 0.25 s to the scheduler, 0.5 s back. The first call's prefill runs [0.25,
    1.25], its token reaches the client at 1.75 (TTFT 1.75), its last (one decode later) at 2.75;
    the next call, sent 1 s after that, reaches the scheduler at 4.0."""
    step = StepModel((1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    script = Script(0, 0.0, list(range(10, 20)), [Call(2, [7], 1.0), Call(1, [], None)])
    config = EngineConfig(pool_tokens=10_000, to_scheduler_s=0.25, to_client_s=0.5)
    result = simulate([script], config, step)
    first, second = result.records
    assert (first.ttft_s, first.finish_s) == (1.75, 2.75)
    assert second.arrival_s == 3.75 and second.admitted_s == 4.0 and second.ttft_s == 1.75
    stages = summarize(result, jobs=False)["ttft_stages"]
    assert {name: s["mean"] for name, s in stages.items()} == pytest.approx(
        {"to_server": 0.25, "queued": 0.0, "prefill": 1.0, "to_client": 0.5}
    )
    measured = {"to_server": {"mean": 0.004}, "to_client": {"mean": 0.002}}
    runs = [{"metrics": {"ttft_stages": measured}}, {"metrics": {}}]
    assert serving_path({"runs": runs}) == {"to_scheduler_s": 0.004, "to_client_s": 0.002}
    with pytest.raises(ValueError, match="enable-metrics"):
        serving_path({"metrics": {}})


def test_the_next_use_tree_keeps_the_program_back_soonest_and_its_tail_over_its_head():
    """Three programs of 4 turns, 100 tokens each, cost rising with position: A is back in 1 s,
    B in 10 s, C closed. C goes first, then B head to tail, then A head to tail."""
    tree = NextUseHoleAwareTree(StaticCostModel(1.0, 0.01), ReuseEstimator(60.0), clock=lambda: 0.0)
    tree.next_use_in_s = {"A": 1.0, "B": 10.0, "C": math.inf}.__getitem__
    for base, program in ((1000, "A"), (2000, "B"), (3000, "C")):
        for turn in range(4):
            end = base + 100 * (turn + 1)
            outcome = tree.insert(
                array("q", range(base, end)), list(range(base, end)), [(0, 100 * turn)]
            )
        tree.tag(outcome.last_node, program)
    tree.release("C")
    evicted = [tree.evict(100)[0][0] for _ in range(12)]
    assert sorted(evicted[:4]) == [3000, 3100, 3200, 3300]
    assert evicted[4:] == [2000, 2100, 2200, 2300, 1000, 1100, 1200, 1300]
    assert tree.evictable_size == 0


def test_the_cache_finds_each_conversation_and_its_return_gaps(step):
    """No session ids: AsymCache's holds tell the 4 conversations apart (each follow-up holds
    the whole last request of its own) and see one return gap per follow-up, each at least the
    think time before it."""
    engine = Engine(EngineConfig(pool_tokens=100_000, cache="asymcache"), step)
    result = engine.run(SessionClient(long_multi_turn_scripts(SMALL)))
    assert len(result.records) == SMALL.sessions * SMALL.turns
    tracker = engine.cache.programs
    assert len(tracker._tip_of) == SMALL.sessions
    assert len(tracker.returns) == SMALL.sessions * (SMALL.turns - 1)
    assert tracker.returns.expected_remaining_s(SMALL.think_s[0]) > 0  # every gap is longer
    assert tracker.counts()["programs_in"] == 0  # every request released


def test_a_returning_session_hits_what_the_pool_kept(step):
    unlimited = summarize(
        simulate(long_multi_turn_scripts(SMALL), EngineConfig(10**6), step), False
    )
    tight = summarize(simulate(long_multi_turn_scripts(SMALL), EngineConfig(3000), step), False)
    none = summarize(
        simulate(long_multi_turn_scripts(SMALL), EngineConfig(10**6, cache="no-radix"), step),
        False,
    )
    assert none["token_hit_rate"] == 0.0
    # Unlimited: every turn after the first reuses its whole history but the last answer token.
    assert 0.6 < unlimited["token_hit_rate"] < 0.8
    assert none["token_hit_rate"] < tight["token_hit_rate"] < unlimited["token_hit_rate"]
    assert tight["ttft_mean_s"] > unlimited["ttft_mean_s"]


def test_a_pool_too_small_for_the_batch_retracts_and_still_finishes(step):
    """Admission reserves only part of each request's answer, so long answers outgrow the pool."""
    scripts = [
        Script(i, 0.05 * i, list(range(1000 * i + 10, 1000 * i + 110)), [Call(1500, [], None)])
        for i in range(8)
    ]
    result = simulate(scripts, EngineConfig(pool_tokens=3000, cache="lru"), step)
    assert result.steps["retracted"] > 0
    assert all(r.output_tokens == 1500 for r in result.records)


def test_scripts_follow_the_workloads_draws():
    scripts = long_multi_turn_scripts(SMALL)
    assert scripts == long_multi_turn_scripts(SMALL)
    assert [s.arrival_s for s in scripts] == [i * SMALL.arrival_gap_s for i in range(4)]
    assert all(1500 <= len(s.prompt_ids) <= 2500 for s in scripts)
    assert [c.then_wait_s is None for c in scripts[0].calls] == [False, False, False, True]
    agents = agent_scripts(AgentPrograms(sessions=3))
    assert all(a.prompt_ids[:2048] == agents[0].prompt_ids[:2048] for a in agents)
    assert all(a.calls[-1].then_wait_s is None for a in agents)


def test_the_step_model_prices_a_forward_from_its_features():
    step = StepModel((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), host_extend_s=0.5, host_decode_s=0.25)
    features = BatchFeatures.from_segments([(0, 2)], [7])
    # [1, new 2, new_ctx 2, decodes 1, decode_ctx 7, extend 1]
    assert step.forward_s(features) == pytest.approx(1 + 4 + 6 + 4 + 35 + 6)
    assert step.step_s(features) == pytest.approx(1 + 4 + 6 + 4 + 35 + 6 + 0.5)
    decode = BatchFeatures.from_segments([], [7])
    assert step.step_s(decode) == pytest.approx(step.forward_s(decode) + 0.25)


def test_host_time_per_step_is_the_launch_gap_beyond_the_forward(tmp_path):
    rows = [
        # an extend of 10 ms, the next launch 14 ms later: 4 ms of host time
        {"new_tokens": 5, "new_ctx": 2.0, "decode_reqs": 0, "decode_ctx": 0, "seconds": 0.010,
         "launched_s": 1.000},
        {"new_tokens": 0, "new_ctx": 0.0, "decode_reqs": 1, "decode_ctx": 6, "seconds": 0.005,
         "launched_s": 1.014},
        # a decode step, then 1 ms to the next launch
        {"new_tokens": 0, "new_ctx": 0.0, "decode_reqs": 1, "decode_ctx": 7, "seconds": 0.005,
         "launched_s": 1.020},
        # then the scheduler idles for seconds: not host time
        {"new_tokens": 0, "new_ctx": 0.0, "decode_reqs": 1, "decode_ctx": 8, "seconds": 0.005,
         "launched_s": 3.000},
    ]  # fmt: skip
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    host = host_time_per_step(trace)
    assert host == {"host_extend_s": pytest.approx(0.004), "host_decode_s": pytest.approx(0.001),
                    "extend_gaps": 1, "decode_gaps": 1}  # fmt: skip
    for row in rows:
        del row["launched_s"]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert host_time_per_step(trace) is None


def test_the_oracle_keeps_the_session_that_comes_back():
    """A comes back at 10 s, B is done after its second call at about 1 s; C needs room at 2 s.
    LRU evicts A (used longest ago) and A's return misses; the oracle evicts B and A hits."""
    step = StepModel((1e-3, 1e-6, 0.0, 1e-4, 0.0, 0.0))
    tokens = iter(range(10, 10**6))

    def prompt(n: int) -> list[int]:
        return [next(tokens) for _ in range(n)]

    scripts = [
        Script(0, 0.0, prompt(1000), [Call(8, prompt(10), 10.0), Call(8, [], None)]),
        Script(1, 0.1, prompt(1000), [Call(8, prompt(10), 1.0), Call(8, [], None)]),
        Script(2, 2.0, prompt(1000), [Call(8, [], None)]),
    ]
    returns = {}
    for cache in ("lru", "belady"):
        result = simulate(scripts, EngineConfig(pool_tokens=2600, cache=cache), step)
        (a_return,) = [r for r in result.records if (r.session, r.call) == (0, 1)]
        returns[cache] = a_return.computed_prompt_tokens
    assert returns["lru"] > 1000 and returns["belady"] < 20, returns


def test_a_simulated_sweep_advises_per_pool(tmp_path, step):
    sweep = run_sweep(
        "long-multi-turn",
        ["sessions=3", "turns=3", "doc_tokens=1500,2500", "answer_tokens=8"],
        ["lru", "asymcache", ORACLE],
        [3000, 6000, None],
        TRACE,
    )
    assert [(r["config"], r["pool"]) for r in sweep["runs"]][:3] == [
        ("lru", "3000"), ("asymcache", "3000"), (ORACLE, "3000"),
    ]  # fmt: skip
    lines = advice(sweep)
    assert len(lines) == 2 and all("oracle" in line and "unlimited" in line for line in lines)
    assert all(ORACLE not in line.split("(")[0] for line in lines)
    plot(sweep, tmp_path / "a.png")
    plot_cdf(sweep, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 0
    # Every call as a measured run lists it: 3 sessions of 3 turns, prompts grow turn by turn.
    for run in sweep["runs"]:
        metrics = run["metrics"]
        calls = metrics["calls"]
        assert [(c[0], c[1]) for c in calls] == [(s, t) for s in range(3) for t in range(3)]
        assert all(len(c) == len(CALL_FIELDS) and 0 <= c[3] < c[2] for c in calls)
        assert sum(c[3] for c in calls) == metrics["cached_tokens"]
        assert sorted(c[4] for c in calls) == metrics["ttft_samples_s"]
    same = compare_calls(calls, calls)
    assert same["calls"] == 9 and same["differ"] == [] and same["unmatched"] == 0


def test_calls_of_two_runs_line_up_by_session_and_turn():
    measured = [[0, 0, 1000, 0, 0.5], [0, 1, 1100, 1000, 0.1], [1, 0, 900, 0, 0.4]]
    simulated = [[0, 1, 1100, 600, 0.2], [0, 0, 1000, 0, 0.5], [2, 0, 10, 0, 0.1]]
    out = compare_calls(measured, simulated, min_tokens=256)
    assert out["calls"] == 2 and out["unmatched"] == 2
    assert out["cached_tokens"] == [1000, 600]
    assert out["ttft_sum_s"] == pytest.approx([0.6, 0.7])
    assert out["differ"] == [
        {
            "session": 0,
            "turn": 1,
            "prompt_tokens": 1100,
            "cached": [1000, 600],
            "ttft_s": [0.1, 0.2],
        }
    ]
    assert compare_calls(measured, simulated, min_tokens=401)["differ"] == []
    sweep = {
        "runs": [
            {"config": "asymcache", "pool": "100", "seed": s, "metrics": {"calls": [[s]]}}
            for s in (0, 1)
        ]
    }
    assert run_calls(sweep, "asymcache", "100", seed=1) == [[1]]
    assert run_calls(sweep, "asymcache", "100") == [[0]]
    with pytest.raises(ValueError, match="no run of lru"):
        run_calls(sweep, "lru", "100")


def test_a_trace_replays_open_loop(tmp_path, step):
    lines = [
        {"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 500, "input_length": 1000, "output_length": 9, "hash_ids": [1, 2, 3]},
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    scripts = mooncake_scripts(TraceCut(trace_path=str(trace), time_scale=2.0))
    assert [(s.arrival_s, len(s.prompt_ids), s.calls[0].max_new_tokens) for s in scripts] == [
        (0.0, 700, 5), (1.0, 1000, 9),
    ]  # fmt: skip
    (first, second) = simulate(scripts, EngineConfig(pool_tokens=10_000), step).records
    # The second request shares the first's 700 prompt tokens (two 512-token blocks, cut).
    assert first.computed_prompt_tokens == 700 and second.computed_prompt_tokens == 300


def test_the_plugins_hooks_in_this_process_do_not_run_twice(step):
    """With the plugin registered (as a server, or test_server_args, does), SGLang's adder
    functions are wrapped by AsymCache's hooks; the engine calls SGLang's own under its hooks."""
    register()
    HookRegistry.apply_hooks()
    stock = PrefillAdder.add_one_req.__wrapped__
    assert unhooked(PrefillAdder.add_one_req) is unhooked(stock) is stock
    result = simulate(
        long_multi_turn_scripts(SMALL),
        EngineConfig(pool_tokens=4000, cache="asymcache", chunk_tokens=512),
        step,
    )
    assert len(result.records) == SMALL.sessions * SMALL.turns
    assert result.counters["plans"] > 0 and result.counters["chunk_fallbacks"] == 0


def test_the_round_robin_client_sends_one_request_at_a_time_in_turn_order():
    workload = MultiTurnWorkload(num_sessions=3, turns=2, first_prompt_tokens=50)
    client = RoundRobinClient(workload)
    (send,) = client.start()
    order = []
    while True:
        order.append((send.session, send.call, len(send.prompt_ids)))
        answer = [7] * workload.max_new_tokens
        sends = client.answered(send, answer, 1.0)
        if not sends:
            break
        (send,) = sends
        assert send.at_s == 1.0
    grown = 50 + workload.max_new_tokens + workload.user_tokens_per_turn
    assert order == [
        (0, 0, 50),
        (1, 0, 50),
        (2, 0, 50),
        (0, 1, grown),
        (1, 1, grown),
        (2, 1, grown),
    ]


def test_hit_density_learns_from_the_trees_idle_periods(step):
    engine = Engine(EngineConfig(pool_tokens=4000, cache="hit-density"), step)
    result = engine.run(SessionClient(long_multi_turn_scripts(SMALL)))
    assert len(result.records) == SMALL.sessions * SMALL.turns
    assert all(r.finish_s is not None for r in result.records)
    density = engine.cache.learned.density
    # Sessions came back (hits) and, under this pool, KV was dropped unused (evictions).
    assert sum(density.hits) > 0 and sum(density.ends) > sum(density.hits)
    # A session's follow-up locks its path after its think time, not within a step.
    idle_hits = sum(h for h, edge in zip(density.hits, density.edges) if edge >= 0.4)
    assert idle_hits > 0
    # Every idle node the tree still holds has an idle-since time; none is locked.
    assert all(node.lock_ref == 0 for node in engine.cache.learned.idle_since)


def test_a_seed_sweep_ranks_against_lru_seed_by_seed():
    result = seed_sweep(
        "long-multi-turn",
        ["sessions=3", "turns=3", "doc_tokens=1500,2500", "answer_tokens=8"],
        ["lru", "lfu", "hit-density"], [3000], TRACE, seeds=2,
    )  # fmt: skip
    cells = {(c["config"], c["pool"]): c for c in result["cells"]}
    assert set(cells) == {("lru", "3000"), ("lfu", "3000"), ("hit-density", "3000")}
    lru = cells[("lru", "3000")]
    assert lru["ttft_mean_ratio_geomean"] == pytest.approx(1.0) and lru["seeds"] == 2
    assert lru["ttft_mean_ratio_range"] == [pytest.approx(1.0), pytest.approx(1.0)]
    learned = cells[("hit-density", "3000")]
    low, high = learned["ttft_mean_ratio_range"]
    assert 0 < low <= learned["ttft_mean_ratio_geomean"] <= high
    assert len(learned["ttft_mean_ratios"]) == 2
    assert min(learned["ttft_mean_ratios"]) == low and max(learned["ttft_mean_ratios"]) == high
    # Seed by seed, over the better of LRU and LFU in that seed; stock ones are not compared.
    best = [min(1.0, r) for r in cells[("lfu", "3000")]["ttft_mean_ratios"]]
    over = [r / b for r, b in zip(learned["ttft_mean_ratios"], best)]
    assert learned["ttft_mean_over_best_stock"] == pytest.approx(over)
    assert "ttft_mean_over_best_stock" not in lru
    with pytest.raises(ValueError, match="lru"):
        seed_sweep("long-multi-turn", [], ["asymcache"], [3000], TRACE, seeds=1)


SMALL_AGENTS = AgentPrograms(
    sessions=4, arrival_rate_per_s=4.0, system_prompt_tokens=256, task_tokens=(200, 400),
    steps=(2, 3), action_tokens=8, tool_result_tokens=(100, 300), tool_delay_median_s=0.5,
)  # fmt: skip


@pytest.mark.parametrize("named", [True, False])
def test_named_long_sessions_are_programs_released_after_their_last_turn(named, step):
    workload = dataclasses.replace(SMALL, name_sessions=named)
    scripts = long_multi_turn_scripts(workload)
    assert all((s.program is not None) == named for s in scripts)
    assert len({s.program for s in scripts}) == (len(scripts) if named else 1)
    engine = Engine(EngineConfig(pool_tokens=4000, cache="asymcache", chunk_tokens=512), step)
    engine.run(SessionClient(scripts))
    assert (engine.cache.tree.stats.released_tokens > 0) == named


@pytest.mark.parametrize("close_programs", [True, False])
def test_programs_that_close_are_released_after_their_last_step(close_programs, step):
    workload = dataclasses.replace(SMALL_AGENTS, close_programs=close_programs)
    scripts = agent_scripts(workload)
    assert all((s.program is not None) == close_programs for s in scripts)
    pool = 4000
    engine = Engine(EngineConfig(pool_tokens=pool, cache="asymcache", chunk_tokens=512), step)
    totals = []

    def check(engine: Engine) -> None:
        totals.append(engine.allocator.available_size() + cached_slots(engine) + held_slots(engine))

    result = engine.run(SessionClient(scripts), on_step=check)
    # Releases leave every slot free, cached or held, as the accounting test asks of every cache.
    assert len(totals) > 20 and set(totals) == {pool}
    assert len(result.records) == sum(len(s.calls) for s in scripts)
    if close_programs:
        # Every program closed once its last step was answered; nothing is tagged any more.
        assert engine.cache.tree.stats.released_tokens > 0
    else:
        assert engine.cache.tree.stats.released_tokens == 0
    # A closed program tags nothing any more; what stays tagged are programs the holds named.
    owners = set(engine.cache.tree._owned)
    assert not owners & {s.program for s in scripts}
    assert all(str(owner).startswith("auto-") for owner in owners)


@pytest.mark.parametrize("cache", ["lru", "asymcache"])
def test_eviction_frees_the_shortfall_for_asymcache_and_the_whole_ask_for_stock(cache, step):
    """SGLang 0.5.16's evict_from_tree_cache evicts as many tokens as the allocation asks for;
    AsymCache's hook evicts only what is missing."""
    engine = Engine(EngineConfig(pool_tokens=3000, cache=cache), step)
    engine.run(SessionClient(long_multi_turn_scripts(SMALL)))
    cached = cached_slots(engine)
    free = engine.allocator.available_size()
    ask = free + 100
    assert cached >= ask, (cached, free)
    asked = []
    evict = engine.cache.evict

    def recording(params):
        asked.append(params.num_tokens)
        return evict(params)

    engine.cache.evict = recording
    engine._evict_for(ask)
    assert engine.allocator.available_size() >= ask
    assert asked == [100 if cache == "asymcache" else ask]
    assert cached - cached_slots(engine) >= 100


def test_the_class_hit_density_tree_learns_hits_and_evictions_by_reuse_class(step, monkeypatch):
    # Learned after a few hundred tokens, so the small workload's evictions go by hit density.
    monkeypatch.setattr(ClassHitDensityTree, "density_config", HitDensityConfig(warmup_tokens=256))
    pool = 4000

    def check(engine: Engine) -> None:
        total = engine.allocator.available_size() + cached_slots(engine) + held_slots(engine)
        assert total == pool, (engine.now, total)

    engine = Engine(EngineConfig(pool_tokens=pool, cache="asymcache-lhd", chunk_tokens=512), step)
    result = engine.run(SessionClient(long_multi_turn_scripts(SMALL)), on_step=check)
    assert len(result.records) == SMALL.sessions * SMALL.turns
    tree = engine.cache.tree
    never, once, _ = (d.observed_tokens for d in tree.densities)
    # Returning sessions found their documents (hits of never-reused KV), the pool, too small
    # for every session, evicted some, and KV found once was found again on later turns.
    assert sum(tree.densities[0].hits) > 0 and never > sum(tree.densities[0].hits)
    assert once > 0 and max(tree.reuses.values()) >= 2
    assert tree.density_victims > 0


@pytest.mark.parametrize("cache", ["lru", "asymcache"])
def test_lpm_admits_the_request_with_the_longer_cached_prefix_first(step, cache):
    """SGLang's own SchedulePolicy orders the queue: under lpm a later request whose prompt is
    cached goes before an earlier one that is not; under FCFS the earlier one goes first."""
    cached = list(range(1000, 4000))
    scripts = [
        Script(0, 0.0, cached, [Call(1, [], None)]),
        # Both wait behind session 0's step; each alone fills the 3,000-token chunk or nearly.
        Script(1, 0.001, list(range(5000, 8000)), [Call(1, [], None)]),
        Script(2, 0.002, [*cached, *range(9000, 9100)], [Call(1, [], None)]),
    ]
    first_token = {}
    for policy in ("fcfs", "lpm"):
        config = EngineConfig(
            pool_tokens=20_000, cache=cache, chunk_tokens=3000, schedule_policy=policy
        )
        records = simulate(scripts, config, step).records
        first_token[policy] = [r.first_token_s for r in records]
        assert [r.computed_prompt_tokens for r in records] == [3000, 3000, 100]
    assert first_token["fcfs"][1] < first_token["fcfs"][2]
    assert first_token["lpm"][2] < first_token["lpm"][1]
    with pytest.raises(ValueError, match="schedule_policy"):
        EngineConfig(pool_tokens=1000, schedule_policy="dfs-weight")
