"""Entry point of the ``sglang.srt.plugins`` group: registers the flag, the cache and the hooks.

SGLang calls ``register()`` in the launcher and again in every spawned scheduler process, so it is
idempotent. Every hook is a no-op unless AsymCache is on (``handoff``'s guards).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger(__name__)

_registered = False

PATCH_MODULES = (
    "asymcache_sglang.patches.prefill_adder_add_one_req",
    "asymcache_sglang.patches.prefill_adder_add_chunked_req",
    "asymcache_sglang.patches.schedule_batch_prepare_for_extend",
    "asymcache_sglang.patches.forward_batch_init_new",
    "asymcache_sglang.patches.torch_native_init_forward_metadata",
    "asymcache_sglang.patches.torch_native_forward_extend",
    "asymcache_sglang.patches.flashinfer_init_forward_metadata",
    "asymcache_sglang.patches.flashinfer_forward_extend",
    "asymcache_sglang.patches.triton_init_forward_metadata",
    "asymcache_sglang.patches.scheduler_get_internal_state",
    "asymcache_sglang.patches.model_runner_forward",
    "asymcache_sglang.patches.prefill_cuda_graph_runner_can_run_graph",
    "asymcache_sglang.patches.scheduler_get_new_batch_prefill_raw",
    "asymcache_sglang.patches.http_server_wait_and_warmup",
    "asymcache_sglang.patches.scheduler_close_session",
    "asymcache_sglang.patches.evict_from_tree_cache",
    "asymcache_sglang.patches.tokenizer_manager_validate_one_request",
    "asymcache_sglang.patches.tokenizer_manager_tokenize_texts",
    "asymcache_sglang.patches.serving_chat_process_messages",
)


def make_asymcache_tree(ctx: Any) -> Any:
    """Factory for ``--radix-cache-backend asymcache``: the cache, its latency runtime, and the
    state the model-side hooks read (``handoff`` step 0)."""
    from asymcache_sglang import handoff
    from asymcache_sglang.core.config import AsymCacheConfig
    from asymcache_sglang.core.pass_clock import PassClock
    from asymcache_sglang.forward_timer import ForwardTimer
    from asymcache_sglang.latency_runtime import LatencyRuntime
    from asymcache_sglang.radix_cache import HoleAwareRadixCache
    from asymcache_sglang.tp_agreement import TpAgreement

    if not getattr(ctx.server_args, "enable_asymcache", False):
        raise ValueError("--radix-cache-backend asymcache needs --enable-asymcache")
    if ctx.is_hybrid_swa or ctx.is_hybrid_ssm:
        raise ValueError("AsymCache supports full-attention models only (no SWA or SSM layers)")
    config = AsymCacheConfig.from_server_args(ctx.server_args)
    latency = LatencyRuntime(config)
    model_runner = ctx.tp_worker.model_runner
    use_cuda = str(model_runner.device).startswith("cuda")
    handoff.attach_forward_timer(model_runner, ForwardTimer(latency.observe_forward, use_cuda))
    msa_impl = msa_impl_for(config.msa_impl, model_runner.model_config.hf_config)
    handoff.attach_forward_plan(model_runner.attn_backend, handoff.ForwardPlan(msa_impl))
    agreement = TpAgreement(latency, PassClock()) if config.tp_size > 1 else None
    return HoleAwareRadixCache(ctx.params, config, latency, agreement)


def msa_impl_for(configured: str | None, hf_config: Any) -> str | None:
    """The configured MSA kernel, or FlashInfer's for models AsymCache's kernel cannot run."""
    if configured == "triton" and (
        getattr(hf_config, "attn_logit_softcapping", None)
        or getattr(hf_config, "sliding_window", None)
    ):
        logger.warning(
            "--asymcache-msa-impl triton has no logit cap or sliding window; this model has "
            "one, so multi-segment extends use FlashInfer's sub-request plan"
        )
        return "flashinfer"
    return configured


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
