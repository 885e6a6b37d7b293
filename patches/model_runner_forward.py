"""AROUND ``sglang.srt.model_executor.model_runner.ModelRunner.forward`` (SGLang 0.5.16).

Times every forward (CUDA events on the GPU, polled; wall clock on the CPU) and feeds AsymCache's
online latency model with the batch's features. A multi-segment extend counts every segment; the
running requests of a mixed batch (``--enable-mixed-chunk``) count as decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.core.latency_fit import BatchFeatures

TARGET = "sglang.srt.model_executor.model_runner.ModelRunner.forward"
HOOK_TYPE = HookType.AROUND


def forward_features(plan: handoff.ForwardPlan, forward_batch: Any) -> BatchFeatures | None:
    """The regressors of one forward, or None for modes the model does not cover."""
    mode = forward_batch.forward_mode
    if mode.is_decode():
        return BatchFeatures(0, 0.0, forward_batch.batch_size, int(forward_batch.seq_lens_sum))
    if not mode.is_extend() or forward_batch.extend_seq_lens_cpu is None:
        return None
    lens = list(zip(forward_batch.extend_prefix_lens_cpu, forward_batch.extend_seq_lens_cpu))
    # Read, not taken: init_forward_metadata consumes them later in this forward.
    segments = plan.segments
    if segments is None:
        segments = [[(prefix, prefix + new)] for prefix, new in lens]
    # A mixed batch's trailing requests are running decodes (1-token extends): decode features.
    prefills = len(segments) - plan.mixed_decodes
    decode_seq_lens = [prefix + new for prefix, new in lens[prefills:]]
    return BatchFeatures.from_segments(
        [seg for segs in segments[:prefills] for seg in segs], decode_seq_lens
    )


def hook(original: Callable[..., Any], model_runner: Any, forward_batch: Any, *a: Any, **kw: Any):
    timer = handoff.forward_timer(model_runner)
    plan = handoff.forward_plan(model_runner.attn_backend)
    if timer is None or plan is None:
        return original(model_runner, forward_batch, *a, **kw)
    features = forward_features(plan, forward_batch)
    if features is None:
        return original(model_runner, forward_batch, *a, **kw)
    return timer.time(features, lambda: original(model_runner, forward_batch, *a, **kw))
