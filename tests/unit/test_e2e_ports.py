"""e2e/controlplane.py picks the cluster's listening ports outside the kernel's ephemeral
range: outgoing connections of the components already running take their source ports
from there, and one once took kube-router's health port before it could listen."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.controlplane import choose_ports, ephemeral_range, free_port, port_is_free  # noqa: E402


def test_listening_ports_are_free_distinct_and_never_ephemeral():
    low, high = ephemeral_range()
    ports = list(choose_ports(with_node=True).values()) + [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= p <= high and port_is_free(p) for p in ports)
