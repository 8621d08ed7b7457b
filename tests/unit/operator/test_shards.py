"""Sharded queues in the operator: spec parsing, the workers' env, the summed statistics
the policy sees, and the drained shrink (status.shards)."""

from __future__ import annotations

import pytest
from ebbtide.brokers.base import BrokerStats, QueueStats
from ebbtide.shards import sum_shards
from ebbtide_operator import observe, shards
from ebbtide_operator.build import worker
from ebbtide_operator.spec import SpecError, parse_spec


def raw(**queue) -> dict:
    return {
        "broker": {"external": {"secretRef": {"name": "s"}}},
        "queues": [{"name": "emails", **queue}, {"name": "other"}],
        "worker": {"image": "w", "app": "m:app"},
    }


def owner(spec: dict, status: dict | None = None) -> dict:
    body = {"metadata": {"name": "tq", "namespace": "ns", "uid": "u"}, "spec": spec}
    if status is not None:
        body["status"] = status
    return body


def test_shards_default_to_one_and_are_bounded():
    assert parse_spec(raw()).queues[0].shards == 1
    spec = parse_spec(raw(shards=4))
    assert spec.broker_queues() == ["emails", "emails~1", "emails~2", "emails~3", "other"]
    assert spec.broker_queues({"emails": 6})[-3:] == ["emails~4", "emails~5", "other"]
    for bad in (0, 257, "8", True):
        with pytest.raises(SpecError, match=r"spec\.queues\[0\]\.shards"):
            parse_spec(raw(shards=bad))


def env_of(body: dict) -> dict[str, str]:
    deployment = worker.worker_deployment(body, parse_spec(body["spec"]), replicas=1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_workers_get_every_count_and_the_shards_still_drained():
    env = env_of(owner(raw(shards=4)))
    assert env["EBBTIDE_SHARDS"] == "emails=4,other=1"
    assert "EBBTIDE_DRAIN_SHARDS" not in env
    shrunk = env_of(owner(raw(shards=2), {"shards": {"emails": 4}}))
    assert shrunk["EBBTIDE_SHARDS"] == "emails=2,other=1"
    assert shrunk["EBBTIDE_DRAIN_SHARDS"] == "emails=4"
    # No queue sharded: no shard env, so an operator upgrade rolls no unsharded pods.
    assert not {"EBBTIDE_SHARDS", "EBBTIDE_DRAIN_SHARDS"} & set(env_of(owner(raw())))
    unsharding = env_of(owner(raw(), {"shards": {"emails": 2}}))
    assert (unsharding["EBBTIDE_SHARDS"], unsharding["EBBTIDE_DRAIN_SHARDS"]) == (
        "emails=1,other=1",
        "emails=2",
    )


def _q(name: str, **kw) -> QueueStats:
    return QueueStats(queue=name, **{"ready": 0, **kw})


def test_the_policy_sees_the_shards_summed():
    spec = parse_spec(raw(shards=2))
    stats = BrokerStats(
        now=100.0,
        queues={
            "emails": _q("emails", ready=3, oldest_ready_at=95.0, in_flight=1),
            "emails~1": _q("emails~1", ready=4, oldest_ready_at=70.0, delayed=2, dead=1),
            "other": _q("other", ready=1),
        },
    )
    obs = observe.build_observation(sum_shards(stats).stats, observe.Rates(), spec, 1, 1)
    emails = obs.queues[0]
    assert (emails.backlog, emails.in_flight, emails.delayed, emails.dead) == (7, 1, 2, 1)
    assert emails.oldest_age_s == 30.0
    assert obs.backlog == 8


def test_a_shrink_is_drained_before_its_shards_are_let_go():
    spec = parse_spec(raw(shards=2))
    counts = shards.drained({"shards": {"emails": 4, "gone": 9}}, spec)
    assert counts == {"emails": 4, "other": 1}
    assert shards.drain_extra(spec, counts) == {"emails": 4}

    def read(**ready: int) -> object:
        names = {"emails": "emails", "s1": "emails~1", "s2": "emails~2", "s3": "emails~3"}
        return sum_shards(
            BrokerStats(now=1.0, queues={names[k]: _q(names[k], ready=v) for k, v in ready.items()})
        )

    assert shards.next_drained(spec, counts, None) == counts  # unreachable: keep draining
    assert shards.next_drained(spec, counts, read(s2=0, s3=5))["emails"] == 4
    assert shards.next_drained(spec, counts, read(s2=5, s3=0))["emails"] == 3
    assert shards.next_drained(spec, counts, read(s1=9, s2=0, s3=0))["emails"] == 2
    in_flight = sum_shards(BrokerStats(now=1.0, queues={"emails~3": _q("emails~3", in_flight=1)}))
    assert shards.next_drained(spec, counts, in_flight)["emails"] == 4
    assert shards.status_field({"emails": 2, "other": 1}) == {"emails": 2}
    # Growing takes effect at once.
    assert shards.drained({"shards": {"emails": 2}}, parse_spec(raw(shards=8)))["emails"] == 8


def test_a_managed_rabbitmq_pre_declares_every_shard_for_the_producers():
    import json
    import re

    from ebbtide_operator import credentials, naming
    from ebbtide_operator.build import roles
    from support.taskqueue import decoded, managed_spec, taskqueue

    raw_spec = managed_spec("rabbitmq")
    raw_spec["queues"] = [{"name": "emails", "shards": 3}]
    body = taskqueue(raw_spec)
    creds = {role: roles.Credential(f"ebbtide-{role}", f"{role}-pw") for role in naming.ROLES}
    admin = roles.Credential("ebbtide-admin", "pw")
    secret = credentials.admin_secret(body, "rabbitmq", admin, creds, parse_spec(raw_spec))
    declared = {q["name"] for q in json.loads(decoded(secret)["definitions.json"])["queues"]}
    for shard in ("emails", "emails~1", "emails~2"):
        assert {f"ebbtide.{shard}", f"ebbtide.{shard}.dead"} <= declared
    # The producer may declare a shard's delay queues, as any queue's.
    wait = roles.rabbitmq_permissions("producer", "ebbtide")["configure"]
    assert re.fullmatch(wait, "ebbtide.emails~2.wait.5000")
