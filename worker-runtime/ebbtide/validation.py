"""Checking a task's arguments: against its signature and type hints (pydantic), and
against a JSON Schema given with `@app.task(schema=...)` (jsonschema), once at `send()`
and again in the worker before the task runs; plus the payload size rule of the worker.

The check works on Python args/kwargs, never on encoded bytes, so it does not care how
a payload is serialised. It is built once per task, on first use: type hints may name
classes defined below the task (`from __future__ import annotations`).
"""

from __future__ import annotations

import inspect
import re
import threading
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidArguments
from .message import reencode

if TYPE_CHECKING:  # both are imported on first use: together they cost ~250 ms to import
    import jsonschema.exceptions
    import jsonschema.protocols
    from pydantic import TypeAdapter, ValidationError

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
    import jsonschema.exceptions
    import jsonschema.validators

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


_EXACT = (str, int, float, bool)  # a value of exactly this type passes pydantic unchanged
_PLAIN = inspect.Parameter.POSITIONAL_OR_KEYWORD


class ArgumentCheck:
    """`check(args, kwargs)` returns the (args, kwargs) to call the function with (type
    hints applied: `"3"` for an `int` is 3, a dict for a pydantic model is the model) or
    raises InvalidArguments naming the argument.

    `hints=False` skips the type hints; a `schema` is still enforced (it was asked for).
    With neither, arguments pass as they are. A signature of plain parameters (no `*`,
    `**`, `/` or keyword-only) is bound without `inspect`, and a value whose type is
    exactly its hint's `str`/`int`/`float`/`bool` skips pydantic: both give the same
    result, at a fraction of the cost on the `send_many` path."""

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
        self._kinds: dict[str, Any] = {}
        self._adapters: dict[str, TypeAdapter[Any]] = {}
        self._exact: dict[str, type] = {}
        self._plain: tuple[str, ...] | None = None  # names, when every parameter is plain
        self._required: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Build the check now (the worker does, at start: a type hint that cannot be
        resolved stops it with the reason, instead of burying every such task)."""
        if self.enabled and self._signature is None:
            self._build()

    def check(
        self, args: tuple | list, kwargs: dict[str, Any], *, quote_inputs: bool = True
    ) -> CallArgs:
        """`quote_inputs=False` keeps the bad values out of the reasons (the worker, for
        an encrypted task: the reason is stored and logged in plain text)."""
        if not self.enabled:
            return tuple(args), kwargs
        signature = self._signature or self._build()
        arguments = self._bind_plain(args, kwargs) if self._plain is not None else None
        bound = None
        if arguments is None:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidArguments(self.task, [(_named_in(str(exc)), str(exc))]) from None
            arguments = bound.arguments
        problems: Problems = []
        if self.schema is not None:
            problems += self._schema_problems(arguments, quote_inputs)
        if self._adapters and not problems:  # (none without hints=True)
            problems += self._hint_problems(arguments, quote_inputs)
        if problems:
            raise InvalidArguments(self.task, problems)
        if bound is not None:
            return bound.args, bound.kwargs
        assert self._plain is not None
        positional = tuple(arguments[name] for name in self._plain[: len(args)])
        return positional, {name: arguments[name] for name in kwargs}

    def _bind_plain(self, args: tuple | list, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The arguments by name, or None when they do not bind cleanly (then
        `inspect` binds them again, to raise its own error)."""
        names = self._plain
        assert names is not None
        if len(args) > len(names):
            return None
        arguments = dict(zip(names, args, strict=False))
        for name in kwargs:
            if name in arguments or name not in self._kinds:
                return None
        if kwargs:  # in signature order, as inspect gives them (the problems list follows)
            arguments.update(kwargs)
            arguments = {name: arguments[name] for name in names if name in arguments}
        if not self._required.issubset(arguments):
            return None
        return arguments

    def _build(self) -> inspect.Signature:
        """The signature and one TypeAdapter per annotated parameter (once per task)."""
        with self._lock:
            if self._signature is not None:
                return self._signature
            signature = inspect.signature(self.fn)
            params = signature.parameters
            adapters: dict[str, TypeAdapter[Any]] = {}
            exact: dict[str, type] = {}
            if self.hints:
                try:
                    hints = typing.get_type_hints(self.fn, include_extras=True)
                except Exception as exc:  # NameError, or anything a bad annotation raises
                    raise TypeError(
                        f"task {self.task!r}: cannot resolve its type hints ({exc}); define "
                        "the types at module level, or pass validate=False"
                    ) from None
                for name in params:
                    hint = hints.get(name, Any)
                    if hint is not Any:
                        from pydantic import TypeAdapter

                        adapters[name] = TypeAdapter(hint)
                    if hint in _EXACT:
                        exact[name] = hint
            self._kinds = {name: p.kind for name, p in params.items()}
            if all(p.kind is _PLAIN for p in params.values()):
                self._plain = tuple(params)
                self._required = frozenset(
                    name for name, p in params.items() if p.default is inspect.Parameter.empty
                )
            self._adapters, self._exact, self._signature = adapters, exact, signature
            return signature

    def _hint_problems(self, arguments: dict[str, Any], quote: bool) -> Problems:
        """Validate each annotated argument; validated values replace the given ones."""
        problems: Problems = []
        exact, adapters = self._exact, self._adapters
        for name, value in arguments.items():
            if type(value) is exact.get(name):
                continue
            adapter = adapters.get(name)
            if adapter is None:
                continue
            kind = self._kinds[name]
            try:
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    checked: list[Any] = []
                    for i, item in enumerate(value):
                        checked.append(_validate(adapter, item, f"{name}[{i}]", problems, quote))
                    arguments[name] = tuple(checked)
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    arguments[name] = {
                        key: _validate(adapter, item, key, problems, quote)
                        for key, item in value.items()
                    }
                else:
                    arguments[name] = _validate(adapter, value, name, problems, quote)
            except _Invalid:
                continue
        return problems

    def _schema_problems(self, arguments: dict[str, Any], quote: bool) -> Problems:
        """The schema sees one object of the arguments by parameter name (positional ones
        bound to their names); `**kwargs` are merged in, `*args` is a list."""
        assert self.schema is not None
        instance: dict[str, Any] = {}
        for name, value in arguments.items():
            if self._kinds[name] is inspect.Parameter.VAR_KEYWORD:
                instance.update(value)
            else:
                instance[name] = value
        problems: Problems = []
        for error in sorted(self.schema.iter_errors(instance), key=_error_order):
            problems.append(_schema_problem(error, quote))
        return problems


