"""The suite's workloads as session scripts: what a client sends, and when, given the answers."""

from __future__ import annotations

from dataclasses import dataclass

from eval.agent_workload import AgentPrograms, plan_sessions
from eval.mooncake_trace import TraceCut, load_trace
from eval.workloads import LongMultiTurn, plan_long_multi_turn


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
