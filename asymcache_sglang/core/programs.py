"""Programs and their returns, learned from requests alone (issue 12's reuse model).

A program is a multi-turn conversation or an agent: a run of requests, each of which begins
with the whole of the one before. A request names its program with SGLang's ``session_id``, or
the tracker finds the program whose last request the prompt begins with. Between two requests a
program waits (a user thinking, a tool running); the gaps seen so far say how much longer a
program that has waited so long will stay away.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable, Sequence

# A request as the tracker recognises its continuation: its length and its last tokens.
Tip = tuple[int, tuple[int, ...]]


class ReturnGaps:
    """The last ``window`` return gaps (seconds from a program's release to its next request),
    kept sorted: how long a program idle for ``idle_s`` is expected to stay away."""

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._order: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []
        self._suffix: list[float] | None = None

    def __len__(self) -> int:
        return len(self._sorted)

    def observe(self, gap_s: float) -> None:
        """One program came back after ``gap_s``; the oldest gap leaves a full window."""
        if len(self._order) == self._order.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._order[0])]
        self._order.append(gap_s)
        bisect.insort(self._sorted, gap_s)
        self._suffix = None

    def expected_remaining_s(self, idle_s: float) -> float:
        """Mean of gap - idle over the gaps longer than ``idle_s``; inf where none is (or none
        was seen): by what was seen, the program does not come back."""
        return remaining_s(*self.beyond(idle_s))

    def beyond(self, idle_s: float) -> tuple[float, float]:
        """The share of the gaps longer than ``idle_s``, and the mean over all gaps of how much
        longer (0 for the others): (0, 0) when none was seen. O(log window)."""
        first = bisect.bisect_right(self._sorted, idle_s)
        longer = len(self._sorted) - first
        if longer == 0:
            return 0.0, 0.0
        if self._suffix is None:
            self._suffix = list(itertools.accumulate(reversed(self._sorted), initial=0.0))
        n = len(self._sorted)
        return longer / n, (self._suffix[longer] - longer * idle_s) / n


def remaining_s(share: float, excess: float) -> float:
    """Expected wait left from ``ReturnGaps.beyond``'s pair; inf when nothing says it is back."""
    if share <= 0:
        return math.inf
    remaining = excess / share
    return remaining if remaining > 0 else math.inf  # longer only by rounding: none is


class ProgramTracker:
    """Which program each request belongs to, and when each program is expected back.

    ``admit`` a request at its first prefix match (``enter`` again for one that was retracted),
    ``release`` its program when its KV goes to the cache (or ``leave`` when it does not), and
    ``close`` a program that says it is done. At most ``max_waiting`` programs wait; past that
    the longest-waiting is forgotten. ``back_at`` is a program's expected return as an absolute
    time, which changes only at those events and when a program is overdue; ``changed`` names
    the programs whose ``back_at`` moved, so a caller keying on it re-keys only those.

    A program's return is estimated from all programs' gaps and its own last ``own_window``,
    mixed as if the pooled gaps were ``prior_gaps`` of its own: a program seen a few times
    follows the crowd, one seen often follows itself (its tools, or its user, are its own).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        tip_tokens: int = 16,
        window: int = 1024,
        max_waiting: int = 65536,
        min_gaps: int = 8,
        own_window: int = 16,
        prior_gaps: float = 4.0,
    ) -> None:
        if tip_tokens < 1 or max_waiting < 1 or min_gaps < 1 or own_window < 1:
            raise ValueError(
                f"need tip_tokens, max_waiting, min_gaps and own_window >= 1: "
                f"{tip_tokens}, {max_waiting}, {min_gaps}, {own_window}"
            )
        if prior_gaps <= 0:
            raise ValueError(f"prior_gaps must be > 0, got {prior_gaps}")
        self.clock = clock
        self.tip_tokens = tip_tokens
        self.max_waiting = max_waiting
        self.min_gaps = min_gaps
        self.returns = ReturnGaps(window)
        # Each program's own gaps, while it is open; and how many pooled gaps its own are worth.
        self.own_window = own_window
        self.prior_gaps = prior_gaps
        self._own: dict[Hashable, ReturnGaps] = {}
        self._requests_in: dict[Hashable, int] = {}  # program -> its requests in the server
        # Waiting programs, longest-waiting first: when each was released, and its last request.
        self._waiting_since: dict[Hashable, float] = {}
        self._tip_of: dict[Hashable, Tip] = {}
        self._program_at: dict[Tip, Hashable] = {}
        # The lengths of the tips, sorted, and how many tips have each.
        self._lengths: list[int] = []
        self._tips_of_length: dict[int, int] = {}
        self._auto = itertools.count()
        # Each waiting program's expected return, and those times in a heap (stale entries are
        # skipped: their time is no longer the program's).
        self._back_at: dict[Hashable, float] = {}
        self._deadlines: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        # Insertion-ordered, so every TP rank re-keys in one order.
        self._changed: dict[Hashable, None] = {}

    def _tip(self, tokens: Sequence[int], length: int) -> Tip:
        return (length, tuple(tokens[max(0, length - self.tip_tokens) : length]))

    @property
    def ready(self) -> bool:
        """Enough returns seen to estimate one: until then ``back_at`` has no opinion."""
        return len(self.returns) >= self.min_gaps

    def admit(self, session_id: Hashable | None, tokens: Sequence[int]) -> Hashable:
        """The program of a request seen for the first time: ``session_id``, else the waiting
        program whose last request ``tokens`` begin with (the longest such), else a new one.
        A waiting program's wait ends here, and its length is a return gap."""
        program = session_id if session_id is not None else self._continued(tokens)
        since = self._waiting_since.get(program)
        was_ready = self.ready
        if since is not None:
            gap = self.clock() - since
            self.returns.observe(gap)
            own = self._own.get(program)
            if own is None:
                own = self._own[program] = ReturnGaps(self.own_window)
            own.observe(gap)
        self.enter(program)
        if self.ready and not was_ready:  # every waiting program gets its first estimate
            for waiting in self._waiting_since:
                self._estimate(waiting, self.clock())
        return program

    def _continued(self, tokens: Sequence[int]) -> Hashable:
        """The waiting program with the longest last request that ``tokens`` begin with: one
        lookup per distinct tip length up to ``len(tokens)``."""
        for i in range(bisect.bisect_right(self._lengths, len(tokens)) - 1, -1, -1):
            program = self._program_at.get(self._tip(tokens, self._lengths[i]))
            if program is not None:
                return program
        return f"auto-{next(self._auto)}"

    def enter(self, program: Hashable) -> None:
        """A request of ``program`` is in the server (again, for a retracted one)."""
        self._requests_in[program] = self._requests_in.get(program, 0) + 1
        self._stop_waiting(program)
        self._changed[program] = None

    def release(self, program: Hashable, tokens: Sequence[int]) -> None:
        """A request of ``program`` finished and the cache holds ``tokens`` of it: once no other
        is in, the program waits from now, to be recognised by a prompt that begins with them."""
        self.leave(program)
        self._forget_tip(program)
        tip = self._tip(tokens, len(tokens))
        if tip in self._program_at:  # another program's tip, the same tokens: the newer wins
            self._tip_of.pop(self._program_at[tip])
        else:
            self._count_length(tip[0], +1)
        self._program_at[tip], self._tip_of[program] = program, tip
        if program in self._requests_in:
            return
        self._stop_waiting(program)
        self._waiting_since[program] = self.clock()
        self._estimate(program, self.clock())
        while len(self._waiting_since) > self.max_waiting:
            self.close(next(iter(self._waiting_since)))

    def leave(self, program: Hashable) -> None:
        """A request of ``program`` left without giving the cache its KV (retracted)."""
        left = self._requests_in.get(program, 0) - 1
        if left > 0:
            self._requests_in[program] = left
        else:
            self._requests_in.pop(program, None)
        self._changed[program] = None

    def close(self, program: Hashable) -> None:
        """The program is done (``/close_session``, or it waited past ``max_waiting``)."""
        self._stop_waiting(program)
        self._own.pop(program, None)
        self._forget_tip(program)
        self._changed[program] = None

    def _stop_waiting(self, program: Hashable) -> None:
        self._waiting_since.pop(program, None)
        self._back_at.pop(program, None)

    def _forget_tip(self, program: Hashable) -> None:
        tip = self._tip_of.pop(program, None)
        if tip is not None:
            del self._program_at[tip]
            self._count_length(tip[0], -1)

    def _count_length(self, length: int, delta: int) -> None:
        count = self._tips_of_length.get(length, 0) + delta
        if delta > 0 and count == 1:
            bisect.insort(self._lengths, length)
        if count == 0:
            del self._tips_of_length[length]
            del self._lengths[bisect.bisect_left(self._lengths, length)]
        else:
            self._tips_of_length[length] = count

    def _estimate(self, program: Hashable, now: float) -> None:
        """A waiting program's return time from the gaps, once they can say; a deadline heap
        entry brings it back when that time passes."""
        self._changed[program] = None
        if not self.ready:
            return
        back = now + self._remaining_s(program, now - self._waiting_since[program])
        if back <= now:  # a remaining wait too small to move the clock: not expected back
            back = math.inf
        self._back_at[program] = back
        if back < math.inf:
            heapq.heappush(self._deadlines, (back, next(self._seq), program))
            if len(self._deadlines) > 2 * len(self._back_at) + 64:
                self._deadlines = [d for d in self._deadlines if self._back_at.get(d[2]) == d[0]]
                heapq.heapify(self._deadlines)

    def back_at(self, program: Hashable) -> float | None:
        """When ``program`` is expected back: -inf while a request of it is in; its estimate
        while it waits (None until the gaps can say); inf once it is closed or forgotten."""
        if program in self._requests_in:
            return -math.inf
        if program in self._waiting_since:
            return self._back_at.get(program)
        return math.inf

    def next_use_in_s(self, program: Hashable) -> float:
        """Seconds until the program is expected back: 0 while a request of it is in, the
        return gaps' estimate while it waits, inf once it is closed or forgotten."""
        if program in self._requests_in:
            return 0.0
        since = self._waiting_since.get(program)
        if since is None:
            return math.inf
        return self._remaining_s(program, self.clock() - since)

    def _remaining_s(self, program: Hashable, idle_s: float) -> float:
        """The wait left for a program idle ``idle_s``: its own gaps and the pooled ones mixed,
        the pooled counting as ``prior_gaps`` of its own."""
        share, excess = self.returns.beyond(idle_s)
        own = self._own.get(program)
        if own is not None:
            n, k = len(own), self.prior_gaps
            own_share, own_excess = own.beyond(idle_s)
            share = (k * share + n * own_share) / (k + n)
            excess = (k * excess + n * own_excess) / (k + n)
        return remaining_s(share, excess)

    def counts(self) -> dict[str, int]:
        """Programs with a request in, programs waiting, and return gaps in the window."""
        return {
            "programs_in": len(self._requests_in),
            "programs_waiting": len(self._waiting_since),
            "return_gaps": len(self.returns),
        }

    def changed(self, now: float) -> list[Hashable]:
        """The programs whose ``back_at`` moved since the last call, overdue ones included (each
        is re-estimated from how long it has waited): O(programs changed)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            back, _, program = heapq.heappop(self._deadlines)
            if self._back_at.get(program) == back:
                self._estimate(program, now)
        changed, self._changed = list(self._changed), {}
        return changed
