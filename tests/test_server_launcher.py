"""eval.server.SGLangServer's launch: a port taken before the server binds it is replaced.

The server here is uvicorn itself (what SGLang serves HTTP with), so the bind failure is the real
message; it answers 200 everywhere, which is all ``wait_healthy`` asks of /health_generate.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import requests

from eval.server import PortTaken, SGLangServer

ALWAYS_OK = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]))
"""


class UvicornServer(SGLangServer):
    @property
    def command(self) -> list[str]:
        return [sys.executable, "-c", ALWAYS_OK, str(self.port)]


@pytest.fixture()
def taken_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: probes of it are refused at once
        yield sock.getsockname()[1]


def test_a_taken_port_of_our_choosing_is_replaced(taken_port: int, tmp_path: Path):
    server = UvicornServer("unused", log_path=tmp_path / "server.log", timeout_s=60)
    server.port = taken_port  # as if something bound it between free_port() and the launch
    with server:
        assert server.port != taken_port
        assert requests.get(f"{server.url}/health_generate", timeout=10).status_code == 200


def test_a_port_the_caller_gave_is_not_replaced(taken_port: int, tmp_path: Path):
    server = UvicornServer("unused", port=taken_port, log_path=tmp_path / "server.log")
    with pytest.raises(PortTaken, match=str(taken_port)):
        server.start()
    assert server.proc is None  # stopped, nothing left running
