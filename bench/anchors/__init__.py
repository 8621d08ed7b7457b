"""The benchmark's task apps: one per system, each task does one Redis INCR.

They read their broker and counter from the environment (set by bench/throughput.py),
so the same module serves the producer process and the worker process.
"""
