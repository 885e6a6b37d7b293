"""SGLang frontend programs (``sgl.function``) as AsymCache programs, on the client side.

``ProgramEndpoint`` is SGLang 0.5.16's ``RuntimeEndpoint`` that names each program run: every
request one run sends (``gen``, streamed ``gen``, ``select``, the prefix commits) carries the run's
id as SGLang's ``session_id``, and once the run's last call is sent ``/close_session`` ends it, so
the server holds the run's KV while it waits between calls and lets it go first once it is done.
Forks are runs of their own. Against a server without AsymCache both are harmless: SGLang accepts
``session_id`` on ``/generate`` and logs the close of a session it never opened.
"""

from __future__ import annotations

import threading
from typing import Any

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.lang.interpreter import StreamExecutor
from sglang.utils import http_request


class ProgramEndpoint(RuntimeEndpoint):
    """``RuntimeEndpoint`` whose requests name their program run; use it where you would use
    ``sgl.RuntimeEndpoint(url)``."""

    def _add_images(self, s: StreamExecutor, data: dict[str, Any]) -> None:
        # Every request RuntimeEndpoint builds for a run passes here with the run and its body.
        super()._add_images(s, data)
        data["session_id"] = s.sid

    def end_program(self, s: StreamExecutor | list[StreamExecutor]) -> None:
        for run in s if isinstance(s, list) else [s]:
            if run.use_thread:
                # SGLang ends a run when its function returns, before its worker thread has
                # sent the queued calls; close once they are sent, without blocking a stream.
                threading.Thread(target=self._close_after, args=(run,), daemon=True).start()
            else:
                self._close(run)

    def _close_after(self, run: StreamExecutor) -> None:
        run.worker.join()
        self._close(run)

    def _close(self, run: StreamExecutor) -> None:
        res = http_request(
            self.base_url + "/close_session",
            json={"session_id": run.sid},
            api_key=self.api_key,
            verify=self.verify,
        )
        self._assert_success(res)
