"""Pure decisions inside the SGLang seams, checked without a server."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import torch

from asymcache_sglang import handoff
from asymcache_sglang.core.cost import StaticCostModel
from asymcache_sglang.core.latency_fit import BatchFeatures
from asymcache_sglang.core.reuse import ReuseEstimator
from asymcache_sglang.core.tree import HoleAwareTree
from asymcache_sglang.handoff import ForwardPlan, attach_forward_plan, forward_plan
from asymcache_sglang.patches.http_server_wait_and_warmup import (
    calibration_extends,
    profile_lengths,
)
from asymcache_sglang.patches.model_runner_forward import forward_features
from asymcache_sglang.patches.prefill_cuda_graph_runner_can_run_graph import (
    hook as can_run_prefill_graph,
)
from asymcache_sglang.patches.scheduler_get_new_batch_prefill_raw import decodes_beside_prefill
from asymcache_sglang.plan_admission import admit
from asymcache_sglang.plugin import msa_impl_for
from asymcache_sglang.radix_cache import PlanCounters


@pytest.mark.parametrize(
    ("configured", "hf_config", "expected"),
    [
        ("triton", {}, "triton"),
        ("triton", {"sliding_window": None}, "triton"),
        ("triton", {"sliding_window": 4096}, "flashinfer"),
        ("triton", {"attn_logit_softcapping": 50.0}, "flashinfer"),
        ("flashinfer", {"attn_logit_softcapping": 50.0}, "flashinfer"),
        (None, {"sliding_window": 4096}, None),
    ],
)
def test_triton_kernel_only_for_plain_causal_models(configured, hf_config, expected):
    assert msa_impl_for(configured, SimpleNamespace(**hf_config)) == expected


@pytest.mark.parametrize(
    ("chunk", "pool", "expected"),
    [
        (None, None, [32, 128, 512, 1024, 2048]),
        (-1, None, [32, 128, 512, 1024, 2048]),
        (512, 8000, [32, 128, 512]),
        (8192, 1200, [32, 128, 300]),
        (8192, 120000, [32, 128, 512, 1024, 2048, 8192]),
        (16, None, [16]),
    ],
)
def test_profile_fits_the_chunk_and_the_pool(chunk, pool, expected):
    args = SimpleNamespace(chunked_prefill_size=chunk, max_total_tokens=pool)
    assert profile_lengths(args) == expected


def test_calibration_spans_the_positions_the_pool_allows():
    base, extends = calibration_extends(pool_tokens=400_000, max_input_tokens=131_000)
    assert base == 48 * 1024 + 2048
    assert extends[:5] == [(0, 2048), (12288, 2048), (24576, 2048), (36864, 2048), (49152, 2048)]
    assert [new for _, new in extends[5:]] == [1024] * 5 and extends[-1] == (base - 1024, 1024)
    # A small pool: the prompt is half of it, the extends a quarter of the prompt at most.
    base, extends = calibration_extends(pool_tokens=2400, max_input_tokens=131_000)
    assert base == 1200 and extends[0] == (0, 300) and extends[4] == (900, 300)
    assert all(prefix + new <= base for prefix, new in extends)
    base, _ = calibration_extends(pool_tokens=400_000, max_input_tokens=4096)
    assert base == 4095


def scheduler(*, mixed: bool, head_logprob: bool = False, chunked: bool = False) -> SimpleNamespace:
    head = SimpleNamespace(return_logprob=head_logprob)
    return SimpleNamespace(
        is_mixed_chunk=mixed,
        chunked_req=head if chunked else None,
        waiting_queue=[] if chunked else [head],
    )


@pytest.mark.parametrize(
    ("mixed", "head_logprob", "running_logprob", "chunked", "beside"),
    [
        (True, False, False, False, True),
        (True, False, False, True, True),
        (False, False, False, False, False),  # decodes wait for the whole prefill
        (True, True, False, False, False),  # SGLang does not mix logprob batches
        (True, False, True, True, False),
    ],
)
def test_decodes_count_beside_a_chunk_only_when_sglang_mixes_them(
    mixed, head_logprob, running_logprob, chunked, beside
):
    running = SimpleNamespace(reqs=["a", "b"], return_logprob=running_logprob)
    sched = scheduler(mixed=mixed, head_logprob=head_logprob, chunked=chunked)
    assert decodes_beside_prefill(sched, running) == (["a", "b"] if beside else [])


def forward_batch(mode: str, prefix: list[int], new: list[int]) -> SimpleNamespace:
    forward_mode = SimpleNamespace(
        is_decode=lambda: mode == "decode", is_extend=lambda: mode in ("extend", "mixed")
    )
    return SimpleNamespace(
        forward_mode=forward_mode, extend_prefix_lens_cpu=prefix, extend_seq_lens_cpu=new
    )


def test_mixed_forward_counts_running_requests_as_decodes():
    # A 100-token chunk after 50 cached tokens, then two running requests at lengths 300 and 40.
    batch = forward_batch("mixed", [50, 299, 39], [100, 1, 1])
    plan = ForwardPlan(msa_impl=None, segments=None, mixed_decodes=2)
    features = forward_features(plan, batch)
    assert features == BatchFeatures.from_segments([(50, 150)], [300, 40])
    # With a hole plan the prefill request has two segments; the decodes still one each.
    plan.segments = [[(0, 10), (50, 150)], [(299, 300)], [(39, 40)]]
    features = forward_features(plan, batch)
    assert features == BatchFeatures.from_segments([(0, 10), (50, 150)], [300, 40])
    assert plan.segments is not None  # read for the timing, left for init_forward_metadata
    plan.mixed_decodes = 0
    features = forward_features(plan, batch)
    assert features.decode_reqs == 0 and features.new_tokens == 112


def test_only_forwards_with_hole_segments_skip_the_prefill_graph():
    backend = SimpleNamespace()
    runner = SimpleNamespace(model_runner=SimpleNamespace(attn_backend=backend))

    def stock(_runner, _batch):
        return True

    assert can_run_prefill_graph(stock, runner, "batch")  # AsymCache off: SGLang decides
    attach_forward_plan(backend, ForwardPlan(msa_impl=None))
    assert can_run_prefill_graph(stock, runner, "batch")  # a contiguous extend
    forward_plan(backend).segments = [[(0, 10), (50, 150)]]
    assert not can_run_prefill_graph(stock, runner, "batch")


def holed_plan():
    """A 60-token path with holes at [0, 5), [15, 20) and [32, 40) (as ``test_tree`` builds it)."""
    tree = HoleAwareTree(StaticCostModel(), ReuseEstimator(60.0), min_retained_tokens=1)
    seq = array("l", range(200, 260))
    tree.insert(seq, list(range(60)), [])
    for cut in (5, 15, 20, 32, 40):
        tree.match(seq[:cut])
    path = tree.match(seq + array("l", [1, 2]))
    for node in path[0::2]:
        node.value = None
    return tree.plan(path), path


@pytest.mark.parametrize(
    ("chunk", "admitted", "first_hole_chunks"),
    [(None, True, 0), (15, True, 0), (4, True, 1), (15, False, 0), (4, False, 1)],
)
def test_admission_locks_the_whole_plans_last_node(chunk, admitted, first_hole_chunks):
    """Whether the plan fits the chunk, is cut to it, or the chunk lies inside its first hole,
    SGLang locks the node the request names, and that is the whole plan's last: the retained
    ranges a later chunk reaches stay resident, and the request remembers where they end.
    While SGLang checks the budget, the holes are charged and the retained tokens locked past
    the prefix it is shown are not counted twice. A request SGLang turns away is left as it
    was."""
    plan, path = holed_plan()
    cache = SimpleNamespace(
        counters=PlanCounters(),
        composite_prefix=lambda p: torch.zeros(p.prefix_len),
        page_size=1,
    )
    adder = SimpleNamespace(
        can_run_list=[], rem_total_token_offset=0, cur_rem_token_offset=0, rem_input_tokens=100,
        rem_chunk_tokens=chunk, log_hit_tokens=0, log_input_tokens=0,
    )  # fmt: skip
    contiguous = torch.zeros(plan.contiguous_len)
    req = SimpleNamespace(
        full_untruncated_fill_ids=list(range(62)),
        prefix_indices=contiguous,
        last_node=plan.contiguous_node,
        extend_range=SimpleNamespace(end=62),
    )
    locked, budget_seen = [], []

    def add() -> str:
        budget_seen.append(adder.rem_total_token_offset)
        if admitted:
            locked.append(req.last_node)  # what PrefillAdder._req_inc_lock_ref locks
            adder.can_run_list.append(req)
        return "result"

    result = admit(
        cache, adder, req, plan, add, chunk_tokens=chunk, logs_prefix_as_hits=True,
        budgets_whole_request=True,
    )  # fmt: skip
    assert result == "result" and cache.counters.first_hole_chunks == first_hole_chunks
    # Holes charged, less the retained tokens past the prefix shown: 42 retained in all, 22
    # before the cut at 32, none before the first hole.
    assert budget_seen == [{None: 18 - 0, 15: 10 - 20, 4: 0 - 42}[chunk]]
    if admitted:
        assert adder.rem_total_token_offset == {None: 18, 15: 10, 4: 0}[chunk]
        assert locked == [path[5]] and req.last_node is path[5]
        assert handoff.request_plan(req).plan_end == plan.prefix_len
        holes = {None: plan.recompute, 15: [(0, 5), (15, 20)], 4: None}[chunk]
        admitted_plan = handoff.request_plan(req).admitted
        assert (admitted_plan.recompute if admitted_plan else None) == holes
    else:
        assert req.last_node is plan.contiguous_node and req.prefix_indices is contiguous
        assert adder.rem_total_token_offset == 0 and adder.rem_input_tokens == 100
