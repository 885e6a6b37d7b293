"""Multi-turn workloads replayed against an SGLang server's native /generate endpoint."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests


@dataclass(frozen=True)
class MultiTurnWorkload:
    """Sessions that come back turn after turn; each turn adds the answer and a new user message.

    Turns are sent round-robin across sessions, so under a bounded KV pool a session's cached
    path is partly evicted by the time it returns.
    """

    num_sessions: int = 8
    turns: int = 4
    first_prompt_tokens: int = 120
    user_tokens_per_turn: int = 40
    max_new_tokens: int = 8
    vocab_low: int = 10
    vocab_high: int = 500
    seed: int = 0


@dataclass
class TurnResult:
    session: int
    turn: int
    input_ids: list[int]
    output_ids: list[int]
    output_logprobs: list[float]
    cached_tokens: int
    ttft_s: float
    latency_s: float
    meta: dict = field(default_factory=dict)


def tpot_s(result: TurnResult) -> float | None:
    """Mean time per output token after the first; None for a single-token answer."""
    if len(result.output_ids) < 2:
        return None
    return (result.latency_s - result.ttft_s) / (len(result.output_ids) - 1)


def inter_token_gaps_s(result: TurnResult) -> list[float]:
    """Per-token gaps after the first token; a chunk of k tokens counts as k gaps of 1/k each."""
    gaps = []
    arrivals = result.meta.get("arrivals", [])
    for (t0, n0), (t1, n1) in zip(arrivals, arrivals[1:]):
        if n1 > n0:
            gaps += [(t1 - t0) / (n1 - n0)] * (n1 - n0)
    return gaps


def ttft_stages(sent_s: float, first_token_s: float, meta: dict) -> dict[str, float] | None:
    """Where one request's TTFT went, from the wall-clock times the server puts in the last
    chunk's meta_info when it runs with ``--enable-metrics`` (None without them): the trip to the
    tokenizer manager, on to the scheduler's queue, the wait there, the prefill forwards, and the
    first token's way back to this client."""
    if "forward_entry_time" not in meta or "prefill_finished_time" not in meta:
        return None
    queued_at = meta["forward_entry_time"] - meta["queue_time"]
    return {
        "to_server": meta["request_received_ts"] - sent_s,
        "to_queue": queued_at - meta["request_received_ts"],
        "queued": meta["queue_time"],
        "prefill": meta["prefill_finished_time"] - meta["forward_entry_time"],
        "to_client": first_token_s - meta["prefill_finished_time"],
    }


def greedy_sampling(max_new_tokens: int) -> dict:
    """Greedy sampling of exactly ``max_new_tokens`` tokens (EOS ignored)."""
    return {"max_new_tokens": max_new_tokens, "temperature": 0.0, "ignore_eos": True}


