"""The worker process (`ebbtide worker`): loop.py holds the Worker, the rest are its parts.

loop.py       Worker: the asyncio loop that claims, dispatches, settles, heartbeats
pool.py       the threads that run sync (def) tasks
execute.py    calling a task's function, with its timeout
outcomes.py   what to settle after a run (pure)
decisions.py  settings, claim sizes, shutdown hand-backs, readiness (pure)
metrics.py    Prometheus metrics; probes.py serves them with /healthz and /readyz
"""

from __future__ import annotations

from ..errors import TaskTimeout
from .decisions import EXIT_HARD_TIMEOUT
from .loop import Worker

__all__ = ["EXIT_HARD_TIMEOUT", "TaskTimeout", "Worker"]
