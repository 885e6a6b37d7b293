"""Soak a server with what clients do, then check it is still whole.

Concurrent multi-turn sessions that share a system prefix run under a small KV pool (constant
interior eviction with AsymCache), and every turn is one of: a normal streamed request, a request
cut before its first chunk or after it, one aborted by rid, one with ``max_new_tokens`` 0, or a
prompt longer than the pool. Every ``abort_all_every`` requests one session aborts everything in
flight; every ``burst_every`` requests one sends a burst of long decodes that outgrow the pool, so
the scheduler retracts. Counts of what was sent and what came back go into the result.

    python -m eval.soak --url URL --requests 20000 --pool-tokens 1200 --out soak.json

The CPU test (``tests/test_soak.py``) runs 2,000 requests and then checks the server: healthy after
idle, no leak or traceback line, consistent counters, and outputs equal to the no-cache server's.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from eval.common import result_header
from eval.workloads import greedy_sampling

ACTIONS = ("complete", "cut_before_first_chunk", "cut_after_first_chunk", "abort_by_rid",
           "zero_new_tokens", "too_long")  # fmt: skip


@dataclass(frozen=True)
class SoakConfig:
    """The soak's clients: how many requests, and how often each kind of trouble."""

    requests: int = 2000
    sessions: int = 8
    pool_tokens: int = 1200
    shared_tokens: int = 48
    first_tokens: tuple[int, int] = (16, 96)
    user_tokens: tuple[int, int] = (4, 32)
    new_tokens: tuple[int, int] = (1, 8)
    # A conversation longer than this starts over (after the shared prefix).
    restart_tokens: int = 480
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "complete": 0.70,
            "cut_before_first_chunk": 0.06,
            "cut_after_first_chunk": 0.06,
            "abort_by_rid": 0.08,
            "zero_new_tokens": 0.06,
            "too_long": 0.04,
        }  # fmt: skip
    )
    abort_all_every: int = 400
    burst_every: int = 500
    burst_size: int = 8
    burst_new_tokens: int = 160
    vocab: tuple[int, int] = (10, 500)
    seed: int = 0
    timeout_s: float = 300.0


@dataclass
class SoakCounts:
    """What was sent and how it ended, summed over the soak's threads."""

    sent: Counter = field(default_factory=Counter)
    # (action, outcome): finished, aborted, http_<status>, cut, error
    outcomes: Counter = field(default_factory=Counter)
    abort_alls: int = 0
    bursts: int = 0
    retractions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, action: str, outcome: str, retractions: int = 0) -> None:
        with self.lock:
            self.outcomes[f"{action}:{outcome}"] += 1
            self.retractions += retractions

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": dict(self.sent),
            "outcomes": dict(sorted(self.outcomes.items())),
            "abort_alls": self.abort_alls,
            "bursts": self.bursts,
            "retractions": self.retractions,
        }


