"""``--enable-asymcache`` through SGLang's own argument parsing, with the plugin loaded."""

from __future__ import annotations

import argparse

import pytest
from sglang.srt.plugins import load_plugins

from asymcache_sglang.core.config import AsymCacheArgsError, AsymCacheConfig
from asymcache_sglang.server_args import AsymCacheServerArgs

KNOBS = (
    "--enable-asymcache",
    "--asymcache-max-holes",
    "--asymcache-min-retained-tokens",
    "--asymcache-cost-a",
    "--asymcache-cost-b",
    "--asymcache-reuse-horizon-s",
    "--asymcache-share-boost",
    "--asymcache-msa-impl",
    "--asymcache-chunking",
    "--asymcache-tpot-budget-ms",
    "--asymcache-latency-min-r2",
)


@pytest.fixture(scope="module")
def sglang_args():
    load_plugins()
    from sglang.srt import server_args

    return server_args


@pytest.fixture(scope="module")
def prepare(sglang_args, tiny_model):
    def _prepare(*argv: str):
        base = ["--model-path", str(tiny_model), "--device", "cpu"]
        return sglang_args.prepare_server_args([*base, *argv])

    return _prepare


def test_help_lists_every_flag(sglang_args):
    parser = argparse.ArgumentParser()
    sglang_args.ServerArgs.add_cli_args(parser)
    text = parser.format_help()
    for flag in KNOBS:
        assert flag in text


def test_enable_sets_the_backend_and_defaults(prepare):
    args = prepare("--enable-asymcache", "--asymcache-max-holes", "3")
    assert isinstance(args, AsymCacheServerArgs)
    assert args.enable_asymcache and args.asymcache_max_holes == 3
    assert args.radix_cache_backend == "asymcache"
    assert args.attention_backend == "torch_native" and args.page_size == 1
    # Prefill CUDA graphs stay at SGLang's default; only batches with holes run eagerly.
    assert not args.disable_prefill_cuda_graph


def test_a_page_size_is_kept(prepare):
    args = prepare("--enable-asymcache", "--page-size", "16")
    assert args.page_size == 16 and args.radix_cache_backend == "asymcache"


@pytest.mark.parametrize(
    ("argv", "max_holes", "msa_impl"),
    [
        (["--attention-backend", "flashinfer"], 8, "flashinfer"),
        (["--attention-backend", "flashinfer", "--asymcache-msa-impl", "triton"], 8, "triton"),
        (["--attention-backend", "triton"], 8, None),
        (["--asymcache-max-holes", "0"], 0, None),
    ],
)
def test_msa_kernel_follows_the_backend(prepare, argv, max_holes, msa_impl):
    config = AsymCacheConfig.from_server_args(prepare("--enable-asymcache", *argv))
    assert (config.max_holes, config.msa_impl) == (max_holes, msa_impl)


@pytest.mark.parametrize(
    ("argv", "chunking"),
    [([], "static"), (["--asymcache-chunking", "adaptive"], "adaptive")],
)
def test_chunking_mode(prepare, argv, chunking):
    config = AsymCacheConfig.from_server_args(prepare("--enable-asymcache", *argv))
    assert config.chunking == chunking and config.tp_size == 1


@pytest.mark.parametrize(
    ("argv", "tokens"),
    [
        (["--chunked-prefill-size", "2048"], 2048),
        (["--chunked-prefill-size", "-1", "--max-prefill-tokens", "20000"], 20000),
    ],
)
def test_evicted_kv_is_priced_at_the_chunk_it_is_recomputed_in(prepare, argv, tokens):
    config = AsymCacheConfig.from_server_args(prepare("--enable-asymcache", *argv))
    assert config.recompute_chunk_tokens == tokens


def test_off_leaves_sglang_defaults(prepare):
    args = prepare()
    assert not args.enable_asymcache and args.radix_cache_backend is None


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--disable-radix-cache"], "--disable-radix-cache"),
        (["--enable-hierarchical-cache"], "--enable-hierarchical-cache"),
        (["--speculative-algorithm", "EAGLE"], "--speculative-algorithm"),
        (["--enable-dp-attention"], "--enable-dp-attention"),
        (["--pp-size", "2"], "--pp-size"),
        (["--radix-cache-backend", "other"], "--radix-cache-backend"),
        (["--attention-backend", "fa3"], "--attention-backend"),
        (["--asymcache-max-holes", "-1"], "--asymcache-max-holes"),
        (["--asymcache-cost-a", "0"], "--asymcache-cost-a"),
        (["--asymcache-msa-impl", "triton"], "--asymcache-msa-impl"),
        (
            [
                "--attention-backend",
                "flashinfer",
                "--asymcache-msa-impl",
                "triton",
                "--kv-cache-dtype",
                "fp8_e4m3",
            ],
            "--kv-cache-dtype",
        ),
        (
            ["--attention-backend", "triton", "--enable-deterministic-inference"],
            "--enable-deterministic-inference",
        ),
        (
            ["--attention-backend", "torch_native", "--decode-attention-backend", "triton"],
            "--decode-attention-backend",
        ),
        (
            ["--attention-backend", "triton", "--prefill-attention-backend", "torch_native"],
            "--prefill-attention-backend",
        ),
        (["--asymcache-tpot-budget-ms", "0"], "--asymcache-tpot-budget-ms"),
        (["--asymcache-latency-min-r2", "1.5"], "--asymcache-latency-min-r2"),
    ],
)
def test_refused_combinations_name_the_flag(prepare, argv, flag):
    with pytest.raises(AsymCacheArgsError) as err:
        prepare("--enable-asymcache", *argv)
    message = str(err.value)
    assert flag in message and "\n" not in message
