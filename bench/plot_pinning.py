"""The plot in docs/benchmarks.md, "2026-12-06: pinned to a CPU": tasks/s per row, each
system unpinned and pinned, from a `bench/throughput.py --json FILE` result.

    .venv/bin/python bench/plot_pinning.py bench/results/throughput-pinned-2026-12-06.json \\
        docs/pinned-throughput.png

`groups` (pure) picks the figures; `plot` draws them (matplotlib, the dev extra): a bar
at each row's median and a dot for every round, so the spread is seen, not hidden.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (broker, label, [(system, legend)]), in the order drawn
ROWS = (
    ("redis", "Redis, 1 process", ("dramatiq", "ebbtide")),
    ("redis", "Redis, 2 processes each", ("dramatiq-p2", "ebbtide-p2")),
    ("rabbitmq", "RabbitMQ, 1 process", ("dramatiq", "ebbtide")),
)
SERIES = ("Dramatiq", "Dramatiq, pinned", "Ebbtide", "Ebbtide --cpu-affinity")
COLOURS = ("tab:gray", "silver", "tab:blue", "tab:cyan")


@dataclass(frozen=True)
class Group:
    label: str
    rounds: tuple[tuple[float, ...], ...]  # per series in SERIES order; () if it did not run


def pinned_name(system: str) -> str:
    """dramatiq -> dramatiq-pinned, ebbtide-p2 -> ebbtide-pinned-p2."""
    base, p2, _ = system.partition("-p2")
    return f"{base}-pinned{p2}"


def groups(result: dict[str, Any]) -> list[Group]:
    """The rows of a throughput JSON result that ran, with every round's tasks/s."""
    rows = {(r["broker"], r["system"]): r for r in result["results"]}

    def rounds(broker: str, system: str) -> tuple[float, ...]:
        row = rows.get((broker, system))
        if row is None or not row.get("processed_per_s"):
            return ()
        return tuple(row.get("extra", {}).get("processed_per_s_runs") or [row["processed_per_s"]])

    out = []
    for broker, label, (dramatiq, ebbtide) in ROWS:
        systems = (dramatiq, pinned_name(dramatiq), ebbtide, pinned_name(ebbtide))
        found = tuple(rounds(broker, s) for s in systems)
        if any(found):
            out.append(Group(label, found))
    return out


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = groups(result)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    for g, group in enumerate(found):
        for s, values in enumerate(group.rounds):
            if not values:
                continue
            x = g + (s - 1.5) * width
            label = SERIES[s] if g == 0 else None
            ax.bar(x, statistics.median(values), width * 0.9, color=COLOURS[s], label=label)
            ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(found)), [g.label for g in found])
    ax.set_ylabel("def tasks per second, spawn to done")
    ax.set_title(f"pinned to a CPU: bars are medians, dots rounds ({result['when'][:16]} UTC)")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    plot(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
