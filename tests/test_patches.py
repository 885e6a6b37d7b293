"""Pure decisions inside the SGLang seams, checked without a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from asymcache_sglang.patches.forward_batch_init_new import msa_impl_for
from asymcache_sglang.patches.http_server_wait_and_warmup import profile_lengths


def runner(**hf_config: object) -> SimpleNamespace:
    return SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(**hf_config)))


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
    assert msa_impl_for(configured, runner(**hf_config)) == expected


@pytest.mark.parametrize(
    ("chunk", "pool", "expected"),
    [
        (None, None, [32, 128, 512, 1024, 2048]),
        (512, 8000, [32, 128, 512]),
        (8192, 1200, [32, 128]),
        (16, None, [32]),
    ],
)
def test_profile_fits_the_chunk_and_the_pool(chunk, pool, expected):
    args = SimpleNamespace(chunked_prefill_size=chunk, max_total_tokens=pool)
    assert profile_lengths(args) == expected
