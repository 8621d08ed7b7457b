"""Checking a task's arguments: against its signature and type hints (pydantic), and
against a JSON Schema given with `@app.task(schema=...)` (jsonschema), once at `send()`
and again in the worker before the task runs; plus the payload size rule of the worker.

The check works on Python args/kwargs, never on encoded bytes, so it does not care how
a payload is serialised. It is built once per task, on first use: type hints may name
classes defined below the task (`from __future__ import annotations`).
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
from pydantic import TypeAdapter, ValidationError

from .errors import InvalidArguments

Problems = list[tuple[str | None, str]]
CallArgs = tuple[tuple[Any, ...], dict[str, Any]]

_MAX_SHOWN = 80  # characters of a bad input quoted in a reason
# Fields the worker writes into a payload (retries, errors, replays): not the producer's.
WORKER_FIELDS = frozenset(
    {
        "attempt",
        "error",
        "traceback",
        "died_at",
        "replayed",
        "unknown_since",
        "unknown_tries",
        "raw",
    }
)


def schema_validator(task: str, schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for `schema` (checked now, so a bad schema fails at registration). A
    tuple counts as a JSON array: it is one once encoded."""
    if not isinstance(schema, Mapping):
        raise TypeError(f"task {task!r}: schema must be a JSON Schema object (a dict)")
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ValueError(
            f"task {task!r}: schema is not a valid JSON Schema: {exc.message}"
        ) from None
    checker = cls.TYPE_CHECKER.redefine("array", lambda _c, v: isinstance(v, list | tuple))
    return jsonschema.validators.extend(cls, type_checker=checker)(dict(schema))


class ArgumentCheck:
    """`check(args, kwargs)` returns the (args, kwargs) to call the function with (type
    hints applied: `"3"` for an `int` is 3, a dict for a pydantic model is the model) or
    raises InvalidArguments naming the argument.

    `hints=False` skips the type hints; a `schema` is still enforced (it was asked for).
    With neither, arguments pass as they are."""

    def __init__(
        self,
        task: str,
        fn: Callable[..., Any],
        *,
        hints: bool = True,
        schema: Mapping[str, Any] | None = None,
    ) -> None:
        self.task, self.fn, self.hints = task, fn, hints
        self.schema = schema_validator(task, schema) if schema is not None else None
        self.enabled = hints or self.schema is not None
        self._signature: inspect.Signature | None = None
        self._adapters: dict[str, TypeAdapter[Any]] = {}
        self._lock = threading.Lock()

    def check(self, args: tuple | list, kwargs: dict[str, Any]) -> CallArgs:
        if not self.enabled:
            return tuple(args), kwargs
        signature = self._signature or self._build()
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(self.task, [(_named_in(str(exc)), str(exc))]) from None
        problems: Problems = []
        if self.schema is not None:
            problems += self._schema_problems(signature, bound.arguments)
        if self.hints and not problems:
            problems += self._hint_problems(signature, bound.arguments)
        if problems:
            raise InvalidArguments(self.task, problems)
        return bound.args, bound.kwargs

    def _build(self) -> inspect.Signature:
        """The signature and one TypeAdapter per annotated parameter (once per task)."""
        with self._lock:
            if self._signature is not None:
                return self._signature
            signature = inspect.signature(self.fn)
            adapters: dict[str, TypeAdapter[Any]] = {}
            if self.hints:
                try:
                    hints = typing.get_type_hints(self.fn, include_extras=True)
                except Exception as exc:  # NameError, or anything a bad annotation raises
                    raise TypeError(
                        f"task {self.task!r}: cannot resolve its type hints ({exc}); define "
                        "the types at module level, or pass validate=False"
                    ) from None
                for name in signature.parameters:
                    if name in hints and hints[name] is not Any:
                        adapters[name] = TypeAdapter(hints[name])
            self._adapters, self._signature = adapters, signature
            return signature

    def _hint_problems(self, signature: inspect.Signature, arguments: dict[str, Any]) -> Problems:
        """Validate each annotated argument; validated values replace the given ones."""
        problems: Problems = []
        for name, value in arguments.items():
            adapter = self._adapters.get(name)
            if adapter is None:
                continue
            kind = signature.parameters[name].kind
            try:
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    checked: list[Any] = []
                    for i, item in enumerate(value):
                        checked.append(_validate(adapter, item, f"{name}[{i}]", problems))
                    arguments[name] = tuple(checked)
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    arguments[name] = {
                        key: _validate(adapter, item, key, problems) for key, item in value.items()
                    }
                else:
                    arguments[name] = _validate(adapter, value, name, problems)
            except _Invalid:
                continue
        return problems

    def _schema_problems(self, signature: inspect.Signature, arguments: dict[str, Any]) -> Problems:
        """The schema sees one object of the arguments by parameter name (positional ones
        bound to their names); `**kwargs` are merged in, `*args` is a list."""
        assert self.schema is not None
        instance: dict[str, Any] = {}
        for name, value in arguments.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                instance.update(value)
            else:
                instance[name] = value
        problems: Problems = []
        for error in sorted(self.schema.iter_errors(instance), key=_error_order):
            problems.append(_schema_problem(error))
        return problems


