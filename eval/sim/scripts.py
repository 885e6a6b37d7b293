"""The suite's workloads as clients: what each sends, and when, given the answers it gets."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from eval.agent_workload import AgentPrograms, plan_sessions, program_id
from eval.mooncake_trace import TraceCut, load_trace
from eval.workloads import (
    LongMultiTurn,
    MultiTurnWorkload,
    long_session_id,
    plan_long_multi_turn,
)


@dataclass(frozen=True)
class Call:
    """One model call of a session, and what the client does after its answer."""

    max_new_tokens: int
    # Appended after the answer for the next call (a question, a tool result).
    then_ids: list[int]
    # Seconds from the answer to the next call; None after the last call.
    then_wait_s: float | None


@dataclass(frozen=True)
class Script:
    session: int
    arrival_s: float
    prompt_ids: list[int]
    calls: list[Call]
    # The SGLang ``session_id`` every call names, closed after the last call; None: neither.
    program: str | None = None


@dataclass(frozen=True)
class Send:
    """One request a client sends."""

    session: int
    call: int
    prompt_ids: list[int]
    max_new_tokens: int
    at_s: float
    program: str | None = None


class Client(Protocol):
    def start(self) -> list[Send]:
        """The requests sent before any answer."""
        ...

    def answered(self, send: Send, output_ids: list[int], now_s: float) -> list[Send]:
        """What the client sends after ``send`` got ``output_ids`` at ``now_s``."""
        ...


@dataclass
class SessionClient:
    """Sessions that each follow their script: a call, a wait, the next call."""

    scripts: list[Script]

    def __post_init__(self) -> None:
        self._by_session = {s.session: s for s in self.scripts}

    def start(self) -> list[Send]:
        return [self._send(s, 0, list(s.prompt_ids), s.arrival_s) for s in self.scripts]

    def answered(self, send: Send, output_ids: list[int], now_s: float) -> list[Send]:
        script = self._by_session[send.session]
        spec = script.calls[send.call]
        if spec.then_wait_s is None:
            return []
        prompt = [*send.prompt_ids, *output_ids, *spec.then_ids]
        return [self._send(script, send.call + 1, prompt, now_s + spec.then_wait_s)]

    @staticmethod
    def _send(script: Script, call: int, prompt: list[int], at_s: float) -> Send:
        return Send(
            script.session, call, prompt, script.calls[call].max_new_tokens, at_s, script.program
        )


@dataclass
class RoundRobinClient:
    """``eval.workloads.run_multi_turn``: one request at a time, turn after turn, each turn
    across the sessions in order, draw for draw."""

    workload: MultiTurnWorkload
    histories: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        w = self.workload
        self._rng = random.Random(w.seed)
        self.histories = [
            [self._rng.randrange(w.vocab_low, w.vocab_high) for _ in range(w.first_prompt_tokens)]
            for _ in range(w.num_sessions)
        ]

    def start(self) -> list[Send]:
        return [self._send(0, 0, 0.0)]

    def answered(self, send: Send, output_ids: list[int], now_s: float) -> list[Send]:
        w = self.workload
        user = [
            self._rng.randrange(w.vocab_low, w.vocab_high) for _ in range(w.user_tokens_per_turn)
        ]
        self.histories[send.session] += [*output_ids, *user]
        index = send.call * w.num_sessions + send.session + 1
        if index >= w.turns * w.num_sessions:
            return []
        return [self._send(index % w.num_sessions, index // w.num_sessions, now_s)]

    def _send(self, session: int, turn: int, at_s: float) -> Send:
        prompt = list(self.histories[session])
        return Send(session, turn, prompt, self.workload.max_new_tokens, at_s)


def long_multi_turn_scripts(workload: LongMultiTurn) -> list[Script]:
    """``eval.workloads.run_long_multi_turn``'s sessions, draw for draw."""
    return [
        Script(
            plan.index,
            plan.arrival_s,
            plan.doc_ids,
            [
                Call(workload.answer_tokens, question, think_s if i + 1 < len(plan.turns) else None)
                for i, (question, think_s) in enumerate(plan.turns)
            ],
            long_session_id(workload, plan),
        )
        for plan in plan_long_multi_turn(workload)
    ]


def agent_scripts(workload: AgentPrograms) -> list[Script]:
    """``eval.agent_workload.run_agent_programs``'s sessions, draw for draw."""
    return [
        Script(
            session.index,
            session.arrival_s,
            session.prompt_ids,
            [
                Call(workload.action_tokens, step.tool_result_ids, step.tool_delay_s)
                for step in session.steps
            ],
            program_id(workload, session) if workload.close_programs else None,
        )
        for session in plan_sessions(workload)
    ]


def mooncake_scripts(cut: TraceCut) -> list[Script]:
    """``eval.mooncake_trace.replay``'s requests, open loop: each its own one-call session.
    (The replay also caps requests in flight at 64, which the simulator does not.)"""
    return [
        Script(req.index, req.arrival_s, req.input_ids, [Call(req.output_tokens, [], None)])
        for req in load_trace(cut)
    ]
