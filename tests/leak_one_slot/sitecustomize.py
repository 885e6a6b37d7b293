"""For ``tests/test_soak.py``: with ASYMCACHE_TEST_LEAK_ONE_SLOT=N, the first request of N prompt
tokens that AsymCache's cache finishes keeps one KV slot that nothing ever frees, so SGLang's idle
check must fire (N: a length the server's own warmup and latency profile do not send)."""

import os
import sys

LEAK_AT_PROMPT_TOKENS = int(os.environ.get("ASYMCACHE_TEST_LEAK_ONE_SLOT", "0"))

if LEAK_AT_PROMPT_TOKENS:
    from asymcache_sglang.radix_cache import HoleAwareRadixCache

    finish = HoleAwareRadixCache.cache_finished_req

    def cache_finished_req_leaking_once(self, req, *args, **kwargs):
        finish(self, req, *args, **kwargs)
        leak_now = len(req.origin_input_ids) == LEAK_AT_PROMPT_TOKENS
        if leak_now and not getattr(self, "_leaked_one_slot", False):
            self._leaked_one_slot = True
            self.token_to_kv_pool_allocator.alloc(1)
            print("leaked one slot on purpose", file=sys.stderr, flush=True)

    HoleAwareRadixCache.cache_finished_req = cache_finished_req_leaking_once
