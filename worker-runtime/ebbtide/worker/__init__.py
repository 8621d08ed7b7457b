"""The worker process (`ebbtide worker`): loop.py holds the Worker, the rest are its parts.

loop.py       Worker: the asyncio loop that claims, dispatches, settles, heartbeats
pool.py       the threads that run sync (def) tasks
execute.py    calling a task's function, with its timeout
outcomes.py   what to settle after a run (pure)
decisions.py  settings, claim sizes, shutdown hand-backs, readiness (pure)
metrics.py    Prometheus metrics; probes.py serves them with /healthz and /readyz
supervisor.py `--processes N`: N workers under one supervisor

Nothing is imported here: the supervisor imports only its own parts, not the loop and
the brokers, so its children start that much sooner.
"""