def generate_streaming(
    url: str,
    input_ids: list[int],
    max_new_tokens: int,
    *,
    return_logprob: bool = True,
    session_id: str | None = None,
) -> TurnResult:
    """One greedy request; TTFT is the arrival of the first streamed chunk.

    SGLang mixes a prefill with running decodes (``--enable-mixed-chunk``) only when no request in
    either batch asks for logprobs; ``return_logprob=False`` keeps that possible. ``session_id``
    names the request's program (SGLang's own field; stock SGLang only records it).
    """
    payload = {
        "input_ids": input_ids,
        "sampling_params": greedy_sampling(max_new_tokens),
        "return_logprob": return_logprob,
        "stream": True,
    }
    if session_id is not None:
        payload["session_id"] = session_id
    sent_s, start = time.time(), time.perf_counter()
    ttft = None
    last = None
    # (seconds since the request, output tokens so far) per streamed chunk: inter-token gaps.
    arrivals: list[tuple[float, int]] = []
    with requests.post(f"{url}/generate", json=payload, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line or not line.startswith(b"data:"):
                continue
            body = line[len(b"data:") :].strip()
            if body == b"[DONE]":
                break
            now = time.perf_counter() - start
            if ttft is None:
                ttft = now
            last = json.loads(body)
            arrivals.append((now, len(last.get("output_ids", ()))))
    if last is None or "meta_info" not in last:
        raise RuntimeError(f"no result streamed back for a {len(input_ids)}-token request")
    latency = time.perf_counter() - start
    meta = last["meta_info"]
    stages = ttft_stages(sent_s, sent_s + (ttft if ttft is not None else latency), meta)
    return TurnResult(
        session=-1,
        turn=-1,
        input_ids=list(input_ids),
        output_ids=list(last["output_ids"]),
        output_logprobs=[lp[0] for lp in meta.get("output_token_logprobs") or ()],
        cached_tokens=int(meta["cached_tokens"]),
        ttft_s=ttft if ttft is not None else latency,
        latency_s=latency,
        meta={
            "prompt_tokens": meta["prompt_tokens"],
            "arrivals": arrivals,
            **({"ttft_stages": stages} if stages is not None else {}),
        },
    )


def run_multi_turn(url: str, workload: MultiTurnWorkload) -> list[TurnResult]:
    """Replay ``workload``; each next turn appends this server's own answer."""
    rng = random.Random(workload.seed)
    lo, hi = workload.vocab_low, workload.vocab_high
    histories = [
        [rng.randrange(lo, hi) for _ in range(workload.first_prompt_tokens)]
        for _ in range(workload.num_sessions)
    ]
    results = []
    for turn in range(workload.turns):
        for session, history in enumerate(histories):
            res = generate_streaming(url, history, workload.max_new_tokens)
            res.session, res.turn = session, turn
            results.append(res)
            history.extend(res.output_ids)
            history.extend(rng.randrange(lo, hi) for _ in range(workload.user_tokens_per_turn))
    return results


def run_concurrent_sessions(url: str, workload: MultiTurnWorkload) -> list[TurnResult]:
    """Every session in its own thread, turn after turn, without logprobs: one session's prefill
    (holes included) can share a forward with the others' decodes."""
    rng = random.Random(workload.seed)
    lo, hi = workload.vocab_low, workload.vocab_high
    firsts = [
        [rng.randrange(lo, hi) for _ in range(workload.first_prompt_tokens)]
        for _ in range(workload.num_sessions)
    ]

    def session(index: int) -> list[TurnResult]:
        history = list(firsts[index])
        user = random.Random(workload.seed * 1000 + index + 1)
        results = []
        for turn in range(workload.turns):
            res = generate_streaming(url, history, workload.max_new_tokens, return_logprob=False)
            res.session, res.turn = index, turn
            results.append(res)
            history.extend(res.output_ids)
            history.extend(user.randrange(lo, hi) for _ in range(workload.user_tokens_per_turn))
        return results

    # map() re-raises a session's failure here.
    with ThreadPoolExecutor(len(firsts)) as pool:
        return [res for per_session in pool.map(session, range(len(firsts))) for res in per_session]


def replay_inputs(
    url: str, reference: Sequence[TurnResult], max_new_tokens: int
) -> list[TurnResult]:
    """Send exactly the inputs of an earlier run, in the same order."""
    out = []
    for ref in reference:
        res = generate_streaming(url, ref.input_ids, max_new_tokens)
        res.session, res.turn = ref.session, ref.turn
        out.append(res)
    return out


@dataclass(frozen=True)
class LongMultiTurn:
    """Sessions that each read a long document, then ask short follow-ups after thinking.

    Every session runs in its own thread; its next turn appends this server's answer and a new
    question, so two servers see the same lengths and timing, if not the same answer tokens.
    """

    sessions: int = 8
    turns: int = 6
    doc_tokens: tuple[int, int] = (20000, 28000)
    question_tokens: tuple[int, int] = (64, 256)
    answer_tokens: int = 32
    think_s: tuple[float, float] = (2.0, 5.0)
    arrival_gap_s: float = 1.5
    vocab: tuple[int, int] = (10, 120000)
    seed: int = 0
    # Every request names its conversation with SGLang's ``session_id`` and the last turn is
    # followed by ``/close_session``, as a frontend program (``ProgramEndpoint``) does.
    name_sessions: bool = False

    def max_live_tokens(self) -> int:
        """KV of every session at its last turn, at most."""
        per_turn = self.question_tokens[1] + self.answer_tokens
        return self.sessions * (self.doc_tokens[1] + self.turns * per_turn)


@dataclass(frozen=True)
class LongSession:
    """One session of ``LongMultiTurn``: its document, then per turn the question that follows
    the answer and the think time before the next turn."""

    index: int
    arrival_s: float
    doc_ids: list[int]
    turns: list[tuple[list[int], float]]


def plan_long_multi_turn(workload: LongMultiTurn) -> list[LongSession]:
    """Everything of ``workload`` but the model's answers, drawn from its seed."""
    lo, hi = workload.vocab
    sessions = []
    for index in range(workload.sessions):
        rng = random.Random(workload.seed * 1000 + index)
        doc = [rng.randrange(lo, hi) for _ in range(rng.randint(*workload.doc_tokens))]
        turns = []
        for _ in range(workload.turns):
            length = rng.randint(*workload.question_tokens)
            question = [rng.randrange(lo, hi) for _ in range(length)]
            turns.append((question, rng.uniform(*workload.think_s)))
        sessions.append(LongSession(index, index * workload.arrival_gap_s, doc, turns))
    return sessions


def long_session_id(workload: LongMultiTurn, plan: LongSession) -> str | None:
    """The ``session_id`` the session's requests name (None unless ``name_sessions``)."""
    return f"long-{workload.seed}-{plan.index}" if workload.name_sessions else None


def close_program(url: str, program: str) -> None:
    """The program's last step is done: SGLang's ``/close_session`` for its ``session_id``."""
    resp = requests.post(f"{url}/close_session", json={"session_id": program}, timeout=60)
    resp.raise_for_status()


def run_long_multi_turn(url: str, workload: LongMultiTurn) -> list[TurnResult]:
    """Replay ``workload`` against ``url``; results in session, turn order."""

    def session(plan: LongSession) -> list[TurnResult]:
        history = list(plan.doc_ids)
        program = long_session_id(workload, plan)
        time.sleep(plan.arrival_s)
        results = []
        for turn, (question, think_s) in enumerate(plan.turns):
            res = generate_streaming(
                url, history, workload.answer_tokens, return_logprob=False, session_id=program
            )
            res.session, res.turn = plan.index, turn
            results.append(res)
            if turn + 1 == len(plan.turns) and program is not None:
                close_program(url, program)
            history += res.output_ids
            history += question
            time.sleep(think_s)
        return results

    with ThreadPoolExecutor(workload.sessions) as pool:
        return [r for per in pool.map(session, plan_long_multi_turn(workload)) for r in per]


class LongMultiTurnRounds:
    """``LongMultiTurn`` one turn at a time: every session's turn ``t`` is sent together, with no
    arrival gaps or think times, so two servers can take alternate rounds of the same workload
    (each round seconds long) and drift in the host's speed falls on both."""

    def __init__(self, workload: LongMultiTurn) -> None:
        self.workload = workload
        self.plans = plan_long_multi_turn(workload)
        self.histories = [list(plan.doc_ids) for plan in self.plans]

    def run_round(self, url: str, turn: int) -> list[TurnResult]:
        """Every session's request of ``turn`` at once; each history then gets its answer and
        next question."""

        def send(history: list[int]) -> TurnResult:
            return generate_streaming(
                url, history, self.workload.answer_tokens, return_logprob=False
            )

        with ThreadPoolExecutor(len(self.plans)) as pool:
            results = list(pool.map(send, self.histories))
        for plan, history, res in zip(self.plans, self.histories, results):
            res.session, res.turn = plan.index, turn
            history += res.output_ids
            history += plan.turns[turn][0]
        return results
