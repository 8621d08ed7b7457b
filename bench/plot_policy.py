"""The plot in docs/scaling-policy.md: backlog and replicas over time, one line per policy.

Called by bench/policy.py (matplotlib, the dev extra); kept apart so the benchmark's
figures do not depend on a plotting library being importable. The left column is the
whole trace, the right one zooms on one burst, where the policies differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"ebbtide": "tab:blue", "ebbtide-tuned": "tab:green"}
STYLES = {"ebbtide-tuned": "--"}


def plot(name: str, config: Any, runs: list[Any], out: Path, zoom: tuple[float, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 6), sharex="col", width_ratios=(2, 1))
    for r in runs:
        label = r.summary["policy"]
        style = dict(color=COLOURS.get(label, "tab:orange"), linestyle=STYLES.get(label, "-"))
        ts = [s.t for s in r.result.samples]
        backlog = [s.backlog for s in r.result.samples]
        replicas = [s.replicas for s in r.result.samples]
        summary = (
            f"{label}: {r.summary['slo_attainment'] * 100:.1f} % within T, "
            f"{r.summary['ratio_to_oracle']:.2f}x oracle"
        )
        for col in (0, 1):
            axes[0][col].plot(ts, backlog, label=label, **style)
            axes[1][col].step(ts, replicas, where="post", label=summary, **style)
    axes[0][0].set_title(
        f"trace '{name}': target wait {config.target_backlog_seconds:.0f} s, pod start-up "
        f"{config.pod_startup_seconds:.0f} s, {config.concurrency} slots per pod, "
        f"{config.poll_seconds:.0f} s polls"
    )
    axes[0][1].set_title(f"one burst, {zoom[0]:.0f}-{zoom[1]:.0f} s")
    axes[0][0].set_ylabel("backlog (tasks)")
    axes[1][0].set_ylabel("replicas")
    for col in (0, 1):
        axes[1][col].set_xlabel("time (s)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[1][1].set_xlim(*zoom)
    axes[0][0].legend(loc="upper right")
    axes[1][0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
