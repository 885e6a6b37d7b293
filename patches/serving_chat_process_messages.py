"""AROUND ``sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._process_messages``
(SGLang 0.5.16).

``/v1/chat/completions`` renders and tokenizes its messages here, before the tokenizer manager.
A message with a lone surrogate makes the tokenizer raise a TypeError that SGLang returns as a
400 saying only "TextEncodeInput must be Union[...]"; here the 400 names the character.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.core.request_checks import text_error
from asymcache_sglang.server_args import asymcache_enabled

TARGET = "sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._process_messages"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], serving: Any, request: Any, *a: Any, **kw: Any) -> Any:
    if asymcache_enabled(serving.tokenizer_manager.server_args):
        error = text_error(request.model_dump(include={"messages"}))
        if error is not None:
            raise ValueError(f"messages: {error}")
    return original(serving, request, *a, **kw)
