"""The plot in docs/scaling-policy.md: backlog and replicas over time, one line per policy.

Called by bench/policy.py (matplotlib, the dev extra); kept apart so the benchmark's
figures do not depend on a plotting library being importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"ebbtide": "tab:blue", "ebbtide-tuned": "tab:green"}


def plot(name: str, config: Any, runs: list[Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for r in runs:
        label = r.summary["policy"]
        colour = COLOURS.get(label, "tab:orange")
        ts = [s.t for s in r.result.samples]
        axes[0].plot(ts, [s.backlog for s in r.result.samples], label=label, color=colour)
        ratio = r.summary["ratio_to_oracle"]
        axes[1].step(
            ts,
            [s.replicas for s in r.result.samples],
            where="post",
            color=colour,
            label=f"{label} ({r.summary['slo_attainment'] * 100:.1f} % SLO, {ratio:.2f}x oracle)",
        )
    axes[0].set_ylabel("backlog (tasks)")
    axes[0].set_title(
        f"trace '{name}': target wait {config.target_backlog_seconds:.0f} s, pod start-up "
        f"{config.pod_startup_seconds:.0f} s, {config.concurrency} slots per pod"
    )
    axes[1].set_ylabel("replicas")
    axes[1].set_xlabel("time (s)")
    for ax in axes:
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
