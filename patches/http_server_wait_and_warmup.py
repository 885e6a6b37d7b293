"""AROUND ``sglang.srt.entrypoints.http_server._wait_and_warmup`` (SGLang 0.5.16).

After SGLang's own warmup request, and before the server reports ready, a server with adaptive
chunking runs a short profile: prefills of a few lengths, then a few concurrent decodes. The
scheduler times these forwards like any other, so the latency model starts fitted, not blind.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.server_args import profiles_latency

TARGET = "sglang.srt.entrypoints.http_server._wait_and_warmup"
HOOK_TYPE = HookType.AROUND

logger = logging.getLogger(__name__)

PROFILE_PREFILL_TOKENS = (32, 128, 512, 1024, 2048)
PROFILE_CONCURRENT_DECODES = 4
PROFILE_DECODE_TOKENS = 16
# Token ids every vocabulary has.
PROFILE_TOKEN_RANGE = (10, 500)


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


def run_profile(server_args: Any) -> None:
    """Synthetic requests through the real server; the scheduler fits on their forwards."""
    url = f"{server_args.url()}/generate"
    headers = {"Authorization": f"Bearer {server_args.api_key}"} if server_args.api_key else {}
    rng = random.Random(0)

    def generate(num_tokens: int, max_new_tokens: int) -> None:
        payload = {
            "input_ids": [rng.randrange(*PROFILE_TOKEN_RANGE) for _ in range(num_tokens)],
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
        }
        requests.post(url, json=payload, headers=headers, timeout=600).raise_for_status()

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
    logger.info(
        "AsymCache latency profile: prefills of %s tokens, %d decodes",
        lengths,
        PROFILE_CONCURRENT_DECODES,
    )


def hook(original: Callable[..., Any], server_args: Any, *args: Any, **kwargs: Any) -> Any:
    if not profiles_latency(server_args):
        return original(server_args, *args, **kwargs)
    bound = inspect.signature(original).bind(server_args, *args, **kwargs)
    bound.apply_defaults()
    stock_warmup = bound.arguments["execute_warmup_func"]

    def warmup_then_profile(args: Any) -> bool:
        if not stock_warmup(args):
            return False
        try:
            run_profile(args)
        except requests.RequestException as exc:
            # The profile only speeds up the fit; serving does not depend on it.
            logger.warning("AsymCache latency profile failed: %s", exc)
        return True

    bound.arguments["execute_warmup_func"] = warmup_then_profile
    return original(*bound.args, **bound.kwargs)
