"""The Mooncake conversation trace (``../shared/data``) as token-id requests, and its replay.

Each trace line names the 512-token prefix blocks of one request by hash id (equal ids: a
reusable prefix block). A hash id becomes a fixed pseudo-random block of token ids, the same for
the same id and seed, and the last block is cut to the request's ``input_length``, as the data's
README says. ``TraceCut`` says how the trace was cut to fit a run (time scale, sub-sampling,
length caps); every result records it. ``python -m eval.mooncake_trace --set NAME=VALUE ...
--out F.jsonl.gz`` writes the lines a cut takes, for a host that lacks the trace.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from eval.common import open_text
from eval.workloads import TurnResult, generate_streaming

BLOCK_TOKENS = 512
DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACE_NAME = "mooncake_conversation_trace.jsonl"


@dataclass(frozen=True)
class TraceCut:
    """Which requests of the trace a run sends, and when.

    Requests are taken in trace order from ``start``, every ``sample_every``-th, skipping those
    longer than ``max_input_tokens``, until ``max_requests``. ``conversation_every`` keeps every
    n-th conversation whole, so a sub-sampled run keeps its returns: every line opens with the
    shared block 0, so a conversation is the lines that share their second block (a one-block
    line is its own), numbered by first appearance. Arrival times are the trace's,
    shifted so the first taken request arrives at 0 and multiplied by ``time_scale`` (0.1: ten
    times as fast). Outputs are capped at ``max_output_tokens``. ``trace_path``: the trace file,
    where it is not the shared copy.
    """

    time_scale: float = 1.0
    start: int = 0
    sample_every: int = 1
    conversation_every: int = 1
    max_requests: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    vocab: tuple[int, int] = (10, 120000)
    seed: int = 0
    trace_path: str = ""

    def __post_init__(self) -> None:
        if self.time_scale <= 0 or min(self.sample_every, self.conversation_every) < 1:
            raise ValueError(f"need time_scale > 0, sample_every, conversation_every >= 1: {self}")
        if self.start < 0:
            raise ValueError(f"need start >= 0: {self}")
        if self.vocab[0] >= self.vocab[1]:
            raise ValueError(f"empty token id range {self.vocab}")


@dataclass(frozen=True)
class TraceRequest:
    """One request to send: its arrival (s after the first), prompt and output length."""

    index: int
    arrival_s: float
    input_ids: list[int]
    output_tokens: int
    hash_ids: tuple[int, ...]


def block_tokens(hash_id: int, vocab: tuple[int, int], seed: int) -> list[int]:
    """The 512 token ids of one hash block: a function of the id and the seed alone."""
    rng = random.Random(f"{seed}:{hash_id}")
    return [rng.randrange(*vocab) for _ in range(BLOCK_TOKENS)]


def trace_lines(path: Path) -> Iterator[dict]:
    """The trace's records; a ``.gz`` file is decompressed."""
    with open_text(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def taken_lines(cut: TraceCut, path: Path | None = None) -> Iterator[tuple[int, dict]]:
    """The lines ``cut`` takes from the trace at ``path`` (default: ``cut.trace_path``, else the
    shared copy), each with its index in the file."""
    path = path or Path(cut.trace_path or DEFAULT_TRACE / TRACE_NAME)
    conversations: dict[tuple[int, int], int] = {}
    taken = 0
    for index, line in enumerate(trace_lines(path)):
        if cut.max_requests is not None and taken >= cut.max_requests:
            return
        if index < cut.start or (index - cut.start) % cut.sample_every:
            continue
        hash_ids = line["hash_ids"]
        key = (1, int(hash_ids[1])) if len(hash_ids) > 1 else (0, index)
        if conversations.setdefault(key, len(conversations)) % cut.conversation_every:
            continue
        length = int(line["input_length"])
        if cut.max_input_tokens is not None and length > cut.max_input_tokens:
            continue
        if len(hash_ids) * BLOCK_TOKENS < length:
            raise ValueError(f"trace line {index}: {len(hash_ids)} blocks < {length} tokens")
        taken += 1
        yield index, line


def write_cut(cut: TraceCut, dest: Path, path: Path | None = None) -> int:
    """Write the trace lines ``cut`` takes, unchanged, to ``dest`` (gzipped for ``.gz``): a file
    small enough to carry to a host without the trace. Replayed with ``trace_path=dest``, the
    same ``time_scale``, caps, ``vocab`` and ``seed`` and no sampling, it sends the same
    requests. Returns how many lines it wrote."""
    written = 0
    with open_text(dest, "wt") as out:
        for _, line in taken_lines(cut, path):
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            written += 1
    return written


def load_trace(cut: TraceCut, path: Path | None = None) -> list[TraceRequest]:
    """The requests ``cut`` takes from the trace at ``path`` (default as ``taken_lines``)."""
    blocks: dict[int, list[int]] = {}
    taken: list[TraceRequest] = []
    first_ms: float | None = None
    for index, line in taken_lines(cut, path):
        hash_ids = tuple(int(h) for h in line["hash_ids"])
        ids: list[int] = []
        for h in hash_ids:
            if h not in blocks:
                blocks[h] = block_tokens(h, cut.vocab, cut.seed)
            ids += blocks[h]
        first_ms = line["timestamp"] if first_ms is None else first_ms
        output = int(line["output_length"])
        if cut.max_output_tokens is not None:
            output = min(output, cut.max_output_tokens)
        taken.append(
            TraceRequest(
                index=index,
                arrival_s=(line["timestamp"] - first_ms) / 1e3 * cut.time_scale,
                input_ids=ids[: int(line["input_length"])],
                output_tokens=max(1, output),
                hash_ids=hash_ids,
            )
        )
    return taken


def replay(url: str, requests: Sequence[TraceRequest], max_in_flight: int = 64) -> list[TurnResult]:
    """Send each request at its arrival time (open loop), at most ``max_in_flight`` at once;
    results in trace order, each ``meta`` with the request's trace index and its send delay."""
    start = time.perf_counter()
    results: list[TurnResult | None] = [None] * len(requests)
    errors: list[Exception] = []
    lock = threading.Lock()

    def send(slot: int, req: TraceRequest) -> None:
        delay = time.perf_counter() - start - req.arrival_s
        try:
            res = generate_streaming(url, req.input_ids, req.output_tokens, return_logprob=False)
        except Exception as exc:  # re-raised below, once the others have finished
            with lock:
                errors.append(exc)
            return
        res.session, res.turn = req.index, 0
        res.meta["trace_index"], res.meta["send_delay_s"] = req.index, max(0.0, delay)
        results[slot] = res

    with ThreadPoolExecutor(max_in_flight) as pool:
        for slot, req in enumerate(requests):
            wait = req.arrival_s - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
            pool.submit(send, slot, req)
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def main() -> None:
    from eval.bench import parse_overrides  # eval.bench imports this module

    parser = argparse.ArgumentParser(description="Write the trace lines a cut takes.")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, required=True, help="a .jsonl or .jsonl.gz file")
    args = parser.parse_args()
    cut = TraceCut(**parse_overrides(TraceCut, args.set))
    print(f"{write_cut(cut, args.out)} lines of {cut} -> {args.out}")


if __name__ == "__main__":
    main()
