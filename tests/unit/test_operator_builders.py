"""The object builders are pure: given a TaskQueue body they return the exact objects."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import pytest
import yaml
from ebbtide_operator import naming, provision
from ebbtide_operator.build import common, redis, worker
from ebbtide_operator.build.merge import is_subset
from ebbtide_operator.spec import parse_spec

EXAMPLES = Path(__file__).parents[2] / "examples"


def body(spec: dict, name: str = "tq1", namespace: str = "ns1") -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-123", "generation": 1},
        "spec": spec,
    }


def managed_spec(**persistence) -> dict:
    return {
        "broker": {"type": "redis", "managed": {"persistence": persistence}},
        "queues": [{"name": "default"}],
        "worker": {"image": "w:1", "app": "m.tasks:app"},
    }


def owner_ok(obj: dict) -> None:
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-123"
    assert ref["kind"] == "TaskQueue"
    assert ref["controller"] is True
    assert obj["metadata"]["namespace"] == "ns1"


def test_secret_holds_password_and_url():
    owner = body(managed_spec())
    secret = redis.redis_secret(owner, "s3cret")
    owner_ok(secret)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["password"] == "s3cret"
    assert data["url"] == "redis://:s3cret@tq1-redis.ns1.svc:6379/0"


def test_generated_passwords_are_long_and_distinct():
    a, b = common.generate_password(), common.generate_password()
    assert a != b and len(a) >= 40


def test_ephemeral_redis_is_a_deployment_with_requirepass_and_hardening():
    owner = body(managed_spec())
    spec = parse_spec(owner["spec"])
    workload = redis.redis_workload(owner, spec.broker.managed)
    owner_ok(workload)
    assert workload["kind"] == "Deployment"
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert "--appendonly" in container["args"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "tq1-broker"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_persistent_redis_is_a_statefulset_with_aof_and_pvc_policy(policy):
    owner = body(managed_spec(enabled=True, size="5Gi", deletionPolicy=policy))
    spec = parse_spec(owner["spec"])
    sts = redis.redis_workload(owner, spec.broker.managed)
    owner_ok(sts)
    assert sts["kind"] == "StatefulSet"
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == policy
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_service_and_network_policy_select_the_redis_pods():
    owner = body(managed_spec())
    service = redis.redis_service(owner)
    policy = redis.redis_network_policy(owner)
    owner_ok(service)
    owner_ok(policy)
    assert service["spec"]["selector"] == naming.redis_selector("tq1")
    assert policy["spec"]["podSelector"]["matchLabels"] == naming.redis_selector("tq1")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": naming.worker_selector("tq1")}} in peers
    assert {"podSelector": {"matchLabels": {"ebbtide.dev/producer": "tq1"}}} in peers


def test_worker_deployment_command_env_probes_and_security():
    raw = managed_spec()
    raw["queues"] = [{"name": "high"}, {"name": "low"}]
    raw["worker"].update(concurrency=8, metricsPort=9200, terminationGracePeriodSeconds=90)
    owner = body(raw)
    deployment = worker.worker_deployment(owner, parse_spec(raw), replicas=3)
    owner_ok(deployment)
    assert deployment["spec"]["replicas"] == 3
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["ebbtide"]
    assert container["args"] == [
        "worker",
        "m.tasks:app",
        "--queues",
        "high,low",
        "--concurrency",
        "8",
        "--metrics-port",
        "9200",
        "--grace-seconds",
        "85",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["EBBTIDE_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tq1-broker",
        "key": "url",
    }
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 9200
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9200"
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )


def test_external_broker_url_comes_from_the_users_secret():
    raw = managed_spec()
    raw["broker"] = {"type": "redis", "external": {"secretRef": {"name": "mine", "key": "u"}}}
    deployment = worker.worker_deployment(body(raw), parse_spec(raw), replicas=0)
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "u"}


def test_strict_order_and_weights_reach_the_worker_args():
    raw = managed_spec()
    raw["queues"] = [{"name": "a", "weight": 3}, {"name": "b"}]
    args = worker.worker_args(parse_spec(raw))
    assert args[args.index("--queues") + 1] == "a:3,b:1"
    raw["queueOrder"] = "strict"
    args = worker.worker_args(parse_spec(raw))
    assert args[args.index("--queues") + 1] == "a,b"
    assert args[-1] == "--strict"


def test_pod_template_override_merges_without_breaking_selector():
    raw = managed_spec()
    raw["worker"]["podTemplate"] = {
        "metadata": {"labels": {"team": "x", naming.TASKQUEUE_LABEL: "hijack"}},
        "spec": {
            "nodeSelector": {"disk": "ssd"},
            "containers": [{"name": "worker", "env": [{"name": "EXTRA", "value": "1"}]}],
        },
    }
    template = worker.worker_pod_template("tq1", parse_spec(raw))
    assert template["metadata"]["labels"]["team"] == "x"
    assert template["metadata"]["labels"][naming.TASKQUEUE_LABEL] == "tq1"
    assert template["spec"]["nodeSelector"] == {"disk": "ssd"}
    (container,) = template["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert "EXTRA" in names and "EBBTIDE_BROKER_URL" in names
    assert container["image"] == "w:1"


def test_spec_changes_change_the_hash_and_equal_specs_do_not():
    raw = managed_spec()
    a = worker.worker_pod_template("tq1", parse_spec(raw))
    b = worker.worker_pod_template("tq1", parse_spec(copy.deepcopy(raw)))
    raw["worker"]["image"] = "w:2"
    c = worker.worker_pod_template("tq1", parse_spec(raw))
    key = naming.SPEC_HASH_ANNOTATION
    assert a["metadata"]["annotations"][key] == b["metadata"]["annotations"][key]
    assert a["metadata"]["annotations"][key] != c["metadata"]["annotations"][key]


def test_scaling_changes_do_not_roll_the_pods():
    raw = managed_spec()
    a = worker.worker_pod_template("tq1", parse_spec(raw))
    raw["scaling"] = {"maxReplicas": 50, "targetBacklogSeconds": 5}
    b = worker.worker_pod_template("tq1", parse_spec(raw))
    assert a == b


def test_template_patch_never_touches_replicas():
    raw = managed_spec()
    deployment = worker.worker_deployment(body(raw), parse_spec(raw), replicas=4)
    patch = worker.template_patch(deployment)
    assert "replicas" not in patch["spec"]
    assert patch["spec"]["template"] == deployment["spec"]["template"]


def test_live_template_with_server_defaults_is_not_drift():
    raw = managed_spec()
    raw["worker"]["resources"] = {"requests": {"cpu": "0.5", "memory": "1024Mi"}}
    wanted = worker.worker_pod_template("tq1", parse_spec(raw))
    live = copy.deepcopy(wanted)
    container = live["spec"]["containers"][0]
    container.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
    container["resources"]["requests"] = {"cpu": "500m", "memory": "1Gi"}
    live["spec"]["dnsPolicy"] = "ClusterFirst"
    assert is_subset(wanted, live)
    container["image"] = "evil:latest"
    assert not is_subset(wanted, live)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("taskqueue-*.yaml")), ids=lambda p: p.name)
def test_examples_build(path):
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"].update(namespace="default", uid="u")
    spec = parse_spec(manifest["spec"])
    deployment = worker.worker_deployment(manifest, spec, replicas=spec.scaling.min_replicas)
    assert deployment["metadata"]["name"] == f"{manifest['metadata']['name']}-worker"
    for obj in provision.desired_broker_objects(manifest, spec):
        assert obj["metadata"]["name"].startswith(f"{manifest['metadata']['name']}-")
