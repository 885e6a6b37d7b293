"""Query segments of a multi-segment extend: ``(start, end)`` token positions of one request."""

from __future__ import annotations

from collections.abc import Sequence

Segment = tuple[int, int]


def check_segments(segments: Sequence[Sequence[Segment]], seq_lens: Sequence[int]) -> None:
    """Each request's segments are non-empty, ordered, disjoint, and end with its tail."""
    if len(segments) != len(seq_lens):
        raise ValueError(f"{len(segments)} segment lists for {len(seq_lens)} requests")
    for i, (segs, seq_len) in enumerate(zip(segments, seq_lens)):
        if not segs:
            raise ValueError(f"request {i} has no segments")
        prev_end = 0
        for s, e in segs:
            if not prev_end <= s < e:
                raise ValueError(f"request {i}: bad segment [{s}, {e}) after {prev_end}")
            prev_end = e
        if prev_end != seq_len:
            raise ValueError(f"request {i}: last segment ends at {prev_end}, not {seq_len}")
