"""Spec parsing: defaults match the CRD's, and bad input names the field."""

from __future__ import annotations

import re

import pytest
from ebbtide_operator.spec import (
    DEFAULT_RABBITMQ_IMAGE,
    DEFAULT_REDIS_IMAGE,
    IssuerRef,
    SecretRef,
    SpecError,
    parse_spec,
)


def minimal() -> dict:
    return {
        "broker": {"external": {"secretRef": {"name": "s"}}},
        "queues": [{"name": "q"}],
        "worker": {"image": "w", "app": "m:app"},
    }


def test_defaults():
    spec = parse_spec(minimal())
    assert spec.broker.type == "redis"
    assert spec.broker.external.key == "url"
    assert spec.scaling.min_replicas == 0 and spec.scaling.max_replicas == 10
    assert spec.scaling.poll_seconds == 5.0 and spec.scaling.target_backlog_seconds == 30.0
    assert spec.scaling.fallback_replicas is None and spec.scaling.paused is False
    assert spec.worker.concurrency == 4 and spec.scaling.concurrency == 4
    assert spec.worker.processes == 1
    assert spec.queues[0].target_backlog_seconds == 30.0
    assert spec.queue_order == "weighted"


@pytest.mark.parametrize(
    ("kind", "image", "persistent"),
    [("redis", DEFAULT_REDIS_IMAGE, True), ("rabbitmq", DEFAULT_RABBITMQ_IMAGE, True)],
)
def test_managed_brokers_are_durable_by_default(kind, image, persistent):
    raw = minimal()
    raw["broker"] = {"type": kind, "managed": {"persistence": {"size": "3Gi"}}}
    managed = parse_spec(raw).broker.managed
    assert managed.image == image
    assert managed.persistence.enabled is persistent
    assert managed.persistence.size == "3Gi" and managed.persistence.deletion_policy == "Retain"
    raw["broker"]["managed"]["persistence"]["enabled"] = not persistent
    assert parse_spec(raw).broker.managed.persistence.enabled is (not persistent)


def test_managed_rabbitmq_is_accepted_with_its_own_image():
    raw = minimal()
    raw["broker"] = {"type": "rabbitmq", "managed": {"image": "rabbitmq:3.13.7"}}
    spec = parse_spec(raw)
    assert spec.broker.type == "rabbitmq" and spec.broker.managed.image == "rabbitmq:3.13.7"


def test_queue_target_defaults_to_scaling_target():
    raw = minimal()
    raw["scaling"] = {"targetBacklogSeconds": 12}
    raw["queues"] = [{"name": "a"}, {"name": "b", "targetBacklogSeconds": 3}]
    spec = parse_spec(raw)
    assert [q.target_backlog_seconds for q in spec.queues] == [12.0, 3.0]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["broker"].update(managed={}), "spec.broker.managed"),
        (lambda s: s["broker"].pop("external"), "spec.broker.managed"),
        (lambda s: s["broker"].update(type="kafka"), "spec.broker.type"),
        (
            lambda s: s.update(
                broker={"type": "rabbitmq", "managed": {"image": "docker.io/library/redis:7"}}
            ),
            "spec.broker.managed.image",
        ),
        (lambda s: s.update(queues=[]), "spec.queues"),
        (lambda s: s.update(queues=[{"name": "a"}, {"name": "a"}]), "spec.queues[1].name"),
        (lambda s: s["worker"].update(app="nocolon"), "spec.worker.app"),
        (lambda s: s["worker"].pop("image"), "spec.worker.image"),
        (
            lambda s: s.update(scaling={"minReplicas": 5, "maxReplicas": 2}),
            "spec.scaling.minReplicas",
        ),
        (lambda s: s.update(scaling={"pollSeconds": "fast"}), "spec.scaling.pollSeconds"),
        (lambda s: s.update(queueOrder="random"), "spec.queueOrder"),
        (lambda s: s["broker"].update(allowedNamespaces=["x"]), "spec.broker.allowedNamespaces"),
        (
            lambda s: s.update(broker={"managed": {}, "allowedNamespaces": ["Not_A_Name"]}),
            "spec.broker.allowedNamespaces",
        ),
    ],
)
def test_bad_specs_name_the_field(mutate, field):
    raw = minimal()
    mutate(raw)
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(raw)


