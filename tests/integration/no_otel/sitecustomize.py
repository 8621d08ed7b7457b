"""Put first on PYTHONPATH, this makes a Python process one without opentelemetry (as
without the `otel` extra): Python imports `sitecustomize` at startup, before anything
else, and `sys.modules[name] = None` makes every later import of the package fail."""

from __future__ import annotations

import sys

sys.modules["opentelemetry"] = None  # type: ignore[assignment]
