"""Entry point of the ``sglang.srt.plugins`` group: registers the flag, the cache and the hooks.

SGLang calls ``register()`` in the launcher and again in every spawned scheduler process, so it is
idempotent. Every hook is a no-op unless the tree cache is a ``HoleAwareRadixCache``.
"""

from __future__ import annotations

import importlib
from typing import Any

_registered = False

PATCH_MODULES = (
    "asymcache_sglang.patches.prefill_adder_add_one_req",
    "asymcache_sglang.patches.schedule_batch_prepare_for_extend",
    "asymcache_sglang.patches.forward_batch_init_new",
    "asymcache_sglang.patches.torch_native_init_forward_metadata",
    "asymcache_sglang.patches.torch_native_forward_extend",
    "asymcache_sglang.patches.flashinfer_init_forward_metadata",
    "asymcache_sglang.patches.flashinfer_forward_extend",
    "asymcache_sglang.patches.triton_init_forward_metadata",
    "asymcache_sglang.patches.scheduler_get_internal_state",
    "asymcache_sglang.patches.model_runner_forward",
    "asymcache_sglang.patches.scheduler_get_new_batch_prefill_raw",
    "asymcache_sglang.patches.http_server_wait_and_warmup",
)


def make_asymcache_tree(ctx: Any) -> Any:
    """Factory for ``--radix-cache-backend asymcache``."""
    from asymcache_sglang.config import AsymCacheConfig
    from asymcache_sglang.radix_cache import HoleAwareRadixCache

    if ctx.server_args.disable_radix_cache:
        raise ValueError("--radix-cache-backend asymcache cannot run with --disable-radix-cache")
    if ctx.is_hybrid_swa or ctx.is_hybrid_ssm:
        raise ValueError("AsymCache supports full-attention models only (no SWA or SSM layers)")
    if not getattr(ctx.server_args, "enable_asymcache", False):
        raise ValueError("--radix-cache-backend asymcache needs --enable-asymcache")
    return HoleAwareRadixCache(ctx.params, AsymCacheConfig.from_server_args(ctx.server_args))


def register() -> None:
    global _registered
    if _registered:
        return
    from sglang.srt.mem_cache.registry import (
        get_radix_cache_factory,
        register_radix_cache_backend,
    )
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from asymcache_sglang.server_args import AsymCacheServerArgs

    HookRegistry.register(
        "sglang.srt.server_args.ServerArgs", AsymCacheServerArgs, HookType.REPLACE
    )
    # Engine binds its argument class at import, which can precede the plugin: rebind it too.
    HookRegistry.register(
        "sglang.srt.entrypoints.engine.Engine.server_args_class",
        AsymCacheServerArgs,
        HookType.REPLACE,
    )
    if get_radix_cache_factory("asymcache") is None:
        register_radix_cache_backend("asymcache", make_asymcache_tree)
    for name in PATCH_MODULES:
        module = importlib.import_module(name)
        HookRegistry.register(module.TARGET, module.hook, module.HOOK_TYPE)
    _registered = True
