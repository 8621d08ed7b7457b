"""The worker Deployment builder: command, env, probes, hardening, the pod-template
override and the template hash that rolls the pods."""

from __future__ import annotations

import copy

from ebbtide_operator import naming
from ebbtide_operator.build import worker
from ebbtide_operator.spec import parse_spec
from support.taskqueue import assert_owned, managed_spec, taskqueue


def test_worker_deployment_command_env_probes_and_security():
    raw = managed_spec()
    raw["queues"] = [{"name": "high"}, {"name": "low"}]
    raw["worker"].update(concurrency=8, metricsPort=9200, terminationGracePeriodSeconds=90)
    owner = taskqueue(raw)
    deployment = worker.worker_deployment(owner, parse_spec(raw), replicas=3)
    assert_owned(deployment)
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
    assert "EBBTIDE_BROKER_URL" not in env  # a file, never an env var a subprocess inherits
    assert env["EBBTIDE_BROKER_URL_FILE"] == {
        "name": "EBBTIDE_BROKER_URL_FILE",
        "value": "/etc/ebbtide/broker/url",
    }
    assert url_secret_of(template) == {"name": "tq1-broker-worker", "key": "url"}
    assert pod["securityContext"]["fsGroup"] == worker.WORKER_UID  # may read the file
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EBBTIDE_KEY_PREFIX"]["value"] == "ebbtide"  # the operator reads stats under it
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["timeoutSeconds"] == 5  # not 1 s: a busy node is slow
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


def url_secret_of(template: dict) -> dict[str, str]:
    """The Secret and key mounted as the worker's broker URL file, checked to be
    mounted read-only where EBBTIDE_BROKER_URL_FILE points."""
    pod = template["spec"]
    (container,) = pod["containers"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == worker.BROKER_URL_VOLUME]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == worker.BROKER_URL_VOLUME]
    assert mount == {"name": "broker-url", "mountPath": "/etc/ebbtide/broker", "readOnly": True}
    secret = volume["secret"]
    assert secret["defaultMode"] == 0o440  # owner and group (fsGroup) only
    (item,) = secret["items"]  # only the URL key is projected, as the file `url`
    assert item["path"] == "url"
    return {"name": secret["secretName"], "key": item["key"]}


def test_broker_url_mount_is_one_function_of_the_secret_name_and_key():
    volume, mount = worker.broker_url_mount("s", "k")
    assert volume["secret"]["secretName"] == "s" and volume["secret"]["items"][0]["key"] == "k"
    assert mount["readOnly"] is True and mount["name"] == volume["name"]


def test_external_broker_url_comes_from_the_users_secret():
    raw = managed_spec()
    raw["broker"] = {"type": "redis", "external": {"secretRef": {"name": "mine", "key": "u"}}}
    deployment = worker.worker_deployment(taskqueue(raw), parse_spec(raw), replicas=0)
    assert url_secret_of(deployment["spec"]["template"]) == {"name": "mine", "key": "u"}


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
    assert "EXTRA" in names and "EBBTIDE_BROKER_URL_FILE" in names
    assert url_secret_of(template) == {"name": "tq1-broker-worker", "key": "url"}
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
    deployment = worker.worker_deployment(taskqueue(raw), parse_spec(raw), replicas=4)
    patch = worker.template_patch(deployment)
    assert "replicas" not in patch["spec"]
    assert patch["spec"]["template"] == deployment["spec"]["template"]


def test_workers_read_the_url_from_the_managed_secret_and_roll_on_a_type_switch():
    rabbit = parse_spec(taskqueue(managed_spec("rabbitmq"))["spec"])
    template = worker.worker_pod_template("tq1", rabbit)
    assert url_secret_of(template) == {"name": "tq1-broker-worker", "key": "url"}
    assert template["metadata"]["annotations"][naming.BROKER_TYPE_ANNOTATION] == "rabbitmq"
    redis_spec = taskqueue(managed_spec("rabbitmq"))["spec"]
    redis_spec["broker"] = {"type": "redis", "managed": {}}
    redis_template = worker.worker_pod_template("tq1", parse_spec(redis_spec))
    assert naming.BROKER_TYPE_ANNOTATION not in redis_template["metadata"]["annotations"]
    hash_key = naming.SPEC_HASH_ANNOTATION
    assert (
        template["metadata"]["annotations"][hash_key]
        != redis_template["metadata"]["annotations"][hash_key]
    )


