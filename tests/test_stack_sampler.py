"""The sampling profiler's summary of folded stacks."""

from __future__ import annotations

from eval.stack_sampler import top_functions


def test_inclusive_counts_a_frame_once_per_sample_and_self_counts_leaves(tmp_path):
    folded = tmp_path / "sglang__scheduler-1.folded"
    folded.write_text("loop;forward;gemm 6\nloop;forward;forward 3\nloop;observe 1\n")
    total, inclusive, self_top = top_functions(folded, limit=10)
    assert total == 10
    assert dict(inclusive) == {"loop": 10, "forward": 9, "gemm": 6, "observe": 1}
    assert dict(self_top) == {"gemm": 6, "forward": 3, "observe": 1}