class _Invalid(Exception):
    """One argument failed (already recorded in the problems)."""


def _validate(adapter: TypeAdapter[Any], value: Any, name: str, problems: Problems) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems.append((name, describe(exc)))
        raise _Invalid from None


def describe(exc: ValidationError) -> str:
    """pydantic's errors in one line: where inside the value, what, and the input."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        shown = _shorten(repr(err.get("input")))
        parts.append(f"{f'at {where}: ' if where else ''}{err['msg']} (got {shown})")
    return "; ".join(parts)


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _error_order(error: jsonschema.exceptions.ValidationError) -> tuple[int, str]:
    return (0 if error.path else 1, str(list(error.path)))


def _schema_problem(error: jsonschema.exceptions.ValidationError) -> tuple[str | None, str]:
    """(argument, reason) of one schema error: the argument is the first step of the
    error's path, or the property a `required` names."""
    path = list(error.path)
    if path:
        inner = ".".join(str(p) for p in path[1:])
        return str(path[0]), f"{f'at {inner}: ' if inner else ''}{error.message} (schema)"
    if error.validator == "required":
        return _named_in(error.message), f"{error.message} (schema)"
    return None, f"{error.message} (schema)"


_QUOTED = re.compile(r"'([^']+)'")


def _named_in(message: str) -> str | None:
    """The argument an `inspect` or jsonschema message quotes ('missing a required
    argument: 'x''), if any."""
    found = _QUOTED.search(message)
    return found.group(1) if found else None


# -- payload size, worker side --------------------------------------------------------------


def stored_size_problem(size: int, limit: int) -> str | None:
    """Why a stored payload of `size` bytes is too big to even decode, or None. The
    worker's own fields (error, traceback) and an encoding (compression, encryption,
    base64) may make a stored payload bigger than what its producer sent, so only past
    twice the limit is it refused unread; between that and the limit, `content_problem`
    decides on what the producer sent."""
    if size > 2 * limit + (64 << 10):
        return (
            f"stored payload is {size} bytes, far over the limit of {limit} bytes "
            "(App(max_payload_bytes=...)): not decoded"
        )
    return None


def content_size(body: dict[str, Any]) -> int:
    """Bytes of the task as its producer encoded it: the payload without the worker's
    own fields (error, traceback, retry count...)."""
    producer = {k: v for k, v in body.items() if k not in WORKER_FIELDS}
    return len(_dumps(producer).encode())


def content_problem(body: dict[str, Any], limit: int) -> str | None:
    """Why a decoded payload is over the limit, or None."""
    size = content_size(body)
    if size > limit:
        return (
            f"payload of task {body.get('task')!r} is {size} bytes, over the limit of "
            f"{limit} bytes (App(max_payload_bytes=...))"
        )
    return None


_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode
