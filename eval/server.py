"""Launch an SGLang HTTP server in a subprocess for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
VLLM_STUB_DIR = REPO_ROOT / "scripts" / "vllm_stub"


def cpu_server_args() -> list[str]:
    """Flags that make stock SGLang 0.5.16 serve a float32 model on a CPU-only host."""
    return [
        "--device", "cpu",
        "--attention-backend", "torch_native",
        # --disable-cuda-graph is deprecated in 0.5.16; these are its per-phase replacements.
        "--disable-prefill-cuda-graph",
        "--disable-decode-cuda-graph",
        "--grammar-backend", "none",
        # Keeps the idle scheduler loop from spinning on one of the few cores.
        "--sleep-on-idle",
        "--dtype", "float32",
    ]  # fmt: skip


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a CPU server: the `vllm` stub on PYTHONPATH, generic (non-AMX) CPU path."""
    env = dict(os.environ if base is None else base)
    parts = [str(VLLM_STUB_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    # The CPU engine path needs sgl_kernel's CPU ops, which this setup does not install.
    env.pop("SGLANG_USE_CPU_ENGINE", None)
    # Set for the kernel tests only; the server runs no Triton kernel on the CPU.
    env.pop("TRITON_INTERPRET", None)
    return env


def stock_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with no SGLang plugin loaded."""
    # SGLANG_PLUGINS is a whitelist of plugin names; a name that matches none loads none.
    return {**(os.environ if base is None else base), "SGLANG_PLUGINS": "none"}


def stock_cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Like ``cpu_env`` but with no SGLang plugin loaded: the unmodified 0.5.16 baseline."""
    return stock_env(cpu_env(base))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What uvicorn logs when the HTTP port was taken between free_port() and the bind (another
# server's internal ports, e.g. its NCCL port, are drawn at random and can land on it).
BIND_FAILURE = "error while attempting to bind on address"
PORT_ATTEMPTS = 3


# What SGLang 0.5.16 logs when it runs prefills eagerly because too little GPU memory is left
# for their CUDA graphs (cuda_graph_setup.py): servers meant to differ in one flag then don't.
PREFILL_GRAPH_GATE = "Disabling auto-selected prefill CUDA graph"


class PortTaken(RuntimeError):
    """The server could not bind its HTTP port."""


# Servers started and not stopped. Each runs in its own session, so a harness that `timeout`
# terminates would leave them holding GPU memory for the next call's servers.
_running: set[SGLangServer] = set()


def _stop_running_servers_and_exit(signum: int, frame: object) -> None:
    for server in list(_running):
        server.stop(grace_s=5.0)
    os._exit(128 + signum)


def _stop_servers_on_sigterm() -> None:
    """Make SIGTERM stop this process's servers before it exits (unless a handler is set)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_running_servers_and_exit)


class SGLangServer:
    """`python -m sglang.launch_server` in its own process group; a context manager."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 300,
    ) -> None:
        self.model_path = str(model_path)
        self.port_given = port is not None
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path is not None else self._temp_log_path()
        self.env = env
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        _stop_servers_on_sigterm()

    @staticmethod
    def _temp_log_path() -> Path:
        fd, name = tempfile.mkstemp(prefix="sglang-server-", suffix=".log")
        os.close(fd)
        return Path(name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sglang.launch_server",
            "--model-path", self.model_path,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> SGLangServer:
        """Launch the server and block until it answers /health_generate.

        A port of our own choosing that was taken before the server bound it is replaced by a
        fresh one, up to PORT_ATTEMPTS launches; a port the caller gave is not.
        """
        if self.proc is not None:
            raise RuntimeError("server already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        attempt = 1
        while True:
            with open(self.log_path, "wb") as log:
                # Own session: stop() can kill the scheduler and detokenizer children as a group.
                self.proc = subprocess.Popen(
                    self.command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,
                )
            _running.add(self)
            try:
                self.wait_healthy()
                return self
            except PortTaken:
                self.stop()
                if self.port_given or attempt == PORT_ATTEMPTS:
                    raise
                attempt += 1
                self.port = free_port()
            except BaseException:
                self.stop()
                raise

    def log_tail(self, num_lines: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-num_lines:])

    def wait_healthy(self) -> None:
        """Poll /health_generate until it answers 200; raise if the server dies, cannot bind its
        port (PortTaken: its scheduler would keep it alive until the timeout), or times out."""
        if self.proc is None:
            raise RuntimeError("server not started")
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if BIND_FAILURE in self.log_path.read_text(errors="replace"):
                raise PortTaken(f"port {self.port} was taken; log {self.log_path}")
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sglang server exited with code {self.proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}/health_generate", timeout=30).status_code == 200:
                    return
            except requests.RequestException:
                pass  # Not listening yet.
            time.sleep(0.5)
        raise RuntimeError(
            f"sglang server not healthy after {self.timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL it if it outlives `grace_s`."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session made the child its group leader.
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        # Children can outlive the leader, so kill what is left of the group either way.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        _running.discard(self)

    def prefill_graphs_gated(self) -> bool:
        """Whether SGLang ran this server's prefills without the CUDA graphs it had chosen,
        for want of free GPU memory."""
        return PREFILL_GRAPH_GATE in self.log_path.read_text(errors="replace")

    def __enter__(self) -> SGLangServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SGLangRouter(SGLangServer):
    """`python -m sglang_router.launch_router` (sglang-router on PyPI) in front of ``workers``,
    with its ``policy`` (cache-aware by default); healthy once every worker is registered."""

    def __init__(
        self,
        workers: Sequence[str],
        *,
        policy: str = "cache_aware",
        log_path: Path | None = None,
        timeout_s: float = 120,
    ) -> None:
        # No model of its own: the workers serve theirs.
        super().__init__(
            "", extra_args=["--policy", policy], log_path=log_path, timeout_s=timeout_s
        )
        self.workers = list(workers)

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sglang_router.launch_router",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--worker-urls", *self.workers,
            *self.extra_args,
        ]  # fmt: skip

    def wait_healthy(self) -> None:
        """The router answers /health_generate with one healthy worker; wait for them all."""
        super().wait_healthy()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            workers = requests.get(f"{self.url}/workers", timeout=30).json()["workers"]
            if sum(w["is_healthy"] for w in workers) == len(self.workers):
                return
            time.sleep(0.5)
        raise RuntimeError(f"router at {self.url} registered {len(workers)} workers")


def start_staggered(servers: Sequence[SGLangServer], stagger_s: float) -> None:
    """Start every server, each ``stagger_s`` after the one before (so their memory profiling
    does not overlap on one GPU); return when all are healthy, raise if one is not or if one
    lost its prefill CUDA graphs to the others' memory (the caller stops them)."""

    def start(item: tuple[int, SGLangServer]) -> None:
        time.sleep(item[0] * stagger_s)
        item[1].start()

    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        list(pool.map(start, enumerate(servers)))
    gated = [str(s.log_path) for s in servers if s.prefill_graphs_gated()]
    if gated:
        raise RuntimeError(
            f"SGLang turned prefill CUDA graphs off for want of GPU memory ({', '.join(gated)}): "
            "the servers would not run alike; start fewer at a time or smaller pools"
        )
