"""Which Ebbtide build runs: the version `ebbtide --version` prints, and the
`ebbtide_build_info` series plus the process metrics both the worker and the operator
export. One place, so the two components always report the same way."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def version() -> str:
    """The installed ebbtide distribution's version ('unknown' from a bare checkout)."""
    try:
        return metadata.version("ebbtide")
    except metadata.PackageNotFoundError:
        return "unknown"


def register_process_metrics(registry: CollectorRegistry, component: str) -> None:
    """Add `ebbtide_build_info{component,version,python_version}` (always 1) and
    prometheus_client's process, platform and GC collectors to `registry`."""
    from prometheus_client import Gauge
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(
        "ebbtide_build_info",
        "Always 1; the labels say which Ebbtide build runs",
        ("component", "version", "python_version"),
        registry=registry,
    )
    info.labels(component, version(), platform.python_version()).set(1)
