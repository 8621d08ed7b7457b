"""Kubernetes `$(VAR)` expansion, ported from k8s.io/kubernetes third_party/forked/golang/expansion.

The kubelet expands `$(VAR)` in env values (against the variables declared before them) and
in command/args (against the container's whole env). The rules, which differ from a shell's:

- `$(NAME)` with NAME defined becomes its value; undefined, it stays `$(NAME)` verbatim;
- `$$` becomes `$` (an escape: `$$(NAME)` gives the literal `$(NAME)`);
- an unterminated `$(` and a `$` followed by anything else are kept as they are.

Go scans bytes; this scans characters, which only differs (for the better) when a `$` is
followed by a non-ASCII character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

Mapping_ = Callable[[str], str]


def syntax_wrap(name: str) -> str:
    return f"$({name})"


def mapping_for(*contexts: Mapping[str, str]) -> Mapping_:
    """A lookup over `contexts`, first match wins; an unknown name maps to `$(name)`."""

    def lookup(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return syntax_wrap(name)

    return lookup


def _read_variable_name(rest: str) -> tuple[str, bool, int]:
    """What follows a `$`: (text, is_variable, characters consumed after the `$`)."""
    first = rest[0]
    if first == "$":
        return "$", False, 1
    if first == "(":
        close = rest.find(")", 1)
        if close != -1:
            return rest[1:close], True, close + 1
        return "$(", False, 1
    return "$" + first, False, 1


def expand(text: str, mapping: Mapping_) -> str:
    """Expand `$(VAR)` references in `text` exactly as the kubelet does."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_variable_name(text[cursor + 1 :])
            out.append(mapping(read) if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def expand_all(items: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """Expand every element of a command or args list against a container's env."""
    mapping = mapping_for(env)
    return [expand(item, mapping) for item in items]
