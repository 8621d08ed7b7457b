"""The argument check (signature, type hints, JSON Schema) and the worker's size rule."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import ebbtide
import pytest
from ebbtide.errors import InvalidArguments
from ebbtide.validation import (
    ArgumentCheck,
    content_problem,
    content_size,
    most_bytes,
    stored_size_problem,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field


class Order(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


def charge(order_id: int, amount: float, note: str = "", *tags: str, **extra: int) -> None: ...


def check(fn=charge, **options):
    return ArgumentCheck("t", fn, **options)


def test_good_arguments_pass_and_are_coerced_as_pydantic_does():
    args, kwargs = check().check(["7", 2], {"note": "x"})
    assert args == (7, 2.0, "x") and kwargs == {}
    args, kwargs = check().check([1, 2, "n", "a", "b"], {"retries": "3"})
    assert args == (1, 2.0, "n", "a", "b") and kwargs == {"retries": 3}


def test_a_bad_value_names_the_argument():
    with pytest.raises(InvalidArguments) as caught:
        check().check(["seven", 2], {})
    err = caught.value
    assert err.argument == "order_id" and err.task == "t"
    assert "argument 'order_id'" in str(err) and "valid integer" in str(err)
    assert "'seven'" in str(err)
    assert isinstance(err, TypeError) and isinstance(err, ValueError)


def test_every_bad_argument_is_listed():
    with pytest.raises(InvalidArguments) as caught:
        check().check(["x", "y"], {})
    assert [name for name, _ in caught.value.problems] == ["order_id", "amount"]


def test_var_positional_and_var_keyword_items_are_named():
    with pytest.raises(InvalidArguments) as caught:
        check().check([1, 2, "n", "ok", 3], {})
    assert caught.value.argument == "tags[1]"
    with pytest.raises(InvalidArguments) as caught:
        check().check([1, 2], {"retries": "many"})
    assert caught.value.argument == "retries"


@pytest.mark.parametrize(
    ("args", "kwargs", "named", "said"),
    [
        ([1], {}, "amount", "missing a required argument"),
        ([1, 2], {"order_id": 3}, "order_id", "multiple values"),
    ],
)
def test_arity_errors_name_the_argument(args, kwargs, named, said):
    with pytest.raises(InvalidArguments, match=said) as caught:
        check().check(args, kwargs)
    assert caught.value.argument == named


def test_unexpected_keyword_and_too_many_positionals():
    def f(a: int) -> None: ...

    with pytest.raises(InvalidArguments, match="unexpected keyword argument 'b'") as caught:
        check(f).check([1], {"b": 2})
    assert caught.value.argument == "b"
    with pytest.raises(InvalidArguments, match="too many positional") as caught:
        check(f).check([1, 2], {})
    assert caught.value.argument is None


def test_models_and_constraints_from_type_hints():
    def ship(order: Order, priority: Annotated[int, Field(ge=0, le=9)] = 0) -> None: ...

    args, _ = check(ship).check([{"sku": "a", "quantity": 2}], {})
    assert args == (Order(sku="a", quantity=2),)
    with pytest.raises(InvalidArguments) as caught:
        check(ship).check([{"sku": "a", "quantity": 0}], {})
    assert caught.value.argument == "order" and "at quantity" in str(caught.value)
    with pytest.raises(InvalidArguments, match="argument 'priority'"):
        check(ship).check([{"sku": "a", "quantity": 1}, 12], {})


def test_unannotated_parameters_take_anything_but_arity_is_checked():
    def f(a, b=1): ...

    assert check(f).check([object()], {})[1] == {}
    with pytest.raises(InvalidArguments, match="missing a required argument: 'a'"):
        check(f).check([], {})


def test_validate_false_skips_everything_without_a_schema():
    assert check(hints=False).check(["x"], {"what": []}) == (("x",), {"what": []})


def test_unresolvable_hints_fail_on_first_use_with_the_way_out():
    def f(a: NotDefinedAnywhere) -> None: ...  # noqa: F821

    c = check(f)  # registration never fails on a forward reference
    with pytest.raises(TypeError, match="cannot resolve its type hints.*validate=False"):
        c.check([1], {})
    with pytest.raises(TypeError, match="cannot resolve its type hints"):
        check(f).prepare()  # what the worker does at start
    check(f, hints=False).prepare()  # nothing to resolve


SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer"},
        "amount": {"type": "number", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["order_id", "amount"],
}


def test_schema_sees_the_arguments_by_name():
    c = check(schema=SCHEMA, hints=False)
    assert c.check([1, 2.5, "", "a"], {}) == ((1, 2.5, "", "a"), {})
    with pytest.raises(InvalidArguments) as caught:
        c.check([1, -1], {})
    assert caught.value.argument == "amount" and "(schema)" in str(caught.value)
    with pytest.raises(InvalidArguments) as caught:
        c.check([1, 1, "", 5], {})
    assert caught.value.argument == "tags" and "at 0" in str(caught.value)


def test_schema_required_names_the_missing_property():
    def f(**fields) -> None: ...

    with pytest.raises(InvalidArguments) as caught:
        check(f, schema=SCHEMA).check([], {"amount": 1})
    assert caught.value.argument == "order_id"
    assert check(f, schema=SCHEMA).check([], {"order_id": 1, "amount": 0}) == (
        (),
        {"order_id": 1, "amount": 0},
    )


def test_schema_then_hints():
    c = check(schema=SCHEMA)
    with pytest.raises(InvalidArguments, match="schema"):
        c.check(["1", 2], {})  # the schema wants an integer, not a string


def test_a_bad_schema_fails_at_registration():
    with pytest.raises(ValueError, match="task 't': schema is not a valid JSON Schema"):
        check(schema={"type": "integr"})
    with pytest.raises(TypeError, match="must be a JSON Schema object"):
        check(schema=["not", "a", "schema"])


def test_the_task_decorator_wires_the_check_into_send():
    app = ebbtide.App("redis://127.0.0.1:1/0")  # never reached: the check raises first

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(InvalidArguments, match="task '.*add': invalid arguments: argument 'b'"):
        add.send(1, "two")
    with pytest.raises(InvalidArguments, match="argument 'b'"):
        add.send_many([(1, 2), (1, "two")])
    with pytest.raises(InvalidArguments, match="missing a required argument: 'b'"):
        add.options(delay=1).send(1)
    assert add(1, 2) == 3  # calling the handle runs it here, unchecked

    @app.task(validate=False)
    def loose(a: int) -> None: ...

    assert loose.arguments.enabled is False

    @app.task(schema={"type": "object", "required": ["a"]}, validate=False)
    def foreign(**fields) -> None: ...

    with pytest.raises(InvalidArguments, match="'a' is a required property"):
        foreign.send(b=1)


def test_stored_size_is_refused_unread_only_far_over_the_limit():
    ceiling = 2000 + (64 << 10)
    assert stored_size_problem(b"x" * 1000, 1000) is None
    assert stored_size_problem(b"x" * ceiling, 1000) is None
    reason = stored_size_problem(b"x" * (ceiling + 1), 1000)
    assert reason is not None and "limit of 1000 bytes" in reason and "not decoded" in reason
    assert f"is {ceiling + 1} bytes" in reason
    assert stored_size_problem("x" * ceiling, 1000) is None
    assert stored_size_problem("é" * (ceiling // 2 + 1), 1000) is not None  # 2 bytes each


def test_most_bytes_bounds_text_without_encoding_it():
    assert most_bytes(b"abc") == 3
    assert most_bytes("ab") == 8


def test_content_size_leaves_out_what_the_worker_wrote():
    body = {"id": "x", "task": "t", "args": ["a" * 50], "kwargs": {}}
    with_worker_fields = {**body, "attempt": 3, "error": "e" * 500, "traceback": "t" * 500}
    assert content_size(with_worker_fields) == content_size(body)
    assert content_problem(body, 1000) is None
    reason = content_problem(body, 50)
    assert reason is not None and "payload of task 't' is" in reason and "limit of 50" in reason


def plain(tag: str, i: int, ratio: float = 1.0, flag: bool = False, extra=None) -> None: ...


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (["t", 1], {}),
        (["t"], {"i": "2"}),
        ([], {"tag": "t", "i": 3, "flag": True}),
        (["t", 1, 2], {"extra": [1]}),
        (["t", True], {}),
        (["t", 1.0, "2.5"], {}),
        (["t", "x"], {}),
        (["t"], {}),
        (["t", 1], {"nope": 1}),
        (["t", 1], {"tag": "again"}),
        (["t", 1, 1.0, False, None, "too many"], {}),
    ],
)
def test_the_plain_fast_path_agrees_with_inspect(args, kwargs):
    """Plain parameters are bound without `inspect` and exact-typed values skip
    pydantic: the outcome (values, or the error) is the one the full path gives."""

    assert outcome(args, kwargs, check(plain)) == outcome(args, kwargs, full_path())


def full_path() -> ArgumentCheck:
    """A check of `plain` forced onto inspect's binding and pydantic for every value."""
    full = ArgumentCheck("t", plain)
    full._build()
    full._plain, full._exact = None, {}
    return full


