"""AROUND ``sglang.srt.managers.tokenizer_manager.TokenizerManager._tokenize_texts``
(SGLang 0.5.16).

Every text prompt, single or batched, is tokenized here. Text that does not encode to UTF-8 (a
lone surrogate) makes the tokenizer raise a TypeError, which SGLang answers with a bare 500; here
it is a ValueError naming the character, which SGLang answers with HTTP 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.core.request_checks import text_error
from asymcache_sglang.server_args import asymcache_enabled

TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._tokenize_texts"
HOOK_TYPE = HookType.AROUND


async def hook(original: Callable[..., Any], manager: Any, texts: Any, *a: Any, **kw: Any) -> Any:
    if asymcache_enabled(manager.server_args):
        error = text_error(texts)
        if error is not None:
            raise ValueError(error)
    return await original(manager, texts, *a, **kw)
