"""Which images the process kubelet can "run", and as what local command.

It never pulls or runs an image. An image's repository (its tag and digest ignored) is
matched against rules; a matching rule says what the image's entrypoint would be:

- `command: null`: no entrypoint of its own; the container's `command` + `args` run as given
  (the Python-based images, whose programs are in the venv);
- `command: [...]`: the image's ENTRYPOINT, used when the container has no `command`
  (`args`, when given, follow it; else the rule's own `args`, like an image's CMD);
- `appendArgs`: appended when the rule's entrypoint is what runs (redis: `--bind 127.0.0.1`,
  so a pod's Redis never listens beyond loopback).

Rules are fnmatch patterns over the repository, tried with and without its registry host
(`docker.io/library/redis` is `redis`). Extra rules from `--image-map FILE` come first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class ImageRule:
    """How one family of images runs locally (see the module docstring)."""

    pattern: str
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    append_args: tuple[str, ...] = ()


DEFAULT_RULES: tuple[ImageRule, ...] = (
    ImageRule("*ebbtide-runtime"),
    ImageRule("*ebbtide-worker"),
    ImageRule("*ebbtide-operator"),
    ImageRule("ebbtide/*"),
    ImageRule("*/ebbtide/*"),
    ImageRule("python"),
    ImageRule("redis", command=("redis-server",), append_args=("--bind", "127.0.0.1")),
)


def repository(image: str) -> str:
    """`ghcr.io/a/b:1.0@sha256:...` -> `ghcr.io/a/b` (a registry's `:port` is kept)."""
    name = image.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}{slash}{last}"


def without_registry(repo: str) -> str:
    """`docker.io/library/redis` -> `redis`; `ghcr.io/a/b` -> `a/b`; `a/b` stays."""
    first, slash, rest = repo.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return repo
    if first in DOCKER_HUB and rest.startswith("library/"):
        return rest[len("library/") :]
    return rest


class ImageMap:
    """An ordered list of rules; the first whose pattern matches an image's repository wins."""

    def __init__(self, rules: Iterable[ImageRule] = DEFAULT_RULES) -> None:
        self.rules = tuple(rules)

    def lookup(self, image: str) -> ImageRule | None:
        repo = repository(image)
        candidates = {repo, without_registry(repo)}
        for rule in self.rules:
            if any(fnmatchcase(candidate, rule.pattern) for candidate in candidates):
                return rule
        return None

    def with_extra(self, extra: Sequence[ImageRule]) -> ImageMap:
        """These rules first, then the current ones."""
        return ImageMap((*extra, *self.rules))


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of strings, not {value!r}")
    return tuple(value)


def rules_from_mapping(data: Mapping[str, Any]) -> list[ImageRule]:
    """`{repository-pattern: {"command": [...]|null, "args": [...], "appendArgs": [...]}}`;
    a bare `null` (or `{}`) means `{"command": null}`."""
    if not isinstance(data, Mapping):
        raise ValueError("an image map must be an object: repository -> {command: [...]|null}")
    rules = []
    for pattern, entry in data.items():
        entry = entry or {}
        if not isinstance(entry, Mapping):
            raise ValueError(f"image map entry {pattern!r} must be an object or null")
        unknown = set(entry) - {"command", "args", "appendArgs"}
        if unknown:
            raise ValueError(f"image map entry {pattern!r}: unknown keys {sorted(unknown)}")
        command = entry.get("command")
        rules.append(
            ImageRule(
                pattern=repository(pattern) if "*" not in pattern else pattern,
                command=_strings(command, f"{pattern}.command") if command is not None else None,
                args=_strings(entry.get("args"), f"{pattern}.args"),
                append_args=_strings(entry.get("appendArgs"), f"{pattern}.appendArgs"),
            )
        )
    return rules


def load_rules(path: str | Path) -> list[ImageRule]:
    """Rules from a JSON or YAML file (see `rules_from_mapping`)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        data = yaml.safe_load(text)
    return rules_from_mapping(data or {})


def unmapped_message(image: str) -> str:
    """The ImageNotMapped waiting message: which image, and how to map it."""
    repo = without_registry(repository(image))
    return (
        f'image "{image}" (repository "{repo}") is not mapped to a local command: the process '
        f"kubelet does not pull or run images; map it with --image-map FILE, e.g. "
        f'{{"{repo}": {{"command": null}}}} (see e2e/README.md, "Process kubelet")'
    )