def test_key_prefix_defaults_and_is_checked_naming_the_field():
    raw = minimal()
    assert parse_spec(raw).broker.key_prefix == "ebbtide"
    raw["broker"]["keyPrefix"] = "billing"
    assert parse_spec(raw).broker.key_prefix == "billing"
    raw["broker"]["keyPrefix"] = "Bad Prefix"
    with pytest.raises(SpecError, match=r"spec\.broker\.keyPrefix .*'Bad Prefix'"):
        parse_spec(raw)


def test_allowed_namespaces_are_deduplicated_and_sorted():
    raw = minimal()
    raw["broker"] = {"type": "redis", "managed": {}, "allowedNamespaces": ["b", "a", "b"]}
    assert parse_spec(raw).broker.allowed_namespaces == ("a", "b")
    assert parse_spec(minimal()).broker.allowed_namespaces == ()


@pytest.mark.parametrize(
    "name", ["x.dead", "x.lost", "x.delay.100", "x.wait.1300", "worker.a", "rate.t.1.2"]
)
def test_a_queue_name_that_collides_with_ebbtides_own_queues_is_refused_naming_it(name):
    raw = minimal()
    raw["queues"] = [{"name": name}]
    with pytest.raises(
        SpecError, match=rf"spec\.queues\[0\]\.name '{re.escape(name)}' is reserved"
    ):
        parse_spec(raw)


@pytest.mark.parametrize("name", ["dead", "x.deadline", "delay.x", "worker", "rates.x", "a.b"])
def test_names_near_the_reserved_ones_are_fine(name):
    raw = minimal()
    raw["queues"] = [{"name": name}]
    assert parse_spec(raw).queues[0].name == name


# --- spec.broker.tls ------------------------------------------------------------------


def _tls_spec(tls: dict | None, managed: bool = True) -> dict:
    broker: dict = {"type": "redis"}
    if managed:
        broker["managed"] = {}
    else:
        broker["external"] = {"secretRef": {"name": "mine"}}
    if tls is not None:
        broker["tls"] = tls
    return {"broker": broker, "queues": [{"name": "q"}], "worker": {"image": "w", "app": "m:a"}}


def test_tls_is_on_by_default_for_a_managed_broker():
    broker = parse_spec(_tls_spec(None)).broker
    assert broker.managed_tls and broker.tls.issuer is None
    assert broker.ca_secret("tq") == SecretRef("tq-broker-ca", "ca.crt")


def test_tls_opt_out_and_cert_manager():
    assert not parse_spec(_tls_spec({"enabled": False})).broker.managed_tls
    assert parse_spec(_tls_spec({"enabled": False})).broker.ca_secret("tq") is None
    broker = parse_spec(_tls_spec({"issuerRef": {"name": "corp"}})).broker
    assert broker.tls.issuer == IssuerRef("corp", "Issuer", "cert-manager.io")
    assert broker.ca_secret("tq") == SecretRef("tq-broker-tls", "ca.crt")


def test_external_tls_refs():
    tls = {
        "caSecretRef": {"name": "corp-ca", "key": "bundle.pem"},
        "clientCertSecretRef": {"name": "me"},
    }
    broker = parse_spec(_tls_spec(tls, managed=False)).broker
    assert not broker.managed_tls
    assert broker.ca_secret("tq") == SecretRef("corp-ca", "bundle.pem")
    assert broker.tls.client_cert_secret == "me"
    assert parse_spec(_tls_spec(None, managed=False)).broker.ca_secret("tq") is None


