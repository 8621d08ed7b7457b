"""Merging a user's pod template over ours, and telling whether a live object still
carries everything we asked for (drift), without being fooled by API-server defaults."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity


def deep_merge(base: Any, override: Any) -> Any:
    """Override wins; dicts merge recursively; lists of named items (containers, env,
    volumes) merge by `name`; other lists are replaced."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(copy.deepcopy(base))
        for key, value in override.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(override, list) and _named(base) and _named(override):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in override:
            if item["name"] in index:
                i = index[item["name"]]
                merged_list[i] = deep_merge(merged_list[i], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(override)


def _named(items: list) -> bool:
    return all(isinstance(item, Mapping) and "name" in item for item in items)


def _same_quantity(a: Any, b: Any) -> bool:
    try:
        return Decimal(parse_quantity(a)) == Decimal(parse_quantity(b))
    except (ValueError, TypeError, ArithmeticError):
        return False


def is_subset(wanted: Any, live: Any) -> bool:
    """True when every field of `wanted` is present and equal in `live`.

    Extra fields in `live` (defaults the API server filled in) are fine. Named lists
    match by name, other lists by position and length. Quantities compare by value
    ("0.5" == "500m") because the API server normalises them.
    """
    if isinstance(wanted, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(key in live and is_subset(value, live[key]) for key, value in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(wanted) != len(live):
            return False
        if _named(wanted) and _named(live):
            by_name = {item["name"]: item for item in live}
            return all(
                item["name"] in by_name and is_subset(item, by_name[item["name"]])
                for item in wanted
            )
        return all(is_subset(w, v) for w, v in zip(wanted, live, strict=True))
    if wanted == live:
        return True
    if isinstance(wanted, int | float) and isinstance(live, str | int | float):
        return _same_quantity(str(wanted), str(live))
    if isinstance(wanted, str) and isinstance(live, str | int | float):
        return _same_quantity(wanted, str(live))
    return False
