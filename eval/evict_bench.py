"""Host time of one eviction call on a large cache: AsymCache's tree against SGLang's own.

    python -m eval.evict_bench --sessions 2000 --turns 50 --out eval/results/<host>_evict.json

Builds each cache with ``sessions`` multi-turn sessions under one shared system prompt, each turn
a new node below the last (``sessions * turns`` nodes), then times ``evict`` calls of a decode
step's, an extend's and a chunk's worth of tokens through the cache's SGLang interface
(``evict(EvictParams)``, which frees the slots too), each size until a tenth of what is left is
gone. ``asymcache`` holds every session as a waiting program (``--asymcache-holds on``): each
released a millisecond after the one before, their return gaps spread over the whole build, and
the clock moving a millisecond per call, so programs fall due, are re-estimated and re-keyed as
calls go on (those due during the build first, untimed). ``asymcache-no-holds`` is the cost key
alone. Issue 12's bound is 1 ms per call at 100K nodes. Times are host times: quote them from a
quiet host.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from array import array
from pathlib import Path
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache, EvictParams, InsertParams
from sglang.srt.mem_cache.radix_cache import RadixKey

from asymcache_sglang.radix_cache import HoleAwareRadixCache
from eval.common import STOCK_POLICIES, result_header, summary_stats
from eval.sim.engine import Engine, EngineConfig
from eval.sim.step_model import StepModel

CALL_TOKENS = (16, 1024, 8192)
CACHES = (*STOCK_POLICIES, "asymcache", "asymcache-no-holds")
# Simulated seconds between two sessions' releases, and between two timed calls.
TICK_S = 1e-3


def build(cache_name: str, sessions: int, turns: int, turn_tokens: int, seed: int) -> Engine:
    """An engine whose cache holds every session's turns (the simulator's caches, built as a
    server builds them); every node idle and unlocked."""
    system = 256
    pool = system + sessions * turns * turn_tokens
    engine = Engine(EngineConfig(pool_tokens=pool, cache=cache_name), StepModel((0.0,) * 6))
    rng = random.Random(seed)
    shared = [rng.randrange(10, 120000) for _ in range(system)]
    shared_slots = engine.allocator.alloc(system)
    insert(engine.cache, shared, shared_slots, 0)
    programs = getattr(engine.cache, "programs", None)
    if programs is not None:
        for _ in range(1024):
            programs.returns.observe(rng.uniform(0.0, sessions * TICK_S))
    for session in range(sessions):
        tokens, slots = list(shared), shared_slots
        for _ in range(turns):
            prev = len(tokens)
            tokens += [rng.randrange(10, 120000) for _ in range(turn_tokens)]
            slots = torch.cat([slots, engine.allocator.alloc(turn_tokens)])
            last = insert(engine.cache, tokens, slots, prev)
        if programs is not None:
            engine.now += TICK_S
            program = programs.admit(f"session-{session}", tokens)
            engine.cache.tree.tag(last, program)
            programs.release(program, tokens)
    if programs is not None:
        engine.cache.tree.evict(0)  # what fell due during the build
    return engine


def insert(cache: BasePrefixCache, tokens: list[int], slots: torch.Tensor, cached: int) -> Any:
    """``tokens`` into the cache, its first ``cached`` already there with the same slots;
    returns AsymCache's last node (None for SGLang's caches)."""
    if isinstance(cache, HoleAwareRadixCache):
        # Its inserts come from requests; the tree takes the slots it does not hold yet.
        retained = [(0, cached)]
        return cache.tree.insert(array("q", tokens), slots, retained).last_node
    cache.insert(InsertParams(key=RadixKey(tokens), value=slots))
    return None


def count_nodes(cache: BasePrefixCache) -> int:
    if isinstance(cache, HoleAwareRadixCache):
        return cache.tree.num_nodes - 1
    count, stack = 0, list(cache.root_node.children.values())
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.children.values())
    return count


def time_evictions(engine: Engine, call_tokens: int, max_calls: int) -> dict[str, Any]:
    """Seconds per ``evict`` call of ``call_tokens``, until a tenth of the cache is gone (one
    call at least), the simulated clock a tick further at each."""
    cache = engine.cache
    budget = cache.evictable_size() // 10
    times, freed = [], 0
    while (freed < budget or not times) and len(times) < max_calls:
        engine.now += TICK_S
        before = cache.evictable_size()
        start = time.perf_counter()
        cache.evict(EvictParams(num_tokens=call_tokens))
        times.append(time.perf_counter() - start)
        freed += before - cache.evictable_size()
        if before == cache.evictable_size():
            raise RuntimeError(f"evict({call_tokens}) freed nothing with {before} evictable")
    return {"calls": len(times), "freed_tokens": freed, "seconds": summary_stats(times)}


def run(
    sessions: int, turns: int, turn_tokens: int, caches: list[str], max_calls: int, seed: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in caches:
        start = time.perf_counter()
        engine = build(name, sessions, turns, turn_tokens, seed)
        results[name] = {"build_s": time.perf_counter() - start}
        # One cache for every call size, each taking a tenth of what is left.
        for call_tokens in CALL_TOKENS:
            results[name][str(call_tokens)] = {
                "nodes": count_nodes(engine.cache),
                "evictable_tokens": engine.cache.evictable_size(),
                **time_evictions(engine, call_tokens, max_calls),
            }
    return {
        **result_header(),
        "sessions": sessions,
        "turns": turns,
        "turn_tokens": turn_tokens,
        "seed": seed,
        "caches": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--turn-tokens", type=int, default=16)
    parser.add_argument("--caches", default=",".join(CACHES))
    parser.add_argument("--max-calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    caches = args.caches.split(",")
    unknown = [c for c in caches if c not in CACHES]
    if unknown:
        parser.error(f"unknown caches {unknown}; known: {list(CACHES)}")
    result = run(args.sessions, args.turns, args.turn_tokens, caches, args.max_calls, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, by_size in result["caches"].items():
        for size, cell in by_size.items():
            if size == "build_s":
                continue
            s = cell["seconds"]
            print(
                f"{name:<10} evict({size:>5}) at {cell['nodes']} nodes: "
                f"p50 {s['p50'] * 1e3:.3f} ms, p99 {s['p99'] * 1e3:.3f} ms over {cell['calls']}"
            )


if __name__ == "__main__":
    main()