class Soak:
    """The soak against one server URL; ``run`` returns the counts."""

    def __init__(self, url: str, config: SoakConfig) -> None:
        self.url = url
        self.config = config
        self.counts = SoakCounts()
        self._issued = 0
        self._issue_lock = threading.Lock()
        shared = random.Random(config.seed)
        self.shared_prefix = self._tokens(shared, config.shared_tokens)

    def _tokens(self, rng: random.Random, n: int) -> list[int]:
        return [rng.randrange(*self.config.vocab) for _ in range(n)]

    def _next_ticket(self) -> int | None:
        """The number of the next request to send, or None once the soak has sent them all."""
        with self._issue_lock:
            if self._issued >= self.config.requests:
                return None
            self._issued += 1
            return self._issued

    def run(self) -> SoakCounts:
        with ThreadPoolExecutor(self.config.sessions) as pool:
            list(pool.map(self._session, range(self.config.sessions)))
        return self.counts

    def _fresh_history(self, rng: random.Random) -> list[int]:
        return self.shared_prefix + self._tokens(rng, rng.randint(*self.config.first_tokens))

    def _session(self, index: int) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed * 1000 + index + 1)
        history = self._fresh_history(rng)
        actions, weights = zip(*cfg.weights.items())
        while (ticket := self._next_ticket()) is not None:
            if ticket % cfg.abort_all_every == 0:
                self._post("/abort_request", {"abort_all": True})
                with self.counts.lock:
                    self.counts.abort_alls += 1
            if ticket % cfg.burst_every == 0:
                self._burst(rng)
                continue
            action = rng.choices(actions, weights)[0]
            with self.counts.lock:
                self.counts.sent[action] += 1
            output = getattr(self, f"_{action}")(rng, history)
            history += output + self._tokens(rng, rng.randint(*cfg.user_tokens))
            if len(history) > cfg.restart_tokens:
                history = self._fresh_history(rng)

    def _payload(self, ids: list[int], new_tokens: int, **extra: Any) -> dict[str, Any]:
        return {"input_ids": ids, "sampling_params": greedy_sampling(new_tokens), **extra}

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=self.config.timeout_s)

    def _finish(self, action: str, response: requests.Response) -> list[int]:
        """Count a non-streamed response; its output tokens when it finished normally."""
        if response.status_code != 200:
            self.counts.add(action, f"http_{response.status_code}")
            return []
        body = response.json()
        meta = body["meta_info"]
        reason = (meta.get("finish_reason") or {}).get("type")
        self.counts.add(action, "aborted" if reason == "abort" else "finished",
                        meta.get("num_retractions", 0))  # fmt: skip
        return body["output_ids"] if reason != "abort" else []

    def _complete(self, rng: random.Random, history: list[int]) -> list[int]:
        new = rng.randint(*self.config.new_tokens)
        return self._finish("complete", self._post("/generate", self._payload(history, new)))

    def _zero_new_tokens(self, rng: random.Random, history: list[int]) -> list[int]:
        self._finish("zero_new_tokens", self._post("/generate", self._payload(history, 0)))
        return []

    def _too_long(self, rng: random.Random, history: list[int]) -> list[int]:
        prompt = history + self._tokens(rng, self.config.pool_tokens)
        self._finish("too_long", self._post("/generate", self._payload(prompt, 4)))
        return []

    def _abort_by_rid(self, rng: random.Random, history: list[int]) -> list[int]:
        rid = uuid.uuid4().hex
        body = self._payload(history, rng.randint(*self.config.new_tokens) + 8, rid=rid)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._post, "/generate", body)
            time.sleep(rng.uniform(0.0, 0.05))
            self._post("/abort_request", {"rid": rid})
            self._finish("abort_by_rid", pending.result())
        return []

    def _cut(self, action: str, history: list[int], new_tokens: int, after_first: bool) -> None:
        """A streamed request whose connection this client closes, before or after the first
        chunk; each on its own session, so closing it closes the socket."""
        with requests.Session() as session:
            with session.post(
                self.url + "/generate", json=self._payload(history, new_tokens, stream=True),
                stream=True, timeout=self.config.timeout_s,
            ) as response:  # fmt: skip
                if after_first:
                    next(response.iter_lines(), None)
        self.counts.add(action, "cut")

    def _cut_before_first_chunk(self, rng: random.Random, history: list[int]) -> list[int]:
        self._cut("cut_before_first_chunk", history, 16, after_first=False)
        return []

    def _cut_after_first_chunk(self, rng: random.Random, history: list[int]) -> list[int]:
        self._cut("cut_after_first_chunk", history, 16, after_first=True)
        return []

    def _burst(self, rng: random.Random) -> None:
        """Long decodes at once, more than the pool holds when they have all grown: retraction."""
        cfg = self.config
        prompts = [self.shared_prefix + self._tokens(rng, 48) for _ in range(cfg.burst_size)]
        with ThreadPoolExecutor(cfg.burst_size) as pool:
            responses = pool.map(
                lambda p: self._post("/generate", self._payload(p, cfg.burst_new_tokens)), prompts
            )
            for response in responses:
                self._finish("burst", response)
        with self.counts.lock:
            self.counts.sent["burst"] += cfg.burst_size
            self.counts.bursts += 1


def run_soak(url: str, config: SoakConfig) -> dict[str, Any]:
    start = time.perf_counter()
    counts = Soak(url, config).run()
    return {
        "config": asdict(config),
        "elapsed_s": time.perf_counter() - start,
        **counts.as_json(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=SoakConfig.requests)
    parser.add_argument("--sessions", type=int, default=SoakConfig.sessions)
    parser.add_argument(
        "--pool-tokens", type=int, default=SoakConfig.pool_tokens,
        help="the server's --max-total-tokens: too-long prompts exceed it",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = SoakConfig(
        requests=args.requests, sessions=args.sessions, pool_tokens=args.pool_tokens,
        seed=args.seed,
    )  # fmt: skip
    result = {**result_header(), "url": args.url, **run_soak(args.url, config)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