@pytest.mark.parametrize(
    "tls, managed, message",
    [
        (
            {"caSecretRef": {"name": "x"}},
            True,
            "spec.broker.tls.caSecretRef applies to an external",
        ),
        (
            {"clientCertSecretRef": {"name": "x"}},
            True,
            "clientCertSecretRef applies to an external",
        ),
        ({"enabled": False}, False, "spec.broker.tls.enabled applies to a managed broker only"),
        ({"issuerRef": {"name": "x"}}, False, "spec.broker.tls.issuerRef applies to a managed"),
        ({"enabled": "no"}, True, "spec.broker.tls.enabled must be true or false, got 'no'"),
        (
            {"issuerRef": {"name": "x"}, "enabled": False},
            True,
            "issuerRef needs spec.broker.tls.enabled",
        ),
        ({"issuerRef": {}}, True, "spec.broker.tls.issuerRef.name is required"),
        ({"caSecretRef": {"key": "k"}}, False, "spec.broker.tls.caSecretRef.name is required"),
        ("yes", True, "spec.broker.tls must be an object"),
    ],
)
def test_bad_tls_settings_name_the_field(tls, managed, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(_tls_spec(tls, managed))


def test_durations_are_whole_seconds_and_old_fractional_ones_are_still_read():
    raw = minimal()
    raw["scaling"] = {
        "targetBacklogSeconds": 20,
        "pollSeconds": 2,
        "scaleDownStabilizationSeconds": 45,
        "scaleToZeroIdleSeconds": 300,
    }
    raw["queues"] = [{"name": "a", "targetBacklogSeconds": 7}]
    spec = parse_spec(raw)
    assert (spec.scaling.target_backlog_seconds, spec.scaling.poll_seconds) == (20.0, 2.0)
    assert spec.scaling.scale_down_stabilization_seconds == 45.0
    assert spec.scaling.scale_to_zero_idle_seconds == 300.0
    assert spec.queues[0].target_backlog_seconds == 7.0
    # Written before the CRD took integers: the API server still serves them as stored.
    raw["scaling"] = {"targetBacklogSeconds": 12.5, "pollSeconds": 1.5}
    raw["queues"] = [{"name": "a", "targetBacklogSeconds": 2.25}]
    spec = parse_spec(raw)
    assert (spec.scaling.target_backlog_seconds, spec.scaling.poll_seconds) == (12.5, 1.5)
    assert spec.queues[0].target_backlog_seconds == 2.25


def test_initial_task_milliseconds_win_over_the_deprecated_seconds():
    raw = minimal()
    assert parse_spec(raw).scaling.initial_task_seconds == 1.0
    raw["scaling"] = {"initialTaskSeconds": 0.05}  # an old object's fractional seconds
    assert parse_spec(raw).scaling.initial_task_seconds == 0.05
    raw["scaling"] = {"initialTaskSeconds": 1, "initialTaskMilliseconds": 250}
    assert parse_spec(raw).scaling.initial_task_seconds == 0.25


@pytest.mark.parametrize(
    ("scaling", "field"),
    [
        ({"scaleToZeroIdleSeconds": -1}, r"spec\.scaling\.scaleToZeroIdleSeconds must be >= 0"),
        ({"initialTaskMilliseconds": 0}, r"spec\.scaling\.initialTaskMilliseconds must be >= 1"),
        (
            {"initialTaskMilliseconds": 1.5},
            r"spec\.scaling\.initialTaskMilliseconds must be an integer",
        ),
        ({"initialTaskSeconds": 0}, r"spec\.scaling\.initialTaskSeconds must be > 0"),
        ({"pollSeconds": True}, r"spec\.scaling\.pollSeconds must be a number"),
    ],
)
def test_bad_durations_name_the_field(scaling, field):
    raw = minimal()
    raw["scaling"] = scaling
    with pytest.raises(SpecError, match=field):
        parse_spec(raw)


@pytest.mark.parametrize("value", [0, 65, "2", True])
def test_bad_processes_name_the_field(value):
    raw = minimal()
    raw["worker"]["processes"] = value
    with pytest.raises(SpecError, match=r"spec\.worker\.processes"):
        parse_spec(raw)


@pytest.mark.parametrize("value", ["0-1", "AUTO", 1, None])
def test_a_bad_cpu_affinity_names_the_field(value):
    raw = minimal()
    raw["worker"]["cpuAffinity"] = value
    with pytest.raises(SpecError, match=r"spec\.worker\.cpuAffinity must be none or auto"):
        parse_spec(raw)
