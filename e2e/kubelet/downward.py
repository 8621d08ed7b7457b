"""The downward API for env vars: `fieldRef` and `resourceFieldRef`, as the kubelet resolves them.

Pods share the host's loopback here, so `status.podIP` and `status.hostIP` are 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

LOOPBACK = "127.0.0.1"

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class DownwardError(ValueError):
    """A fieldRef/resourceFieldRef the kubelet would refuse (the message says which)."""


def format_map(values: Mapping[str, str]) -> str:
    """`metadata.labels` as a whole: sorted `key="value"` lines (Go's fieldpath.FormatMap)."""
    return "\n".join(
        f"{key}={json.dumps(values[key], ensure_ascii=False)}" for key in sorted(values)
    )


def field_value(pod: Mapping[str, Any], field_path: str, host_ip: str = LOOPBACK) -> str:
    """The value of a `fieldRef.fieldPath` for this pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    subscript = _SUBSCRIPT.match(field_path)
    if subscript:
        kind, key = subscript.groups()
        return str((meta.get(kind) or {}).get(key, ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": LOOPBACK,
        "status.podIPs": LOOPBACK,
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(field_path.split(".", 1)[1]) or {})
    raise DownwardError(f"unsupported fieldPath: {field_path}")


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(
    r"^([+-]?[0-9]*\.?[0-9]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)


def parse_quantity(text: str | int | float) -> Fraction:
    """A resource.Quantity (`500m`, `128Mi`, `1e3`, `2`) as an exact number."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise DownwardError(f"invalid quantity: {text!r}")
    number, exponent, suffix = match.groups()
    value = Fraction(number)
    if exponent:
        return value * Fraction(10) ** int(exponent[1:])
    suffix = suffix or ""
    return value * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def resource_value(
    container: Mapping[str, Any],
    resource: str,
    divisor: str | int | None,
    allocatable: Mapping[str, str],
) -> str:
    """A `resourceFieldRef`: requests/limits of cpu, memory or ephemeral-storage, divided by
    `divisor` and rounded up; an unset limit is the node's allocatable (as the kubelet does),
    an unset request is 0."""
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise DownwardError(f"unsupported resource: {resource}")
    values = (container.get("resources") or {}).get(kind) or {}
    raw = values.get(name)
    if raw is None and kind == "limits":
        raw = allocatable.get(name, "0")
    amount = parse_quantity(raw if raw is not None else "0")
    by = parse_quantity(divisor) if divisor not in (None, "", 0) else Fraction(1)
    if by == 0:
        raise DownwardError(f"invalid divisor for {resource}: {divisor!r}")
    if name == "cpu":
        # Go works in milli-units here: ceil(milliCPU / divisor.milli)
        milli = math.ceil(amount * 1000)
        divisor_milli = math.ceil(by * 1000)
        return str(math.ceil(Fraction(milli, divisor_milli)))
    return str(math.ceil(amount / by))
