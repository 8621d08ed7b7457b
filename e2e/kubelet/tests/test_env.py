"""Env resolution: literal values, valueFrom, envFrom, $(VAR) and the kubelet's errors."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from e2e.kubelet.downward import (  # noqa: E402
    DownwardError,
    field_value,
    format_map,
    parse_quantity,
    resource_value,
)
from e2e.kubelet.envresolve import ConfigError, resolve_env  # noqa: E402


class FakeSources:
    def __init__(self, secrets=None, config_maps=None):
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}
        self.reads = []

    def secret(self, namespace, name):
        self.reads.append(("secret", namespace, name))
        return self.secrets.get((namespace, name))

    def config_map(self, namespace, name):
        self.reads.append(("configmap", namespace, name))
        return self.config_maps.get((namespace, name))


POD = {
    "metadata": {
        "name": "web-1",
        "namespace": "team",
        "uid": "1234-abcd",
        "labels": {"app": "web", "tier": "front"},
        "annotations": {"note": 'say "hi"'},
    },
    "spec": {"nodeName": "node-a", "serviceAccountName": "runner", "containers": []},
}


def container(env=None, env_from=None, **extra):
    return {
        "name": "main",
        "image": "python:3.11",
        "env": env or [],
        "envFrom": env_from or [],
        **extra,
    }


def test_literals_expand_against_earlier_vars_only():
    env = resolve_env(
        POD,
        container(
            [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-b-$(C)"},
                {"name": "C", "value": "c"},
                {"name": "D", "value": "$$(A)"},
                {"name": "E"},
            ]
        ),
        FakeSources(),
    )
    assert env == {"A": "a", "B": "a-b-$(C)", "C": "c", "D": "$(A)", "E": ""}


def test_downward_api_fields():
    fields = {
        "NAME": "metadata.name",
        "NS": "metadata.namespace",
        "UID": "metadata.uid",
        "NODE": "spec.nodeName",
        "SA": "spec.serviceAccountName",
        "POD_IP": "status.podIP",
        "HOST_IP": "status.hostIP",
        "APP": "metadata.labels['app']",
        "MISSING": "metadata.labels['nope']",
        "NOTE": "metadata.annotations['note']",
        "LABELS": "metadata.labels",
    }
    env = resolve_env(
        POD,
        container(
            [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in fields.items()]
        ),
        FakeSources(),
    )
    assert env == {
        "NAME": "web-1",
        "NS": "team",
        "UID": "1234-abcd",
        "NODE": "node-a",
        "SA": "runner",
        "POD_IP": "127.0.0.1",
        "HOST_IP": "127.0.0.1",
        "APP": "web",
        "MISSING": "",
        "NOTE": 'say "hi"',
        "LABELS": 'app="web"\ntier="front"',
    }


def test_value_from_is_not_expanded_but_later_literals_see_it():
    sources = FakeSources(secrets={("team", "s"): {"url": "redis://$(HOST)"}})
    env = resolve_env(
        POD,
        container(
            [
                {"name": "HOST", "value": "h"},
                {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "url"}}},
                {"name": "WRAPPED", "value": "<$(URL)>"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "hi $(POD)"},
            ]
        ),
        sources,
    )
    assert env["URL"] == "redis://$(HOST)"
    assert env["WRAPPED"] == "<redis://$(HOST)>"
    assert env["GREETING"] == "hi web-1"


def test_secret_and_config_map_keys():
    sources = FakeSources(
        secrets={("team", "creds"): {"password": "pw"}},
        config_maps={("team", "settings"): {"level": "debug"}},
    )
    env = resolve_env(
        POD,
        container(
            [
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {
                    "name": "LVL",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}},
                },
                {
                    "name": "PW2",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                },
            ]
        ),
        sources,
    )
    assert env == {"PW": "pw", "LVL": "debug", "PW2": "pw"}
    assert sources.reads.count(("secret", "team", "creds")) == 1  # read once per resolution


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"secretKeyRef": {"name": "nope", "key": "k"}}, 'secret "nope" not found'),
        (
            {"secretKeyRef": {"name": "creds", "key": "nope"}},
            "couldn't find key nope in Secret team/creds",
        ),
        ({"configMapKeyRef": {"name": "nope", "key": "k"}}, 'configmap "nope" not found'),
        (
            {"configMapKeyRef": {"name": "settings", "key": "nope"}},
            "couldn't find key nope in ConfigMap team/settings",
        ),
    ],
)
def test_missing_required_sources_name_what_is_missing(ref, message):
    sources = FakeSources(
        secrets={("team", "creds"): {"password": "pw"}},
        config_maps={("team", "settings"): {"level": "debug"}},
    )
    with pytest.raises(ConfigError) as raised:
        resolve_env(POD, container([{"name": "X", "valueFrom": ref}]), sources)
    assert str(raised.value) == message
    assert raised.value.reason == "CreateContainerConfigError"


def test_optional_missing_sources_are_skipped():
    sources = FakeSources(secrets={("team", "creds"): {"password": "pw"}})
    env = resolve_env(
        POD,
        container(
            [
                {"name": "X", "value": "kept"},
                {
                    "name": "X",
                    "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
                },
                {
                    "name": "Y",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k", "optional": True}},
                },
            ],
            [{"configMapRef": {"name": "absent", "optional": True}}],
        ),
        sources,
    )
    assert env == {"X": "kept"}


def test_env_from_with_prefix_then_env_overrides():
    sources = FakeSources(
        secrets={("team", "s"): {"TOKEN": "t", "bad=key": "x"}},
        config_maps={("team", "c"): {"LEVEL": "info", "TOKEN": "from-cm"}},
    )
    env = resolve_env(
        POD,
        container(
            [
                {"name": "LEVEL", "value": "debug"},
                {"name": "BOTH", "value": "$(TOKEN)/$(APP_LEVEL)"},
            ],
            [
                {"configMapRef": {"name": "c"}},
                {"secretRef": {"name": "s"}},
                {"configMapRef": {"name": "c"}, "prefix": "APP_"},
            ],
        ),
        sources,
    )
    assert env["TOKEN"] == "t"  # the later envFrom source wins
    assert env["APP_LEVEL"] == "info" and env["APP_TOKEN"] == "from-cm"
    assert env["LEVEL"] == "debug"  # env overrides envFrom
    assert env["BOTH"] == "t/info"  # literals expand against envFrom values
    assert "bad=key" not in env


def test_env_from_missing_required_source():
    with pytest.raises(ConfigError, match='secret "s" not found'):
        resolve_env(POD, container(env_from=[{"secretRef": {"name": "s"}}]), FakeSources())


def test_resource_field_ref():
    limited = container(
        resources={"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "250m"}}
    )
    allocatable = {"cpu": "8", "memory": "16Gi"}
    assert resource_value(limited, "limits.cpu", None, allocatable) == "1"
    assert resource_value(limited, "limits.cpu", "1m", allocatable) == "500"
    assert resource_value(limited, "limits.memory", "1Mi", allocatable) == "256"
    assert resource_value(limited, "requests.cpu", "1m", allocatable) == "250"
    assert resource_value(limited, "requests.memory", None, allocatable) == "0"
    assert resource_value(container(), "limits.cpu", None, allocatable) == "8"  # node allocatable
    env = resolve_env(
        POD,
        {
            **limited,
            "env": [
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
            ],
        },
        FakeSources(),
        allocatable,
    )
    assert env == {"MEM": str(256 * 2**20)}


def test_quantities():
    assert parse_quantity("500m") * 1000 == 500
    assert parse_quantity("1Ki") == 1024
    assert parse_quantity("1.5G") == 1_500_000_000
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(2) == 2
    with pytest.raises(DownwardError):
        parse_quantity("lots")


def test_unsupported_field_path_is_a_config_error():
    with pytest.raises(DownwardError):
        field_value(POD, "spec.containers")
    with pytest.raises(ConfigError, match="unsupported fieldPath"):
        resolve_env(
            POD,
            container([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "nope"}}}]),
            FakeSources(),
        )


def test_format_map_quotes_values():
    assert format_map({"b": "2", "a": 'x"y'}) == 'a="x\\"y"\nb="2"'
