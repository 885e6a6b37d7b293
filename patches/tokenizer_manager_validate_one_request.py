"""AROUND ``sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request``
(SGLang 0.5.16).

Every prompt of ``/generate``, the OpenAI-compatible endpoints and ``sglang.Engine``, single or
batched, passes here with its token ids before it is sent to the scheduler. An id outside the
vocabulary would fail the scheduler's embedding lookup and kill the server with every request in
flight; here it is a ValueError, which SGLang answers with HTTP 400 (an error event on a stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.core.request_checks import token_ids_error
from asymcache_sglang.server_args import asymcache_enabled

TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
HOOK_TYPE = HookType.AROUND


def hook(
    original: Callable[..., Any], manager: Any, obj: Any, input_ids: Any, *a: Any, **kw: Any
) -> Any:
    if asymcache_enabled(manager.server_args) and input_ids is not None:
        error = token_ids_error(input_ids, manager.model_config.vocab_size)
        if error is not None:
            raise ValueError(error)
    return original(manager, obj, input_ids, *a, **kw)
