"""eval.server.SGLangServer's launch: a port taken before the server binds it is replaced, a
harness that is terminated takes its servers with it, and servers that lost their prefill CUDA
graphs to each other's memory are refused.

The server here is uvicorn itself (what SGLang serves HTTP with), so the bind failure is the real
message; it answers 200 everywhere, which is all ``wait_healthy`` asks of /health_generate.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from eval.server import PREFILL_GRAPH_GATE, REPO_ROOT, PortTaken, SGLangServer, start_staggered

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


# A harness that starts an always-OK server, prints its port, and waits to be terminated.
HARNESS = f"""
import sys, time
from eval.server import SGLangServer

class UvicornServer(SGLangServer):
    @property
    def command(self):
        return [sys.executable, "-c", {ALWAYS_OK!r}, str(self.port)]

server = UvicornServer("unused", log_path=sys.argv[1], timeout_s=60).start()
print(server.port, server.proc.pid, flush=True)
time.sleep(600)
"""


def _refused(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/health_generate", timeout=2)
    except requests.ConnectionError:
        return True
    return False


def test_a_terminated_harness_stops_its_servers(tmp_path: Path):
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        port, pid = map(int, harness.stdout.readline().split())
        assert not _refused(port)
        harness.send_signal(signal.SIGTERM)  # what `timeout` sends
        assert harness.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while not _refused(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _refused(port), "the server outlived its harness"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # its whole process group is gone
    finally:
        harness.kill()


class GatedServer(UvicornServer):
    """Logs what SGLang logs when it runs prefills without their CUDA graphs for want of memory."""

    @property
    def command(self) -> list[str]:
        gate = f"print({PREFILL_GRAPH_GATE!r} + ': only 3.92 GiB is free', flush=True)\n"
        return [sys.executable, "-c", gate + ALWAYS_OK, str(self.port)]


def test_servers_that_lost_their_prefill_graphs_are_refused(tmp_path: Path):
    servers = [
        UvicornServer("unused", log_path=tmp_path / "first.log", timeout_s=60),
        GatedServer("unused", log_path=tmp_path / "second.log", timeout_s=60),
    ]
    try:
        with pytest.raises(RuntimeError, match="second.log") as raised:
            start_staggered(servers, 0.0)
        assert "first.log" not in str(raised.value)
    finally:
        for server in servers:
            server.stop()
    assert all(server.proc is None for server in servers)