def _env_and_mounts(raw: dict) -> tuple[dict, list, list]:
    owner = taskqueue(raw)
    pod = worker.worker_deployment(owner, parse_spec(raw), replicas=1)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return env, container["volumeMounts"], pod["volumes"]


def test_workers_mount_the_managed_brokers_ca_and_are_told_where_it_is():
    env, mounts, volumes = _env_and_mounts(managed_spec())
    assert env["EBBTIDE_BROKER_CA_FILE"] == "/etc/ebbtide/broker-ca/ca.crt"
    assert {"name": "broker-ca", "mountPath": "/etc/ebbtide/broker-ca", "readOnly": True} in mounts
    (volume,) = [v for v in volumes if v["name"] == "broker-ca"]
    assert volume["secret"] == {
        "secretName": "tq1-broker-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert "EBBTIDE_BROKER_CERT_FILE" not in env


def test_no_ca_without_tls_and_cert_managers_ca_from_the_tls_secret():
    raw = managed_spec()
    raw["broker"]["tls"] = {"enabled": False}
    env, mounts, _ = _env_and_mounts(raw)
    assert "EBBTIDE_BROKER_CA_FILE" not in env and all(m["name"] != "broker-ca" for m in mounts)
    raw["broker"]["tls"] = {"issuerRef": {"name": "corp"}}
    _, _, volumes = _env_and_mounts(raw)
    (volume,) = [v for v in volumes if v["name"] == "broker-ca"]
    assert volume["secret"]["secretName"] == "tq1-broker-tls"


def test_external_ca_and_client_certificate_are_mounted():
    raw = managed_spec()
    raw["broker"] = {
        "type": "redis",
        "external": {"secretRef": {"name": "url"}},
        "tls": {
            "caSecretRef": {"name": "corp-ca", "key": "b.pem"},
            "clientCertSecretRef": {"name": "me"},
        },
    }
    env, mounts, volumes = _env_and_mounts(raw)
    assert env["EBBTIDE_BROKER_CA_FILE"] == "/etc/ebbtide/broker-ca/ca.crt"
    assert env["EBBTIDE_BROKER_CERT_FILE"] == "/etc/ebbtide/broker-client/tls.crt"
    assert env["EBBTIDE_BROKER_KEY_FILE"] == "/etc/ebbtide/broker-client/tls.key"
    by_name = {v["name"]: v.get("secret") for v in volumes}
    assert by_name["broker-ca"]["items"] == [{"key": "b.pem", "path": "ca.crt"}]
    assert by_name["broker-client-cert"]["secretName"] == "me"
    assert by_name["broker-client-cert"]["defaultMode"] == 0o400
    assert {m["name"] for m in mounts} >= {"broker-ca", "broker-client-cert"}


def test_processes_reach_the_worker_args_and_the_slot_count():
    raw = managed_spec()
    assert "--processes" not in worker.worker_args(parse_spec(raw))  # default: one
    raw["worker"].update(concurrency=8, processes=2)
    spec = parse_spec(raw)
    args = worker.worker_args(spec)
    assert args[args.index("--processes") + 1] == "2"
    # The policy sizes pods by their slots: 2 processes x 8.
    assert spec.scaling.concurrency == 16


def test_cpu_affinity_reaches_the_worker_args_only_when_asked():
    raw = managed_spec()
    assert "--cpu-affinity" not in worker.worker_args(parse_spec(raw))  # default: none
    raw["worker"]["cpuAffinity"] = "auto"
    args = worker.worker_args(parse_spec(raw))
    assert args[args.index("--cpu-affinity") + 1] == "auto"
