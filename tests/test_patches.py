"""Pure decisions inside the SGLang seams, checked without a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from asymcache_sglang.core.latency_fit import BatchFeatures
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
from asymcache_sglang.plugin import msa_impl_for


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
