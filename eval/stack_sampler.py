"""A sampling profiler for SGLang's processes on a host where py-spy cannot be installed.

The GPU host has no package index and the carried wheelhouse leaves no room for py-spy's 8 MB
binary, so this samples from inside each process instead: a daemon thread reads the main thread's
Python stack every ``interval`` seconds (``sys._current_frames``) and counts folded stacks, which
are written, py-spy ``--format raw`` style, to ``<dir>/<process title>-<pid>.folded`` every few
seconds. It samples only while ``<dir>/on`` exists, so a harness profiles just its load phase.

Enable it in every Python process of a server with ``eval/stack_sampler_site`` first on
``PYTHONPATH`` and ``ASYMCACHE_STACK_SAMPLES=<dir>``. The GIL switch interval is lowered to a
quarter of the sampling interval, so a thread holding the GIL in pure Python still yields to the
sampler about on time (with the default 5 ms, samples would bunch at GIL releases).

``python -m eval.stack_sampler DIR`` prints, per scheduler process, the functions with the most
inclusive and self samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

SAMPLES_ENV = "ASYMCACHE_STACK_SAMPLES"
INTERVAL_ENV = "ASYMCACHE_STACK_INTERVAL_S"
WRITE_EVERY_S = 2.0


def _frame_label(code: object) -> str:
    filename = getattr(code, "co_filename", "?")
    short = "/".join(Path(filename).parts[-2:])
    return f"{getattr(code, 'co_qualname', getattr(code, 'co_name', '?'))} ({short})"


def _folded(frame: object) -> str:
    labels = []
    while frame is not None:
        labels.append(_frame_label(frame.f_code))
        frame = frame.f_back
    return ";".join(reversed(labels))


def _process_title() -> str:
    try:
        import setproctitle

        title = setproctitle.getproctitle()
    except ImportError:
        title = Path(sys.argv[0]).name if sys.argv else "python"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in title)[:60]


def _run(out_dir: Path, interval_s: float) -> None:
    main_id = threading.main_thread().ident
    counts: Counter[str] = Counter()
    flag = out_dir / "on"
    next_write = next_flag_check = time.monotonic()
    active = False
    while True:
        now = time.monotonic()
        if now >= next_flag_check:
            active = flag.exists()
            next_flag_check = now + 0.1
        if active:
            frame = sys._current_frames().get(main_id)
            if frame is not None:
                counts[_folded(frame)] += 1
        if now >= next_write and counts:
            path = out_dir / f"{_process_title()}-{os.getpid()}.folded"
            path.write_text("".join(f"{stack} {n}\n" for stack, n in counts.items()))
            next_write = now + WRITE_EVERY_S
        time.sleep(interval_s)


def start_from_env() -> None:
    """Start the sampler thread if ``ASYMCACHE_STACK_SAMPLES`` names a folder."""
    out = os.environ.get(SAMPLES_ENV)
    if not out:
        return
    interval_s = float(os.environ.get(INTERVAL_ENV, "0.001"))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.setswitchinterval(interval_s / 4)
    threading.Thread(target=_run, args=(out_dir, interval_s), daemon=True).start()


def top_functions(folded: Path, limit: int) -> tuple[int, list[tuple[str, int]], list[tuple]]:
    """(total samples, top inclusive functions, top self functions) of one folded file."""
    inclusive: Counter[str] = Counter()
    self_counts: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        total += int(n)
        self_counts[frames[-1]] += int(n)
        for label in set(frames):
            inclusive[label] += int(n)
    return total, inclusive.most_common(limit), self_counts.most_common(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--match", default="scheduler", help="process title substring")
    parser.add_argument("--limit", type=int, default=40)
    args = parser.parse_args()
    for folded in sorted(args.dir.glob("*.folded")):
        if args.match not in folded.name:
            continue
        total, inclusive, self_top = top_functions(folded, args.limit)
        print(f"== {folded.name}: {total} samples")
        print("-- inclusive")
        for label, n in inclusive:
            print(f"{100.0 * n / total:6.1f}%  {label}")
        print("-- self")
        for label, n in self_top:
            print(f"{100.0 * n / total:6.1f}%  {label}")


if __name__ == "__main__":
    main()
