"""Static checks of the CRD: structural schema, defaults that satisfy their own
constraints, CEL messages that name fields, and the examples fitting the schema.
(The real API server validates it in e2e/tests/test_operator.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ebbtide_operator import naming
from ebbtide_operator import spec as spec_module

ROOT = Path(__file__).parents[3]
CRD = yaml.safe_load((ROOT / "crds" / "taskqueue.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def walk(node: dict, path: str = ""):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def violations(node: dict, value: Any, path: str) -> list[str]:
    """The subset of OpenAPI v3 validation the CRD uses."""
    kind = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return [f"{path}: expected an int or a string, got {value!r}"]
        if isinstance(value, int):
            return []
        kind = "string"
    if kind and (
        not isinstance(value, TYPES[kind])
        or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return [f"{path}: expected {kind}, got {value!r}"]
    errors = []
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if "minimum" in node and value < node["minimum"]:
        errors.append(f"{path}: {value} < {node['minimum']}")
    if "maximum" in node and value > node["maximum"]:
        errors.append(f"{path}: {value} > {node['maximum']}")
    if "pattern" in node and not re.search(node["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {node['pattern']}")
    if "minLength" in node and len(value) < node["minLength"]:
        errors.append(f"{path}: shorter than {node['minLength']}")
    if "minItems" in node and len(value) < node["minItems"]:
        errors.append(f"{path}: fewer than {node['minItems']} items")
    if kind == "object":
        for key in node.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        props = node.get("properties") or {}
        for key, child in value.items():
            if key in props:
                errors += violations(props[key], child, f"{path}.{key}")
            elif not node.get("x-kubernetes-preserve-unknown-fields") and path != ".metadata":
                errors.append(f"{path}.{key}: unknown field")
    if kind == "array":
        for i, item in enumerate(value):
            errors += violations(node["items"], item, f"{path}[{i}]")
    return errors


def test_identity():
    assert CRD["spec"]["group"] == "ebbtide.dev"
    assert CRD["spec"]["names"]["kind"] == "TaskQueue"
    assert "tq" in CRD["spec"]["names"]["shortNames"]
    assert VERSION["name"] == "v1alpha1"
    assert VERSION["subresources"] == {"status": {}}


def test_schema_is_structural():
    for path, node in walk(SCHEMA):
        open_ended = node.get("x-kubernetes-preserve-unknown-fields")
        int_or_string = node.get("x-kubernetes-int-or-string")
        assert "type" in node or open_ended or int_or_string, path
        if int_or_string:
            assert "type" not in node, path  # structural: no type beside int-or-string


def test_every_field_has_a_description():
    """`kubectl explain taskqueue.spec...` shows them: no field without one."""
    undocumented = [
        path or "<root>"
        for path, node in walk(SCHEMA)
        if not node.get("description") and path != ".metadata"
    ]
    assert undocumented == []
    # The API server rejects a CRD whose metadata schema says anything but its type.
    assert SCHEMA["properties"]["metadata"] == {"type": "object"}


# The API machinery's resource.Quantity regex (k8s.io/apimachinery, OpenAPI of Quantity).
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def test_the_pvc_size_is_a_kubernetes_quantity():
    size = MANAGED["properties"]["persistence"]["properties"]["size"]
    assert size["x-kubernetes-int-or-string"] is True
    assert size["pattern"] == QUANTITY
    for good in ("1Gi", "512Mi", "10G", "1.5Gi", "1e3", "100", "0.5Ti", "2Pi"):
        assert re.search(size["pattern"], good), good
    for bad in ("1GB", "Gi", "1 Gi", "-", "1Gi ", "ten"):
        assert not re.search(size["pattern"], bad), bad


def test_defaults_satisfy_their_own_constraints():
    found = 0
    for path, node in walk(SCHEMA):
        if "default" in node:
            found += 1
            assert (
                violations(
                    {k: v for k, v in node.items() if k != "required"}, node["default"], path
                )
                == []
            )
    assert found >= 15


def test_cel_messages_name_fields():
    rules = [r for _, node in walk(SCHEMA) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 4
    for rule in rules:
        assert re.search(r"(spec|metadata)\.\w+", rule["message"]), rule


def test_printer_columns():
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    for name in ("Broker", "Backlog", "Oldest", "Drain", "Replicas", "Ready", "Age"):
        assert name in columns and columns[name].get("priority", 0) == 0
    for name in ("In-Flight", "Lambda", "Mu", "Desired", "Producer-Secret"):
        assert columns[name]["priority"] == 1
    # Degraded reads True/False, not a reason (`AsExpected` when nothing was wrong).
    assert columns["Degraded"]["jsonPath"] == '.status.conditions[?(@.type=="Degraded")].status'
    status_props = SCHEMA["properties"]["status"]["properties"]
    for column in columns.values():
        path = column["jsonPath"]
        if path.startswith(".status.") and "conditions" not in path:
            *parents, leaf = path.removeprefix(".status.").split(".")
            props = status_props
            for parent in parents:
                props = props[parent]["properties"]
            assert leaf in props, path


def test_every_spec_field_is_documented():
    doc = (ROOT / "docs" / "taskqueue-spec.md").read_text()
    for path, _ in walk(SCHEMA["properties"]["spec"]):
        if path:
            leaf = path.replace("[]", "").rsplit(".", 1)[-1]
            assert re.search(rf"`([\w.]+\.)?{leaf}`", doc), path


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("taskqueue-*.yaml")), ids=lambda p: p.name
)
def test_examples_fit_the_schema(path):
    manifest = yaml.safe_load(path.read_text())
    assert violations(SCHEMA, manifest, "") == []


BROKER = SCHEMA["properties"]["spec"]["properties"]["broker"]
MANAGED = BROKER["properties"]["managed"]


def rules(node: dict) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_managed_is_allowed_for_every_broker_type():
    """Managed RabbitMQ is provisioned now: no rule ties `managed` to redis any more."""
    for rule in rules(BROKER):
        assert "self.type == 'redis'" not in rule, rule
    assert BROKER["properties"]["type"]["enum"] == ["redis", "rabbitmq"]


def test_type_dependent_defaults_are_left_to_the_operator():
    """A schema default would give a RabbitMQ the Redis image (and Redis' persistence)."""
    image = MANAGED["properties"]["image"]
    enabled = MANAGED["properties"]["persistence"]["properties"]["enabled"]
    assert "default" not in image and "default" not in enabled
    for kind, default in spec_module.DEFAULT_IMAGES.items():
        assert default in image["description"], kind
    assert image["maxLength"] <= 1024  # bounds the cost of the CEL regex below


def test_a_redis_image_for_rabbitmq_is_rejected_like_the_operator_does():
    (rule,) = [r for r in rules(BROKER) if "matches(" in r]
    pattern = re.search(r"matches\('([^']*)'\)", rule).group(1)
    assert pattern == spec_module.REDIS_IMAGE_PATTERN.pattern
    assert "self.type != 'rabbitmq'" in rule
    for image in ("redis:7.2-alpine", "docker.io/library/redis@sha256:0", "bitnami/redis"):
        assert re.search(pattern, image), image
    for image in ("rabbitmq:3.13-management", "registry.example.com/redis-tools/rabbitmq:3"):
        assert not re.search(pattern, image), image


@pytest.mark.parametrize(("kind", "condition"), [("rabbitmq", "'rabbitmq'"), ("redis", "'redis'")])
def test_managed_statefulset_names_fit_the_revision_hash_label(kind, condition):
    """`<name>-<suffix>-<10-char hash>` is a label value: at most 63 characters."""
    longest = 63 - 11 - len(naming.broker_name("", kind))
    matching = [r for r in rules(SCHEMA) if condition in r and "metadata.name.size()" in r]
    (rule,) = matching
    assert rule.endswith(f"self.metadata.name.size() <= {longest}")
    if kind == "redis":  # only a persistent Redis is a StatefulSet
        assert "persistence.enabled" in rule


def cel_queue_name_rule(name: str) -> bool:
    """The CEL rule on spec.queues[].name, evaluated for the handful of string functions
    it uses (startsWith, endsWith, contains joined by && and !)."""
    node = SCHEMA["properties"]["spec"]["properties"]["queues"]["items"]["properties"]["name"]
    (rule,) = [r["rule"] for r in node["x-kubernetes-validations"]]
    ok = True
    for clause in rule.split("&&"):
        m = re.fullmatch(r"\s*!self\.(startsWith|endsWith|contains)\('([^']*)'\)\s*", clause)
        assert m, f"unexpected clause {clause!r}"
        fn, arg = m.groups()
        hit = {"startsWith": name.startswith, "endsWith": name.endswith}.get(fn, name.__contains__)
        ok = ok and not hit(arg)
    return ok


@pytest.mark.parametrize(
    "name", ["x.dead", "x.lost", "x.delay.100", "x.wait.5", "worker.a", "rate.t.1.2", "ok", "a.b"]
)
def test_the_crd_reserves_the_same_queue_names_as_the_runtime_and_the_operator(name):
    from ebbtide.message import reserved_queue_name

    assert cel_queue_name_rule(name) == (reserved_queue_name(name) is None)


# Deprecated fractional durations, still accepted so old manifests apply (spec.py).
FRACTIONAL_DURATIONS = {".scaling.initialTaskSeconds"}


def test_spec_durations_are_integers_with_a_minimum():
    """The API conventions: a duration is an integer with its unit in the name."""
    durations = [
        (path, node)
        for path, node in walk(SCHEMA["properties"]["spec"])
        if re.search(r"(Seconds|Milliseconds)$", path)
    ]
    assert len(durations) >= 7, [p for p, _ in durations]
    for path, node in durations:
        if path in FRACTIONAL_DURATIONS:
            assert node["type"] == "number" and "Deprecated" in node["description"], path
            assert "default" not in node, f"{path}: a default would hide the new field"
            continue
        assert node["type"] == "integer", path
        assert "minimum" in node, path
