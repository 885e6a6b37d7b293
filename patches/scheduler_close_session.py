"""AROUND ``sglang.srt.managers.scheduler.Scheduler.close_session`` (SGLang 0.5.16).

``/close_session`` with a ``session_id`` that requests carried is a program's last step. SGLang
releases a radix session's KV (``tree_cache.release_radix_session``) only under
``--enable-session-radix-cache``, which AsymCache refuses; here AsymCache's cache always does
(the KV no other program holds goes first on eviction). SGLang's own close still runs for
sessions it opened (``/open_session``); a plain ``session_id`` it never opened ends here instead
of in its "session id does not exist" warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = "sglang.srt.managers.scheduler.Scheduler.close_session"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], scheduler: Any, recv_req: Any, *a: Any, **kw: Any) -> Any:
    cache = handoff.enabled_cache(scheduler.tree_cache)
    if cache is None:
        return original(scheduler, recv_req, *a, **kw)
    cache.release_radix_session(recv_req.session_id)
    if recv_req.session_id in scheduler.session_controller:
        return original(scheduler, recv_req, *a, **kw)
    return None
