"""AROUND ``sglang.srt.entrypoints.http_server._wait_and_warmup`` (SGLang 0.5.16).

After SGLang's own warmup request, and before the server reports ready, an AsymCache server runs
a short latency profile through its own HTTP API: prefills of a few lengths, a few concurrent
decodes, then the position calibration: one long prompt (chunked like any other), and extends of
two sizes behind cached prefixes of it, from 0 to what the pool allows. The scheduler times these
forwards like any other, so both latency fits start fitted, and the extend cost model has seen
the position term, which later traffic at one context length cannot identify. The cache is
flushed afterwards: the server starts serving with an empty tree.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.server_args import asymcache_enabled

TARGET = "sglang.srt.entrypoints.http_server._wait_and_warmup"
HOOK_TYPE = HookType.AROUND

logger = logging.getLogger(__name__)

PROFILE_PREFILL_TOKENS = (32, 128, 512, 1024, 2048)
PROFILE_CONCURRENT_DECODES = 4
PROFILE_DECODE_TOKENS = 16
# Token ids every vocabulary has.
PROFILE_TOKEN_RANGE = (10, 500)
# The calibration's extends: these many new tokens behind prefixes up to this long.
CALIBRATION_NEW_TOKENS = (2048, 1024)
CALIBRATION_MAX_PREFIX = 48 * 1024
CALIBRATION_PREFIXES = 5
# Each profile request is a program of its own, closed after the profile: the tracker of
# programs (--asymcache-holds) then starts with no waiting program that no client will continue.
PROFILE_SESSION_PREFIX = "asymcache-latency-profile-"


def profile_lengths(server_args: Any) -> list[int]:
    """Prefill lengths up to the launch-time chunk, capped at a quarter of the KV pool.

    The last is that limit itself: the latency model's throughput ceiling is then measured at the
    largest chunk the policy may choose, where compute, not launch, sets the step time.
    """
    limit = server_args.chunked_prefill_size
    if limit is None or limit <= 0:  # chunking disabled
        limit = max(PROFILE_PREFILL_TOKENS)
    if server_args.max_total_tokens:
        limit = max(1, min(limit, server_args.max_total_tokens // 4))
    return [n for n in PROFILE_PREFILL_TOKENS if n < limit] + [limit]


def calibration_extends(
    pool_tokens: int, max_input_tokens: int
) -> tuple[int, list[tuple[int, int]]]:
    """The calibration prompt's length, and the (cached prefix, new tokens) extends behind it.

    The prompt takes at most half the pool, so it stays cached while the extends add theirs.
    """
    base = min(
        CALIBRATION_MAX_PREFIX + max(CALIBRATION_NEW_TOKENS), pool_tokens // 2, max_input_tokens - 1
    )
    extends = []
    for new in CALIBRATION_NEW_TOKENS:
        new = max(1, min(new, base // 4))
        top = base - new
        steps = CALIBRATION_PREFIXES - 1
        extends += [(top * k // steps, new) for k in range(CALIBRATION_PREFIXES)]
    return base, extends


def run_profile(server_args: Any) -> None:
    """Synthetic requests through the real server; the scheduler fits on their forwards."""
    base_url = server_args.url()
    headers = {"Authorization": f"Bearer {server_args.api_key}"} if server_args.api_key else {}
    rng = random.Random(0)
    sessions: list[str] = []

    def random_ids(num_tokens: int) -> list[int]:
        return [rng.randrange(*PROFILE_TOKEN_RANGE) for _ in range(num_tokens)]

    def generate(num_tokens: int, max_new_tokens: int, prefix: Sequence[int] = ()) -> None:
        sessions.append(f"{PROFILE_SESSION_PREFIX}{len(sessions)}")
        payload = {
            "input_ids": [*prefix, *random_ids(num_tokens)],
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
            "session_id": sessions[-1],
        }
        post = requests.post(f"{base_url}/generate", json=payload, headers=headers, timeout=600)
        post.raise_for_status()

    lengths = profile_lengths(server_args)
    for num_tokens in lengths:
        generate(num_tokens, 2)
    with ThreadPoolExecutor(PROFILE_CONCURRENT_DECODES) as pool:
        # list(): a failed request raises here, as the sequential ones do.
        list(
            pool.map(
                lambda _: generate(min(lengths), PROFILE_DECODE_TOKENS),
                range(PROFILE_CONCURRENT_DECODES),
            )
        )
    info = requests.get(f"{base_url}/get_server_info", headers=headers, timeout=60)
    info.raise_for_status()
    base, extends = calibration_extends(
        info.json()["max_total_num_tokens"], info.json()["max_req_input_len"]
    )
    prompt = random_ids(base)
    generate(0, 1, prompt)
    for prefix, new in extends:
        generate(new, 1, prompt[:prefix])
    # The last response can reach us a moment before the scheduler is idle; SGLang waits for it.
    flushed = requests.post(f"{base_url}/flush_cache?timeout=30", headers=headers, timeout=60)
    flushed.raise_for_status()
    for session in sessions:
        closed = requests.post(
            f"{base_url}/close_session", json={"session_id": session}, headers=headers, timeout=60
        )
        closed.raise_for_status()
    logger.info(
        "AsymCache latency profile: prefills of %s tokens, %d decodes, extends (prefix, new) %s "
        "behind a %d-token prompt",
        lengths,
        PROFILE_CONCURRENT_DECODES,
        extends,
        base,
    )


def hook(original: Callable[..., Any], server_args: Any, *args: Any, **kwargs: Any) -> Any:
    if not asymcache_enabled(server_args):
        return original(server_args, *args, **kwargs)
    bound = inspect.signature(original).bind(server_args, *args, **kwargs)
    bound.apply_defaults()
    stock_warmup = bound.arguments["execute_warmup_func"]

    def warmup_then_profile(args: Any) -> bool:
        if not stock_warmup(args):
            return False
        from sglang.srt.entrypoints.http_server import _global_state
        from sglang.srt.managers.tokenizer_manager import ServerStatus

        # Stock warmup marked the server Up; health checks answer 503 until the profile is done,
        # so no client request races it (or finds its prompts in the cache).
        manager = _global_state.tokenizer_manager
        manager.server_status = ServerStatus.Starting
        try:
            run_profile(args)
        except requests.RequestException as exc:
            # The profile only speeds up the fit; serving does not depend on it.
            logger.warning("AsymCache latency profile failed: %s", exc)
        finally:
            manager.server_status = ServerStatus.Up
        return True

    bound.arguments["execute_warmup_func"] = warmup_then_profile
    return original(*bound.args, **bound.kwargs)
