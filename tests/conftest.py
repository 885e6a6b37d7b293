"""Shared fixtures: a tiny random-weight Llama and real SGLang 0.5.16 CPU servers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Kernel tests run in Triton's interpreter; @triton.jit picks it when it decorates, so this
    # precedes every import of the kernels (test modules and plugin alike).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from eval.server import (
    REPO_ROOT,
    SGLangRouter,
    SGLangServer,
    cpu_env,
    cpu_server_args,
    stock_cpu_env,
)
from eval.tiny_model import make_tiny_llama
from eval.workloads import MultiTurnWorkload

# Small enough that 8 sessions of 120-420 tokens evict interior nodes between their turns.
E2E_POOL_TOKENS = 1200
ASYMCACHE_ARGS = [
    "--enable-asymcache",
    "--asymcache-min-retained-tokens", "8",
    "--max-total-tokens", str(E2E_POOL_TOKENS),
]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("ASYMCACHE_TEST_ARTIFACTS", "/tmp/asymcache-test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_model(artifacts_dir: Path) -> Path:
    return make_tiny_llama(artifacts_dir / "tiny-llama", seed=0)


def cpu_asymcache_server(
    model: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None
) -> SGLangServer:
    """A CPU server with AsymCache under the e2e pool, plus ``extra`` flags (and ``env``, by
    default ``cpu_env()``)."""
    args = cpu_server_args() + ASYMCACHE_ARGS + list(extra)
    env = cpu_env() if env is None else env
    return SGLangServer(model, extra_args=args, env=env, log_path=log_path, timeout_s=420)


# eval.bench's generated-shared-prefix on the tiny model: two groups of three prompts under a
# 200-token system prompt, in its vocabulary.
SHARED_PREFIX_SETTINGS = [
    "groups=2", "prompts_per_group=3", "system_prompt_tokens=200", "question_tokens=20",
    "output_tokens=4", "max_in_flight=2", "vocab=10,500",
]  # fmt: skip


def mixed_chunk_workload(seed: int) -> MultiTurnWorkload:
    """Concurrent sessions whose answers are long enough that their decodes run beside the
    next sessions' prefills (``--enable-mixed-chunk``)."""
    return MultiTurnWorkload(
        num_sessions=8, turns=5, first_prompt_tokens=120, max_new_tokens=24, seed=seed
    )


def paged_cpu_env(page_size: int) -> dict[str, str]:
    """``cpu_env()`` for a server with pages of ``page_size`` tokens: SGLang 0.5.16's paged
    allocator runs Triton kernels, which have no CPU driver, so they run in Triton's interpreter."""
    env = cpu_env()
    if page_size > 1:
        env["TRITON_INTERPRET"] = "1"
    return env


@pytest.fixture(scope="session")
def asymcache_server(tiny_model: Path, artifacts_dir: Path) -> Iterator[SGLangServer]:
    with cpu_asymcache_server(tiny_model, artifacts_dir / "asymcache-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def mixed_chunk_server(tiny_model: Path, artifacts_dir: Path) -> Iterator[SGLangServer]:
    log_path = artifacts_dir / "asymcache-mixed-chunk-server.log"
    with cpu_asymcache_server(tiny_model, log_path, "--enable-mixed-chunk") as server:
        yield server


@pytest.fixture(scope="module")
def lpm_server(tiny_model: Path, artifacts_dir: Path) -> Iterator[SGLangServer]:
    log_path = artifacts_dir / "asymcache-lpm-server.log"
    with cpu_asymcache_server(tiny_model, log_path, "--schedule-policy", "lpm") as server:
        yield server


# Smaller than most hole plans of the e2e workload, so plans are carried over several chunks.
SMALL_CHUNK_TOKENS = 64
# Holds about four of the longer sessions of that test: a returning session finds its path
# partly evicted (a plan) more often than wholly (no match).
SMALL_CHUNK_POOL_TOKENS = 2400


@pytest.fixture(scope="module", params=["chunked", "chunked-mixed"])
def small_chunk_server(
    request: pytest.FixtureRequest, tiny_model: Path, artifacts_dir: Path
) -> Iterator[tuple[SGLangServer, bool]]:
    """A server with a small chunk, and whether it mixes decodes into prefill chunks."""
    mixed = request.param == "chunked-mixed"
    flags = [
        "--chunked-prefill-size", str(SMALL_CHUNK_TOKENS),
        "--max-total-tokens", str(SMALL_CHUNK_POOL_TOKENS),  # the later flag wins
    ]  # fmt: skip
    if mixed:
        flags.append("--enable-mixed-chunk")
    else:
        # Holds trim a waiting program head first, which makes one leading hole larger than the
        # chunk (first_hole_chunks); the cost key alone punches the interior holes that SegmentPlan
        # cuts to the chunk (chunked_plans). The mixed server runs the holds.
        flags += ["--asymcache-holds", "off"]
    log_path = artifacts_dir / f"asymcache-{request.param}-server.log"
    with cpu_asymcache_server(tiny_model, log_path, *flags) as server:
        yield server, mixed


@pytest.fixture(scope="session")
def no_cache_server(tiny_model: Path, artifacts_dir: Path) -> Iterator[SGLangServer]:
    server = SGLangServer(
        tiny_model,
        extra_args=cpu_server_args()
        + ["--disable-radix-cache", "--max-total-tokens", str(E2E_POOL_TOKENS)],
        env=stock_cpu_env(),
        log_path=artifacts_dir / "no-cache-server.log",
        timeout_s=420,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def llama3_8b_geometry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A config-only Llama-3-8B folder for ``--load-format dummy`` (GPU host: ``.gpu/``)."""
    dest = tmp_path_factory.mktemp("llama3-8b")
    make_model = REPO_ROOT / ".gpu" / "make_model.py"
    subprocess.run(
        [sys.executable, str(make_model), str(dest), "--preset", "llama3-8b"], check=True
    )
    return str(dest)


@pytest.fixture(scope="module")
def routed_replicas(tiny_model: Path, artifacts_dir: Path) -> Iterator[SGLangRouter]:
    """Two AsymCache CPU replicas behind sglang-router's cache-aware policy."""
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                cpu_asymcache_server(
                    tiny_model, artifacts_dir / f"replica-{i}.log", "--enable-metrics"
                )
            )
            for i in range(2)
        ]
        router = SGLangRouter([w.url for w in workers], log_path=artifacts_dir / "router.log")
        yield stack.enter_context(router)
