"""The argument check (signature, type hints, JSON Schema) and the worker's size rule."""

from __future__ import annotations

from typing import Annotated

import ebbtide
import pytest
from ebbtide.errors import InvalidArguments
from ebbtide.validation import (
    ArgumentCheck,
    content_problem,
    content_size,
    stored_size_problem,
)
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
    assert stored_size_problem(1000, 1000) is None
    assert stored_size_problem(2000 + (64 << 10), 1000) is None
    reason = stored_size_problem(2001 + (64 << 10), 1000)
    assert reason is not None and "limit of 1000 bytes" in reason and "not decoded" in reason


def test_content_size_leaves_out_what_the_worker_wrote():
    body = {"id": "x", "task": "t", "args": ["a" * 50], "kwargs": {}}
    with_worker_fields = {**body, "attempt": 3, "error": "e" * 500, "traceback": "t" * 500}
    assert content_size(with_worker_fields) == content_size(body)
    assert content_problem(body, 1000) is None
    reason = content_problem(body, 50)
    assert reason is not None and "payload of task 't' is" in reason and "limit of 50" in reason
