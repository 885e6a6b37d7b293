"""One simulated SGLang 0.5.16 server: its scheduler's step loop over a real prefix cache.

Per iteration, as ``Scheduler.event_loop_overlap`` with mixed chunks off: the arrivals the
scheduler had received when the previous step started join the waiting queue (it forms a batch
while the one before runs on the GPU; with ``overlap_schedule`` off, every arrival so far);
SGLang's ``PrefillAdder`` (through AsymCache's admission hooks, which pass through for a stock
cache) builds a prefill batch from the chunked request and then the queue in the order SGLang's
``SchedulePolicy`` gives it (FCFS, or longest prefix match first with lpm); if it
built one, that batch runs, else the running batch decodes one token, retracting requests as
``ScheduleBatch.retract_decode`` does when the pool cannot hold the next tokens. Slots come from
SGLang's own allocator through ``alloc_token_slots``, which evicts from the cache; requests enter
and leave the cache through ``cache_unfinished_req`` and ``cache_finished_req``. Time advances
by ``StepModel.step_s`` of each forward's features.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder, SchedulePolicy
from sglang.srt.managers.scheduler_components.new_token_ratio_tracker import (
    NewTokenRatioTracker,
)
from sglang.srt.mem_cache.allocation import alloc_token_slots
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.chunk_cache import ChunkCache
from sglang.srt.mem_cache.common import evict_from_tree_cache
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.plugins import hook_registry
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

from asymcache_sglang import handoff
from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.core.latency_fit import BatchFeatures
from asymcache_sglang.core.programs import ReturnGaps
from asymcache_sglang.latency_runtime import LatencyRuntime
from asymcache_sglang.patches import (
    evict_from_tree_cache as evict_hook,
)
from asymcache_sglang.patches import prefill_adder_add_chunked_req, prefill_adder_add_one_req
from asymcache_sglang.patches.http_server_wait_and_warmup import calibration_extends
from asymcache_sglang.patches.schedule_batch_prepare_for_extend import fill_holes
from asymcache_sglang.radix_cache import HoleAwareRadixCache
from eval.common import STOCK_POLICIES, split_configuration
from eval.sim.learned import (
    ClassHitDensityRadixCache,
    HitDensityRadixCache,
    LearnedReturnRadixCache,
)
from eval.sim.oracle import NextUseHoleAwareRadixCache, OracleRadixCache
from eval.sim.scripts import Client, Script, Send, SessionClient
from eval.sim.step_model import StepModel


def unhooked(function: Callable[..., Any]) -> Callable[..., Any]:
    """SGLang's own ``function``, under any wrappers SGLang's hook registry put around it (a
    process that loaded the plugin has them; the engine calls AsymCache's hooks itself). Looked
    up at each call: the registry also rebinds module globals that name the original."""
    while function.__code__.co_filename == hook_registry.__file__:
        function = function.__wrapped__
    return function


CACHES = (*STOCK_POLICIES, "no-radix", "asymcache", "asymcache-no-holes", "asymcache-no-holds")
# Offline, simulation only: Belady's MIN with the position-aware cost (``eval.sim.oracle``).
ORACLE = "belady"
# Online, simulation only: the same rule with each session's return estimated from the return
# gaps seen so far (``asymcache_sglang.core.programs.ReturnGaps``), a sketch of a learned reuse
# model.
RETURN_TIME = "return-time"
# Online, simulation only: issue 12's learned hit density by idle age (``eval.sim.learned``).
HIT_DENSITY = "hit-density"
# Online, simulation only: return-time plus what issue 12's soft holds tell the server, that a
# program's step was its last: its KV goes first at once.
HOLDS = "holds"
# The ones SGLang's tree ranks by each session's next use (``eval.sim.oracle``).
NEXT_USE_RANKED = (ORACLE, RETURN_TIME, HOLDS)
# Online, simulation only: AsymCache's hole-aware tree ranked as ``holds`` ranks SGLang's (issue
# 12's reuse model in the tree); and offline, by each session's true next use (the oracle's rule
# with holes). Every request names its session, as SGLang frontend programs would.
ASYMCACHE_HOLDS = "asymcache-holds"
ASYMCACHE_ORACLE = "asymcache-belady"
HOLE_AWARE_NEXT_USE = (ASYMCACHE_HOLDS, ASYMCACHE_ORACLE)
# Online, simulation only: ``asymcache-holds`` with the programs and returns AsymCache learns
# from requests alone, ranked by cost over wait afresh at each call
# (``eval.sim.learned.LearnedReturnRadixCache``); ``asymcache`` keeps the order a heap can.
ASYMCACHE_LEARNED = "asymcache-learned"
# Online, simulation only: AsymCache with its free nodes ranked by cost times hit density per
# reuse class (``eval.sim.learned.ClassHitDensityRadixCache``).
ASYMCACHE_LHD = "asymcache-lhd"
SIM_ONLY = (*NEXT_USE_RANKED, HIT_DENSITY, *HOLE_AWARE_NEXT_USE, ASYMCACHE_LEARNED, ASYMCACHE_LHD)
# SGLang's --schedule-policy values the simulator runs (its own SchedulePolicy orders the queue);
# a configuration ``<cache>+lpm`` is that cache under longest-prefix-match admission.
SCHEDULE_POLICIES = ("fcfs", "lpm")


def is_configuration(name: str) -> bool:
    """Whether the simulator runs configuration ``name``."""
    cache, policy = split_configuration(name)
    return cache in (*CACHES, *SIM_ONLY) and policy in SCHEDULE_POLICIES


@dataclass(frozen=True)
class EngineConfig:
    """The server flags the simulation follows (SGLang's defaults on an H100/H200)."""

    pool_tokens: int
    cache: str = "lru"
    # SGLang's --schedule-policy: fcfs (its default) or lpm.
    schedule_policy: str = "fcfs"
    chunk_tokens: int = 8192
    max_prefill_tokens: int = 16384
    max_running_requests: int = 256
    max_context_tokens: int = 131072
    vocab: tuple[int, int] = (10, 120000)
    seed: int = 0
    # SGLang's default; --disable-overlap-schedule turns it off.
    overlap_schedule: bool = True
    # Outside the scheduler (measured by eval.bench's ttft_stages): a request's trip from the
    # client to the scheduler, and a token's back.
    to_scheduler_s: float = 0.0
    to_client_s: float = 0.0

    def __post_init__(self) -> None:
        if self.cache not in (*CACHES, *SIM_ONLY):
            raise ValueError(f"cache must be one of {(*CACHES, *SIM_ONLY)}, got {self.cache!r}")
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(
                f"schedule_policy must be one of {SCHEDULE_POLICIES}, got {self.schedule_policy!r}"
            )
        if self.pool_tokens < 1 or self.chunk_tokens < 1:
            raise ValueError(f"need pool_tokens and chunk_tokens >= 1: {self}")


@dataclass
class CallRecord:
    """One model call as a client saw it (seconds from the simulation's start)."""

    session: int
    call: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int = 0
    # When it reached the scheduler, when the scheduler formed the first prefill batch it is in,
    # and when the scheduler had its first token (first_token_s: when the client had it).
    reached_s: float | None = None
    admitted_s: float | None = None
    prefilled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    # Prompt positions this call's prefills computed (holes and tails, and again after a retract).
    computed_prompt_tokens: int = 0
    # When each output token came out.
    token_times_s: list[float] = field(default_factory=list)

    @property
    def ttft_s(self) -> float:
        assert self.first_token_s is not None, "call has no first token"
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.finish_s is None or self.first_token_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


@dataclass
class _Live:
    """What a request was sent as, and its record."""

    send: Send
    record: CallRecord
    outputs: random.Random


@dataclass
class SimResult:
    records: list[CallRecord]
    steps: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def default_server_args() -> ServerArgs:
    """SGLang's ServerArgs at their declared defaults, without the model checks of __post_init__
    (PrefillAdder reads a few of them through the global server args)."""
    args = ServerArgs.__new__(ServerArgs)
    for f in dataclasses.fields(ServerArgs):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        setattr(args, f.name, value)
    return args


class Engine:
    """The scheduler of one server with ``config``; ``run`` replays a client on it."""

    def __init__(self, config: EngineConfig, step: StepModel) -> None:
        self.config = config
        self.step = step
        self.server_args = default_server_args()
        set_global_server_args_for_scheduler(self.server_args)
        self.now = 0.0
        self.allocator = TokenToKVPoolAllocator(
            config.pool_tokens, torch.float16, "cpu", None, False
        )
        self.req_pool = ReqToTokenPool(
            config.max_running_requests + 1, config.max_context_tokens, "cpu", False
        )
        self.cache = self._make_cache()
        # SGLang's own: with lpm it matches every waiting request and sorts the queue each pass.
        self.policy = SchedulePolicy(config.schedule_policy, self.cache, False, False, False)
        self.ratio = NewTokenRatioTracker.from_server_args(self.server_args)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Req | None = None
        self.batch_full = False
        self.live: dict[int, _Live] = {}
        self.records: list[CallRecord] = []
        self.arrivals: list[tuple[float, int, Req]] = []
        # Per session: when its next call arrives (inf after its last).
        self.next_arrival: dict[int, float] = {}
        # What an online policy can know: when each session was last answered, which have a
        # request in, and the return gaps seen.
        self.last_answer: dict[int, float] = {}
        self.active: set[int] = set()
        self.returns = ReturnGaps()
        # The session each program id names.
        self.program_sessions: dict[str, int] = {}
        self.steps = {"prefill": 0, "decode": 0, "retracted": 0}
        self._rids = 0

    # ----- the cache -----

    def _make_cache(self) -> BasePrefixCache:
        kind = self.config.cache
        params = CacheInitParams(
            disable=False,
            req_to_token_pool=self.req_pool,
            token_to_kv_pool_allocator=self.allocator,
            page_size=1,
            eviction_policy=kind if kind in STOCK_POLICIES else "lru",
        )
        if kind == "no-radix":
            return ChunkCache(params)  # what --disable-radix-cache builds
        if kind in (*NEXT_USE_RANKED, HIT_DENSITY):
            latency = LatencyRuntime(
                AsymCacheConfig(recompute_chunk_tokens=self.config.chunk_tokens)
            )
            self._calibrate(latency)
            if kind == HIT_DENSITY:
                return HitDensityRadixCache(params, latency.cost, self.clock)
            next_use = {
                ORACLE: self.next_use_in_s,
                RETURN_TIME: self.estimated_next_use_in_s,
                HOLDS: self.held_next_use_in_s,
            }[kind]
            return OracleRadixCache(params, latency.cost, next_use)
        if not kind.startswith("asymcache"):
            return RadixCache(params)
        asym = AsymCacheConfig(
            max_holes=0 if kind == "asymcache-no-holes" else AsymCacheConfig.max_holes,
            # The next-use rankings name programs by session: no tracker of their own.
            holds="off" if kind in ("asymcache-no-holds", *HOLE_AWARE_NEXT_USE) else "on",
            recompute_chunk_tokens=self.config.chunk_tokens,
        )
        latency = LatencyRuntime(asym)
        if kind == ASYMCACHE_LEARNED:
            cache = LearnedReturnRadixCache(params, asym, latency, self.clock)
        elif kind == ASYMCACHE_LHD:
            cache = ClassHitDensityRadixCache(params, asym, latency, clock=self.clock)
        elif kind in HOLE_AWARE_NEXT_USE:
            cache = NextUseHoleAwareRadixCache(params, asym, latency, clock=self.clock)
            next_use = self.next_use_in_s if kind == ASYMCACHE_ORACLE else self.held_next_use_in_s
            cache.tree.next_use_in_s = lambda program: next_use(self.program_sessions[program])
        else:
            cache = HoleAwareRadixCache(params, asym, latency, clock=self.clock)
        self._calibrate(cache.latency)
        return cache

    def clock(self) -> float:
        return self.now

    def next_use_in_s(self, session: int) -> float:
        return max(0.0, self.next_arrival[session] - self.now)

    def estimated_next_use_in_s(self, session: int) -> float:
        if session in self.active or session not in self.last_answer:
            return 0.0
        return self.returns.expected_remaining_s(self.now - self.last_answer[session])

    def held_next_use_in_s(self, session: int) -> float:
        """``estimated_next_use_in_s``, but never for a session whose last step was answered
        (a client that names its last step says so when it sends it)."""
        if session not in self.active and self.next_arrival.get(session) == math.inf:
            return math.inf
        return self.estimated_next_use_in_s(session)

    def _calibrate(self, latency: LatencyRuntime) -> None:
        """What the server's start-up profile feeds the latency model: its calibration extends,
        timed by the step model."""
        base, extends = calibration_extends(self.config.pool_tokens, self.config.max_context_tokens)
        for start in range(0, base, self.config.chunk_tokens):
            end = min(base, start + self.config.chunk_tokens)
            features = BatchFeatures.from_segments([(start, end)], [])
            latency.observe_forward(features, self.step.forward_s(features))
        for prefix, new in extends:
            features = BatchFeatures.from_segments([(prefix, prefix + new)], [])
            latency.observe_forward(features, self.step.forward_s(features))

    @property
    def is_asymcache(self) -> bool:
        return isinstance(self.cache, HoleAwareRadixCache)

    # ----- requests -----

    def _submit(self, send: Send) -> None:
        if len(send.prompt_ids) >= self.config.pool_tokens:
            # SGLang refuses it too: max_req_input_len is below max_total_num_tokens.
            raise ValueError(
                f"session {send.session} call {send.call}: a {len(send.prompt_ids)}-token prompt "
                f"does not fit a pool of {self.config.pool_tokens} tokens"
            )
        params = SamplingParams(max_new_tokens=send.max_new_tokens, ignore_eos=True)
        params.normalize(None)
        rid = f"s{send.session}c{send.call}r{self._rids}"
        program = send.program
        if program is None and self.config.cache in HOLE_AWARE_NEXT_USE:
            program = f"session-{send.session}"
        if program is not None:
            self.program_sessions[program] = send.session
        req = Req(rid, "", array("q", send.prompt_ids), params, session_id=program)
        self._rids += 1
        outputs = random.Random(hash((self.config.seed, send.session, send.call)))
        record = CallRecord(send.session, send.call, send.at_s, len(send.prompt_ids))
        self.records.append(record)
        self.next_arrival[send.session] = send.at_s
        self.live[id(req)] = _Live(send, record, outputs)
        heapq.heappush(self.arrivals, (send.at_s + self.config.to_scheduler_s, self._rids, req))

    def _arrive(self, req: Req, at_s: float) -> None:
        self.live[id(req)].record.reached_s = at_s
        session = self.live[id(req)].send.session
        if session in self.last_answer and session not in self.active:
            self.returns.observe(at_s - self.last_answer[session])
        self.active.add(session)
        self.waiting.append(req)

    def _next_token(self, req: Req) -> int:
        return self.live[id(req)].outputs.randrange(*self.config.vocab)

    # ----- the loop -----

    def run(self, client: Client, on_step: Callable[[Engine], None] | None = None) -> SimResult:
        """Every request the client sends, to its last; one record per request. ``on_step``
        sees the engine after every iteration."""
        self.client = client
        for send in client.start():
            self._submit(send)
        # What the scheduler had received when it formed the batch about to run.
        self.decided_s = self.now
        while True:
            while self.arrivals and self.arrivals[0][0] <= self.decided_s:
                at_s, _, req = heapq.heappop(self.arrivals)
                self._arrive(req, at_s)
            started_s, ran_step = self.now, True
            batch = self._prefill_batch()
            if batch:
                self._run_prefill(batch)
            elif self.running:
                self._run_decode()
            elif self.arrivals:
                ran_step = False
                # Idle: the next arrival wakes it (or those that came during the last step).
                self.now = max(self.now, self.arrivals[0][0])
            elif self.waiting:
                raise RuntimeError(f"{len(self.waiting)} requests wait with nothing running")
            else:
                break
            # SGLang's overlap scheduler forms the next batch while this one runs on the GPU,
            # from what it had received when this one started.
            overlap = ran_step and self.config.overlap_schedule
            self.decided_s = started_s if overlap else self.now
            if on_step is not None:
                on_step(self)
        counters = self.cache.stats_snapshot() if self.is_asymcache else {}
        records = sorted(self.records, key=lambda r: (r.session, r.call))
        return SimResult(records, dict(self.steps), counters)

    def _prefill_batch(self) -> list[Req]:
        """``Scheduler._get_new_batch_prefill_raw`` without LoRA, grammars or HiCache."""
        if (self.batch_full or not self.waiting) and self.chunked is None:
            return []
        self.policy.calc_priority(self.waiting)
        adder = PrefillAdder(
            1,
            self.cache,
            self.allocator,
            SimpleNamespace(reqs=self.running),
            self.ratio.current,
            self.config.max_prefill_tokens,
            self.config.chunk_tokens,
            max_running_requests=self.config.max_running_requests,
        )
        if self.chunked is not None:
            self.chunked.init_next_round_input()
            self.chunked = prefill_adder_add_chunked_req.hook(
                unhooked(PrefillAdder.add_chunked_req), adder, self.chunked
            )
        add_one_req = unhooked(PrefillAdder.add_one_req)
        for req in self.waiting:
            if len(adder.can_run_list) + len(self.running) >= self.config.max_running_requests:
                self.batch_full = True
                break
            req.init_next_round_input(self.cache)
            result = prefill_adder_add_one_req.hook(
                add_one_req,
                adder,
                req,
                has_chunked_req=self.chunked is not None,
                truncation_align_size=None,
            )
            if result != AddReqResult.CONTINUE:
                self.batch_full = result == AddReqResult.NO_TOKEN
                break
        admitted = set(map(id, adder.can_run_list))
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        if adder.new_chunked_req is not None:
            assert self.chunked is None, "two chunked requests"
            self.chunked = adder.new_chunked_req
        return adder.can_run_list

    def _prepare_extend(self, batch: list[Req]) -> list[tuple[int, int]]:
        """What ``ScheduleBatch.prepare_for_extend`` (and AsymCache's hook on it) does to memory:
        hole and tail slots, the requests' rows, the tree-owned ranges; the forward's segments."""
        planned = []
        for req in batch:
            plan = handoff.request_plan(req).take_admitted() if self.is_asymcache else None
            if plan is not None:
                planned.append((req, plan))
        if planned:
            self._evict_for(sum(plan.recompute_tokens for _, plan in planned))
            fill_holes(self.cache, planned)
        plans = {id(req): plan for req, plan in planned}
        tail_tokens = sum(req.extend_range.end - len(req.prefix_indices) for req in batch)
        self._evict_for(tail_tokens)  # then alloc_token_slots finds the room
        tail_slots = alloc_token_slots(self.cache, tail_tokens)
        segments, offset = [], 0
        for req in batch:
            if req.req_pool_idx is None:
                self.req_pool.alloc([req])
            prefix, end = len(req.prefix_indices), req.extend_range.end
            self.req_pool.write((req.req_pool_idx, slice(0, prefix)), req.prefix_indices)
            self.req_pool.write(
                (req.req_pool_idx, slice(prefix, end)), tail_slots[offset : offset + end - prefix]
            )
            offset += end - prefix
            plan = plans.get(id(req))
            own = [(prefix, end)] if plan is None else [*plan.recompute, (prefix, end)]
            if plan is not None:
                req.cache_protected_len = plan.retained_tokens
                handoff.request_plan(req).retained = plan.retained
            prompt = len(req.origin_input_ids)
            record = self.live[id(req)].record
            if record.admitted_s is None:
                record.admitted_s = self.decided_s
            record.computed_prompt_tokens += sum(max(0, min(e, prompt) - s) for s, e in own)
            segments += own
            req.already_computed = req.kv_committed_len = end
        return segments

    def _run_prefill(self, batch: list[Req]) -> None:
        features = BatchFeatures.from_segments(self._prepare_extend(batch), [])
        self._advance(features)
        self.steps["prefill"] += 1
        for req in batch:
            if req.extend_range.end < len(req.full_untruncated_fill_ids):
                self.cache.cache_unfinished_req(req, chunked=True)
                self._tag(req)
                continue
            record = self.live[id(req)].record
            self._emit(req)
            if record.first_token_s is None:
                record.prefilled_s = self.now
                record.first_token_s = self.now + self.config.to_client_s
            if not self._maybe_finish(req):
                self.cache.cache_unfinished_req(req)
                self._tag(req)
                self.running.append(req)

    def _run_decode(self) -> None:
        self._retract_until_it_fits()
        batch = self.running
        self._evict_for(len(batch))
        slots = alloc_token_slots(self.cache, len(batch))
        rows = torch.tensor([r.req_pool_idx for r in batch])
        positions = torch.tensor([r.kv_committed_len for r in batch])
        self.req_pool.write((rows, positions), slots.to(self.req_pool.req_to_token.dtype))
        features = BatchFeatures.from_segments([], [r.kv_committed_len + 1 for r in batch])
        self._advance(features)
        self.steps["decode"] += 1
        self.ratio.decay_step()
        still = []
        for req in batch:
            req.kv_committed_len += 1
            self._emit(req)
            if not self._maybe_finish(req):
                still.append(req)
        self.running = still

    def _evict_for(self, num_tokens: int) -> None:
        """SGLang's ``evict_from_tree_cache``, under AsymCache's hook as the server runs it."""
        evict_hook.hook(unhooked(evict_from_tree_cache), self.cache, num_tokens)

    def _retract_until_it_fits(self) -> None:
        """``ScheduleBatch.retract_decode``: its keep order, retracting from the end."""
        need = len(self.running)
        self._evict_for(need)
        if self.allocator.available_size() >= need:
            return
        order = ScheduleBatch._get_decode_retraction_order(
            self.running, self.server_args, allow_policy_sort=True
        )
        keep = [self.running[i] for i in order]
        while len(keep) > 1:
            req = keep.pop()
            self._release(req, insert=False)
            req.reset_for_retract()
            self.waiting.insert(0, req)
            self.steps["retracted"] += 1
            self._evict_for(len(keep))
            if self.allocator.available_size() >= len(keep):
                break
        self.running = [r for r in self.running if any(r is k for k in keep)]
        self.ratio.current = NewTokenRatioTracker.estimate_new_token_ratio_after_retract(
            self.running
        )
        self.batch_full = False

    def _advance(self, features: BatchFeatures) -> None:
        self.now += self.step.step_s(features)
        if self.is_asymcache:
            # The server's timer sees the forward alone.
            self.cache.latency.observe_forward(features, self.step.forward_s(features))

    def _tag(self, req: Req) -> None:
        """The oracle's record of which session uses the request's cached path."""
        if isinstance(self.cache, OracleRadixCache):
            tokens = (req.origin_input_ids + req.output_ids)[: req.kv_committed_len]
            self.cache.tag_path(tokens, self.live[id(req)].send.session)

    def _emit(self, req: Req) -> None:
        req.output_ids.append(self._next_token(req))
        record = self.live[id(req)].record
        record.output_tokens = len(req.output_ids)
        record.token_times_s.append(self.now + self.config.to_client_s)

    def _maybe_finish(self, req: Req) -> bool:
        """Finish ``req`` if it has all its tokens; its session's next call is scheduled."""
        if len(req.output_ids) < req.sampling_params.max_new_tokens:
            return False
        self._release(req, insert=True)
        self.batch_full = False
        live = self.live[id(req)]
        live.record.finish_s = self.now + self.config.to_client_s
        self.last_answer[live.send.session] = self.now
        self.active.discard(live.send.session)
        sends = self.client.answered(live.send, list(req.output_ids), live.record.finish_s)
        if not any(send.session == live.send.session for send in sends):
            self.next_arrival[live.send.session] = math.inf
            # The client's ``/close_session``: only AsymCache's hook changes the tree for it.
            if live.send.program is not None and self.is_asymcache:
                self.cache.release_radix_session(live.send.program)
        for send in sends:
            self._submit(send)
        return True

    def _release(self, req: Req, insert: bool) -> None:
        """``release_kv_cache``: the request's KV to the cache (or freed), its row back."""
        self.cache.cache_finished_req(req, insert, kv_len_to_handle=req.kv_committed_len)
        if insert:
            self._tag(req)
        self.req_pool.free(req)


def simulate(workload: list[Script] | Client, config: EngineConfig, step: StepModel) -> SimResult:
    """``workload``'s requests (session scripts, or any client) on a server with ``config``."""
    client = SessionClient(workload) if isinstance(workload, list) else workload
    return Engine(config, step).run(client)


def held_slots(engine: Engine) -> int:
    """Slots that requests hold outside the cache: what they computed since it last took theirs."""
    rows = [*engine.running, *([engine.chunked] if engine.chunked is not None else [])]
    if engine.cache.is_chunk_cache():
        return sum(req.kv_committed_len for req in rows)
    return sum(req.kv_committed_len - req.cache_protected_len for req in rows)


def cached_slots(engine: Engine) -> int:
    return engine.cache.evictable_size() + engine.cache.protected_size()
