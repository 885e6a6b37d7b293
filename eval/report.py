"""Tables and a bar plot from ``eval/results/*.json`` (written by ``eval.gpu_pressure``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.common import save_figure

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METRICS = ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "latency_mean_s")


def load(paths: list[Path]) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in paths}


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per (result file, cache), times in ms."""
    head = ["run", "card", "cache", *(m.removesuffix("_s") + " ms" for m in METRICS), "hit rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        for cache, run in res["runs"].items():
            cells = [name, res["card"], cache, *(f"{run[m] * 1000:.1f}" for m in METRICS)]
            lines.append("| " + " | ".join([*cells, f"{run['token_hit_rate']:.1%}"]) + " |")
    return "\n".join(lines)


def grouped_bars(
    ax: Any, runs: dict[str, dict], metrics: Sequence[str], labels: Sequence[str]
) -> None:
    """One group per metric (seconds, drawn in ms), one bar per run in each group."""
    width = 0.8 / len(runs)
    for i, (name, run) in enumerate(runs.items()):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [run[m] * 1000 for m in metrics], width, label=name)
    centre = width * (len(runs) - 1) / 2
    ax.set_xticks([j + centre for j in range(len(metrics))], labels)
    ax.legend(fontsize=7)


def plot(results: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        grouped_bars(ax, res["runs"], METRICS[:4], ["mean", "p50", "p90", "p99"])
        ax.set_ylabel("TTFT (ms)")
        ax.set_title(f"{name}\n{res['card']}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "ttft.png")
    args = parser.parse_args()
    results = load(args.results or sorted(RESULTS_DIR.glob("*pressure*.json")))
    print(table(results))
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
