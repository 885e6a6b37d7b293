"""AROUND ``sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req`` (SGLang 0.5.16).

SGLang continues a chunked request from the end of its last chunk without matching it again.
AsymCache matches the rest of its prompt first: holes that an earlier chunk did not reach are
admitted as a plan for this chunk (``plan_admission``), and resident KV after the last chunk is
reused instead of recomputed. What the earlier chunks wrote stays locked: the lock moves from
the node ``cache_unfinished_req`` locked to this chunk's deepest reused node. A chunk that
ended inside a page (``--page-size`` > 1) carries on without a match, as SGLang does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.plan_admission import admit

TARGET = "sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], adder: Any, req: Any) -> Any:
    cache = handoff.enabled_cache(adder.tree_cache)
    if cache is None:
        return original(adder, req)
    request = handoff.request_plan(req)
    written, locked = len(req.prefix_indices), req.last_node
    if written % cache.page_size:
        # SGLang cut the last chunk at the pool's room, inside a page the tree cannot hold yet:
        # carry on from it as SGLang does; the plan's holes not yet reached are recomputed.
        cache.counters.chunk_fallbacks += written < request.plan_end
        return original(adder, req)
    req.init_next_round_input(cache)
    # What the earlier chunks wrote is locked in the tree, so the match covers at least that.
    assert len(req.prefix_indices) >= written, f"{len(req.prefix_indices)=} < {written=}"
    # The matched prefix is the tree's, as cache_protected_len (set by the match) says.
    request.retained = None
    plan = request.take_matched()
    matched_end = len(req.prefix_indices) if plan is None else plan.prefix_len
    # The earlier chunk's lock kept its plan's retained KV resident, so the match reaches it.
    cache.counters.chunk_fallbacks += matched_end < request.plan_end
    with _chunk_in_whole_pages(adder, cache.page_size):
        if plan is None:
            result = original(adder, req)
        else:
            result = admit(
                cache,
                adder,
                req,
                plan,
                lambda: original(adder, req),
                # What SGLang's add_chunked_req takes of the tail.
                chunk_tokens=min(adder.rem_chunk_tokens, int(adder.rem_total_tokens)),
                logs_prefix_as_hits=False,
                budgets_whole_request=False,
            )
    cache.inc_lock_ref(req.last_node)
    cache.dec_lock_ref(locked)
    return result


@contextmanager
def _chunk_in_whole_pages(adder: Any, page_size: int) -> Iterator[None]:
    """While SGLang cuts the chunk: its budget in whole pages, when a page is left. Decodes mixed
    into the chunk leave the budget inside a page, and a cut there would leave a partial page
    that the next chunk cannot match."""
    # A chunked request implies a chunk budget (SGLang's add_chunked_req takes its min).
    budget = adder.rem_chunk_tokens
    cut = budget % page_size if budget >= page_size else 0
    adder.rem_chunk_tokens -= cut
    try:
        yield
    finally:
        adder.rem_chunk_tokens += cut
