"""Whether a destructive command may go on: the pure rule behind `ebbtide dlq purge`'s
confirmation (the CLI does the printing and the reading)."""

from __future__ import annotations

from enum import Enum


class Step(Enum):
    GO = "go"  # --yes, or nothing to destroy
    ASK = "ask"  # show what goes, read y/N from the terminal
    REFUSE = "refuse"  # no terminal to ask on, and no --yes


def purge_step(count: int, yes: bool, interactive: bool) -> Step:
    if yes or count == 0:
        return Step.GO
    return Step.ASK if interactive else Step.REFUSE


def confirmed(answer: str) -> bool:
    """Only an explicit yes counts; Enter (the default, N) or anything else is a no."""
    return answer.strip().lower() in ("y", "yes")