def outcome(args, kwargs, checker: ArgumentCheck):
    """What a check gives: the bound values with their types, or the error."""
    try:
        call_args, call_kwargs = checker.check(args, kwargs)
    except InvalidArguments as exc:
        return ("error", exc.argument, [why for _, why in exc.problems])
    bound = inspect.signature(plain).bind(*call_args, **call_kwargs)
    bound.apply_defaults()
    return ("ok", [(v, type(v)) for v in bound.arguments.values()])


JSON_VALUES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()


@settings(max_examples=300, deadline=None)
@given(
    args=st.lists(JSON_VALUES, max_size=6),
    kwargs=st.dictionaries(
        st.sampled_from(["tag", "i", "ratio", "flag", "extra", "other"]), JSON_VALUES, max_size=3
    ),
)
def test_the_fast_path_agrees_with_inspect_on_any_json_arguments(args, kwargs):
    assert outcome(args, kwargs, check(plain)) == outcome(args, kwargs, full_path())


@pytest.mark.parametrize("processes", ["1", "2"])  # 2: each child checks, the supervisor stops
def test_a_worker_whose_task_hints_cannot_be_resolved_stops_at_start(
    tmp_path, monkeypatch, capfd, processes
):
    from ebbtide import cli

    (tmp_path / "unresolved_hints_app.py").write_text(
        "from __future__ import annotations\n"
        "import ebbtide\n"
        "app = ebbtide.App()\n"
        "@app.task(name='t')\n"
        "def t(a: Missing) -> None: ...\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app adds the cwd
    monkeypatch.delenv("EBBTIDE_BROKER_URL", raising=False)
    monkeypatch.delenv("EBBTIDE_BROKER_URL_FILE", raising=False)
    try:
        assert cli.main(["worker", "unresolved_hints_app:app", "--processes", processes]) == 2
    finally:
        sys.modules.pop("unresolved_hints_app", None)
    # One line; under --processes each child says it once, and the supervisor, which does
    # not import the app, stops with the children's usage error.
    errors = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("ebbtide:")]
    assert errors and len(errors) == int(processes)
    for line in errors:
        assert "task 't': cannot resolve its type hints" in line and "Missing" in line


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["v", "ab"], {}),
        (["v", "ab" * 20_000], {}),  # stored compressed: far smaller than its arguments
        (["v", "é" * 10], {"key": "k1", "headers": {"traceparent": "00-1-2-01"}}),
    ],
)
def test_content_size_is_the_size_send_measured(args, extra):
    from ebbtide.message import decode_payload, encode_payload

    app = ebbtide.App("redis://127.0.0.1:1/0", compress_threshold=1024)
    headers = extra.pop("headers", None)
    text = encode_payload("id", "t", args, {}, 1 << 20, codec=app.codec, headers=headers, **extra)
    body = decode_payload(text, app.codec)
    assert content_size(body) == len(text.encode())
    assert content_size({**body, "attempt": 2, "error": "x" * 100}) == len(text.encode())


def test_reasons_can_leave_the_values_out():
    """What the worker does for an encrypted task: the reason names the argument and the
    rule, never the value (it is stored and logged in plain text)."""
    with pytest.raises(InvalidArguments) as caught:
        check().check(["secret-1"], {"amount": "secret-2"}, quote_inputs=False)
    assert "secret" not in str(caught.value)
    assert caught.value.argument == "order_id" and "valid integer" in str(caught.value)
    c = check(schema=SCHEMA, hints=False)
    with pytest.raises(InvalidArguments) as caught:
        c.check(["secret-3", 1, "", "x"], {}, quote_inputs=False)
    said = str(caught.value)
    assert "secret" not in said and "fails the schema's 'type' rule: 'integer'" in said
    with pytest.raises(InvalidArguments, match="'secret-3' is not of type 'integer'"):
        c.check(["secret-3", 1], {})  # quoted by default, for the producer's own eyes