class _Invalid(Exception):
    """One argument failed (already recorded in the problems)."""


def _validate(
    adapter: TypeAdapter[Any], value: Any, name: str, problems: Problems, quote: bool
) -> Any:
    from pydantic import ValidationError

    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems.append((name, describe(exc, quote)))
        raise _Invalid from None


def describe(exc: ValidationError, quote: bool = True) -> str:
    """pydantic's errors in one line: where inside the value, what, and (when `quote`)
    the input."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        shown = f" (got {_shorten(repr(err.get('input')))})" if quote else ""
        parts.append(f"{f'at {where}: ' if where else ''}{err['msg']}{shown}")
    return "; ".join(parts)


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _error_order(error: jsonschema.exceptions.ValidationError) -> tuple[int, str]:
    return (0 if error.path else 1, str(list(error.path)))


def _schema_problem(
    error: jsonschema.exceptions.ValidationError, quote: bool
) -> tuple[str | None, str]:
    """(argument, reason) of one schema error: the argument is the first step of the
    error's path, or the property a `required` names. Without `quote`, the rule that
    failed stands in for jsonschema's message, which quotes the value."""
    path = list(error.path)
    said = error.message
    if not quote and error.validator not in ("required", "additionalProperties"):
        said = (
            f"fails the schema's {error.validator!r} rule: {_shorten(repr(error.validator_value))}"
        )
    if path:
        inner = ".".join(str(p) for p in path[1:])
        return str(path[0]), f"{f'at {inner}: ' if inner else ''}{said} (schema)"
    if error.validator == "required":
        return _named_in(error.message), f"{said} (schema)"
    return None, f"{said} (schema)"


_QUOTED = re.compile(r"'([^']+)'")


def _named_in(message: str) -> str | None:
    """The argument an `inspect` or jsonschema message quotes ('missing a required
    argument: 'x''), if any."""
    found = _QUOTED.search(message)
    return found.group(1) if found else None


# -- payload size, worker side --------------------------------------------------------------


def most_bytes(payload: str | bytes) -> int:
    """An upper bound of a stored payload's size in bytes, without encoding it: a str
    (Redis decodes to text) is at most 4 UTF-8 bytes a character."""
    return len(payload) if isinstance(payload, bytes) else 4 * len(payload)


def stored_size_problem(payload: str | bytes, limit: int) -> str | None:
    """Why a stored `payload` is too big to even decode, or None. The
    worker's own fields (error, traceback) and an encoding (compression, encryption,
    base64) may make a stored payload bigger than what its producer sent, so only past
    twice the limit is it refused unread; between that and the limit, `content_problem`
    decides on what the producer sent."""
    ceiling = 2 * limit + (64 << 10)
    if most_bytes(payload) <= ceiling:
        return None
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode())
    if size > ceiling:
        return (
            f"stored payload is {size} bytes, far over the limit of {limit} bytes "
            "(App(max_payload_bytes=...)): not decoded"
        )
    return None


def content_size(body: dict[str, Any]) -> int:
    """Bytes of the task as its producer stored it (what `send()` measured): the payload
    written back as the worker would (an encoded body as it came, its decoded arguments
    left out), without the worker's own fields (error, traceback, retry count...)."""
    producer = {k: v for k, v in body.items() if k not in WORKER_FIELDS}
    return len(reencode(producer).encode())


def content_problem(body: dict[str, Any], limit: int) -> str | None:
    """Why a decoded payload is over the limit, or None."""
    size = content_size(body)
    if size > limit:
        return (
            f"payload of task {body.get('task')!r} is {size} bytes, over the limit of "
            f"{limit} bytes (App(max_payload_bytes=...))"
        )
    return None
