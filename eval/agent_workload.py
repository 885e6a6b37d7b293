"""Agent programs: sessions that call the model, wait on a tool, and call it again.

Sessions arrive as a Poisson process. Each starts from a system prompt and tool list shared by
all sessions, adds its own task, then runs a fixed number of steps: the model writes an action,
a tool runs for a while (lognormal delay) and its result is appended, and the next step sends the
whole history again. A session's job completion time runs from its arrival to the end of its
last step. With ``close_programs`` (the default) every call names its program with SGLang's
``session_id``, and the program's last step is followed by ``/close_session``, as an agent
framework that knows its own programs can do; stock SGLang records the id and logs the close of
a session it never opened. Everything but the model's answers is drawn from the seed, so two
servers get the same programs, tool results and delays.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from eval.common import seconds_fields
from eval.workloads import TurnResult, close_program, generate_streaming


@dataclass(frozen=True)
class AgentPrograms:
    sessions: int = 16
    arrival_rate_per_s: float = 0.5
    system_prompt_tokens: int = 2048
    task_tokens: tuple[int, int] = (500, 2000)
    steps: tuple[int, int] = (3, 8)
    action_tokens: int = 64
    tool_result_tokens: tuple[int, int] = (200, 3000)
    # Lognormal tool delay: its median, and sigma of its log.
    tool_delay_median_s: float = 2.0
    tool_delay_sigma: float = 0.8
    # Sigma of the log of each program's own factor on that median (0: every program's tools
    # alike): fast tools for some programs, slow ones (or a person) for others.
    tool_speed_sigma: float = 0.0
    vocab: tuple[int, int] = (10, 120000)
    seed: int = 0
    close_programs: bool = True

    def __post_init__(self) -> None:
        if self.sessions < 1 or self.arrival_rate_per_s <= 0 or self.steps[0] < 1:
            raise ValueError(f"need sessions >= 1, arrival rate > 0, >= 1 step: {self}")
        if self.tool_delay_median_s <= 0 or min(self.tool_delay_sigma, self.tool_speed_sigma) < 0:
            raise ValueError(f"need a tool delay median > 0 and sigmas >= 0: {self}")


@dataclass(frozen=True)
class AgentStep:
    """What follows one model call: the tool's result and how long the tool took (nothing and
    None after the last call)."""

    tool_result_ids: list[int]
    tool_delay_s: float | None


@dataclass(frozen=True)
class AgentSession:
    index: int
    arrival_s: float
    prompt_ids: list[int]
    steps: list[AgentStep]


def plan_sessions(workload: AgentPrograms) -> list[AgentSession]:
    """Every session's arrival, first prompt (system prompt + task), tool results and delays."""
    rng = random.Random(workload.seed)
    lo, hi = workload.vocab

    def ids(n: int) -> list[int]:
        return [rng.randrange(lo, hi) for _ in range(n)]

    system = ids(workload.system_prompt_tokens)
    sessions, arrival = [], 0.0
    for index in range(workload.sessions):
        if index:
            arrival += rng.expovariate(workload.arrival_rate_per_s)
        task = ids(rng.randint(*workload.task_tokens))
        n_steps = rng.randint(*workload.steps)
        # Drawn only when asked for, so the default workload's draws stay as they were.
        speed = rng.gauss(0.0, workload.tool_speed_sigma) if workload.tool_speed_sigma else 0.0
        median_s = workload.tool_delay_median_s * math.exp(speed)
        steps = [
            AgentStep(
                ids(rng.randint(*workload.tool_result_tokens)),
                median_s * math.exp(rng.gauss(0.0, workload.tool_delay_sigma)),
            )
            for _ in range(n_steps - 1)
        ]
        steps.append(AgentStep([], None))  # the last call ends the job
        sessions.append(AgentSession(index, arrival, system + task, steps))
    return sessions


@dataclass
class AgentJob:
    """One session's model calls and its job completion time."""

    session: int
    calls: list[TurnResult]
    completion_s: float


def program_id(workload: AgentPrograms, session: AgentSession) -> str:
    return f"agents-{workload.seed}-{session.index}"


def run_agent_programs(url: str, workload: AgentPrograms) -> list[AgentJob]:
    """Every session in its own thread; results in session order."""
    start = time.perf_counter()

    def run(session: AgentSession) -> AgentJob:
        time.sleep(max(0.0, session.arrival_s - (time.perf_counter() - start)))
        began = time.perf_counter()
        history, calls = list(session.prompt_ids), []
        program = program_id(workload, session) if workload.close_programs else None
        for turn, step in enumerate(session.steps):
            res = generate_streaming(
                url, history, workload.action_tokens, return_logprob=False, session_id=program
            )
            res.session, res.turn = session.index, turn
            calls.append(res)
            if step.tool_delay_s is None:
                if program is not None:
                    close_program(url, program)
                break
            time.sleep(step.tool_delay_s)
            history += res.output_ids + step.tool_result_ids
        return AgentJob(session.index, calls, time.perf_counter() - began)

    sessions = plan_sessions(workload)
    with ThreadPoolExecutor(len(sessions)) as pool:
        return list(pool.map(run, sessions))


def summarize_jobs(jobs: list[AgentJob]) -> dict[str, float]:
    """Job completion time mean and percentiles, and the number of jobs."""
    return {"jobs": len(jobs), **seconds_fields("jct", (job.completion_s for job in jobs))}
