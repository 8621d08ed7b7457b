"""The managed RabbitMQ builders: the exact objects, their credentials and hardening,
and the operator reading its statistics through the Secret's URL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest
from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide_operator import build_broker, build_rabbitmq, build_worker, naming, provision
from ebbtide_operator.broker_io import BrokerReader, with_amqp_timeouts
from ebbtide_operator.spec import DEFAULT_RABBITMQ_IMAGE, parse_spec


def body(name: str = "tq1", **managed) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": "ns1", "uid": "uid-123", "generation": 1},
        "spec": {
            "broker": {"type": "rabbitmq", "managed": managed},
            "queues": [{"name": "default"}],
            "worker": {"image": "w:1", "app": "m.tasks:app"},
        },
    }


def managed_of(b: dict):
    return parse_spec(b["spec"]).broker.managed


def owner_ok(obj: dict) -> None:
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-123" and ref["kind"] == "TaskQueue" and ref["controller"] is True
    assert obj["metadata"]["namespace"] == "ns1"


def decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def workload_pod(b: dict) -> dict:
    return build_rabbitmq.rabbitmq_workload(b, managed_of(b))["spec"]["template"]["spec"]


# --- the Secret ------------------------------------------------------------------------


def test_secret_holds_user_password_url_and_definitions():
    owner = body()
    secret = build_rabbitmq.rabbitmq_secret(owner, "ebbtide-0a1b2c3d", "s3cret")
    owner_ok(secret)
    assert secret["metadata"]["name"] == "tq1-broker"
    data = decoded(secret)
    assert data["username"] == "ebbtide-0a1b2c3d" and data["password"] == "s3cret"
    assert data["url"] == (
        "amqp://ebbtide-0a1b2c3d:s3cret@tq1-rabbitmq.ns1.svc:5672/%2F?management_port=15672"
    )
    definitions = json.loads(data["definitions.json"])
    (user,) = definitions["users"]
    assert user["name"] == "ebbtide-0a1b2c3d" and "s3cret" not in data["definitions.json"]
    assert user["tags"] == ["management"]  # reads its vhost's queues, is no administrator
    assert definitions["vhosts"] == [{"name": "/"}]
    (permission,) = definitions["permissions"]
    assert permission["user"] == "ebbtide-0a1b2c3d" and permission["vhost"] == "/"


def test_the_url_is_the_runtimes_convention_for_amqp_and_management():
    url = build_rabbitmq.rabbitmq_url("tq1", "ns1", "u", "p")
    options = parse_options(url)
    assert options.management_url == "http://u:p@tq1-rabbitmq.ns1.svc:15672"
    assert "management_port" not in options.amqp_url  # pika never sees Ebbtide's params


def test_password_hash_is_rabbitmqs_salted_sha256():
    salt = b"\x90\x8d\xe4\x1c"
    raw = base64.b64decode(build_rabbitmq.password_hash("hunter2", salt))
    assert raw[:4] == salt and raw[4:] == hashlib.sha256(salt + b"hunter2").digest()
    # A fresh salt each time: equal passwords do not give equal hashes.
    assert build_rabbitmq.password_hash("x") != build_rabbitmq.password_hash("x")


def test_generated_credentials_are_fresh_and_never_guest():
    secrets = [provision.new_broker_secret(body(), "rabbitmq") for _ in range(5)]
    users = {decoded(s)["username"] for s in secrets}
    passwords = {decoded(s)["password"] for s in secrets}
    assert len(users) == 5 and len(passwords) == 5
    assert "guest" not in users and all(u.startswith("ebbtide-") for u in users)
    assert all(len(p) >= 40 for p in passwords)
    # URL-safe, so they go into the amqp:// URL unescaped.
    assert all(parse_options(decoded(s)["url"]).amqp_url.count("@") == 1 for s in secrets)


# --- ConfigMap: management plugin, definitions, memory ------------------------------------


def test_config_map_enables_management_and_loads_the_definitions():
    owner = body()
    config_map = build_rabbitmq.rabbitmq_config_map(owner, managed_of(owner))
    owner_ok(config_map)
    assert config_map["metadata"]["name"] == "tq1-rabbitmq"
    assert config_map["data"]["enabled_plugins"] == "[rabbitmq_management].\n"
    conf = dict(
        line.split(" = ", 1)
        for line in config_map["data"]["rabbitmq.conf"].splitlines()
        if not line.startswith("#")
    )
    assert conf["listeners.tcp.default"] == "5672"
    assert conf["management.tcp.port"] == "15672"
    assert conf["load_definitions"] == "/etc/rabbitmq/definitions.json"
    assert conf["log.file"] == "false" and conf["log.console"] == "true"
    assert "total_memory_available_override_value" not in conf
    assert not any(key.startswith(("default_user", "default_pass")) for key in conf)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9), ("1000000", 10**6)],
)
def test_a_memory_limit_is_told_to_rabbitmq(limit, expected):
    owner = body(resources={"limits": {"memory": limit}})
    conf = build_rabbitmq.rabbitmq_conf(managed_of(owner))
    assert f"total_memory_available_override_value = {expected}\n" in conf


def test_an_unparseable_memory_limit_is_left_to_rabbitmq():
    assert build_rabbitmq.memory_bytes("lots") is None
    assert build_rabbitmq.memory_bytes("") is None


def test_a_config_change_restarts_the_node_and_equal_specs_do_not():
    def config_hash(b: dict) -> str:
        workload = build_rabbitmq.rabbitmq_workload(b, managed_of(b))
        return workload["spec"]["template"]["metadata"]["annotations"][
            naming.CONFIG_HASH_ANNOTATION
        ]

    assert config_hash(body()) == config_hash(body())
    assert config_hash(body()) != config_hash(body(resources={"limits": {"memory": "1Gi"}}))


# --- the workload ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_default_is_a_statefulset_with_a_pvc_and_its_retention_policy(policy):
    owner = body(persistence={"size": "5Gi", "storageClassName": "fast", "deletionPolicy": policy})
    sts = build_rabbitmq.rabbitmq_workload(owner, managed_of(owner))
    owner_ok(sts)
    assert sts["kind"] == "StatefulSet" and sts["metadata"]["name"] == "tq1-rabbitmq"
    assert sts["spec"]["serviceName"] == "tq1-rabbitmq" and sts["spec"]["replicas"] == 1
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": policy,
        "whenScaled": "Retain",
    }
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    pod = sts["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}  # it comes from the claim
    assert sts["spec"]["selector"]["matchLabels"].items() <= (
        sts["spec"]["template"]["metadata"]["labels"].items()
    )


def test_persistence_off_is_a_deployment_with_an_empty_dir():
    owner = body(persistence={"enabled": False})
    workload = build_rabbitmq.rabbitmq_workload(owner, managed_of(owner))
    assert workload["kind"] == "Deployment"
    assert workload["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_pod_is_non_root_read_only_and_drops_every_capability():
    pod = workload_pod(body())
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == 999
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["fsGroupChangePolicy"] == "OnRootMismatch"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["image"] == DEFAULT_RABBITMQ_IMAGE


def test_every_path_rabbitmq_writes_is_a_volume_and_the_config_is_read_only():
    pod = workload_pod(body())
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    for var in ("HOME", "RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE"):
        assert env[var] in mounts, var
    assert "/tmp" in mounts
    assert mounts[env["RABBITMQ_MNESIA_BASE"]]["name"] == "data"
    assert mounts["/etc/rabbitmq"]["readOnly"] is True
    assert env["RABBITMQ_CONFIG_FILE"] == "/etc/rabbitmq/rabbitmq.conf"
    assert env["RABBITMQ_ENABLED_PLUGINS_FILE"] == "/etc/rabbitmq/enabled_plugins"
    # HOME (the Erlang cookie) is not on the PVC: fsGroup would make a reused cookie
    # group-readable, and Erlang refuses it.
    assert mounts[env["HOME"]]["name"] != "data"
    volumes = {v["name"]: v for v in pod["volumes"]}
    sources = volumes["config"]["projected"]["sources"]
    assert {"configMap": {"name": "tq1-rabbitmq"}} in sources
    (secret_source,) = [s["secret"] for s in sources if "secret" in s]
    assert secret_source["name"] == "tq1-broker"
    assert secret_source["items"] == [{"key": "definitions.json", "path": "definitions.json"}]
    assert volumes["config"]["projected"]["defaultMode"] == 0o440


def test_node_identity_and_erlang_distribution_stay_local():
    (container,) = workload_pod(body())["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RABBITMQ_NODENAME"] == "rabbit@localhost"
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "inet_dist_use_interface {127,0,0,1}" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    # No credentials in the environment: the definitions file carries the user.
    assert not any(e["name"].startswith("RABBITMQ_DEFAULT_") for e in container["env"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"amqp": 5672, "management": 15672}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "amqp"}


def test_image_and_resources_come_from_the_spec():
    owner = body(image="rabbitmq:3.13.7-management-alpine", resources={"requests": {"cpu": "1"}})
    (container,) = workload_pod(owner)["containers"]
    assert container["image"] == "rabbitmq:3.13.7-management-alpine"
    assert container["resources"] == {"requests": {"cpu": "1"}}


# --- Service and NetworkPolicy ------------------------------------------------------------


def test_service_exposes_amqp_and_management_of_the_broker_pod():
    service = build_rabbitmq.rabbitmq_service(body())
    owner_ok(service)
    assert service["metadata"]["name"] == "tq1-rabbitmq"
    assert service["spec"]["selector"] == naming.broker_selector("tq1")
    assert service["spec"]["ports"] == [
        {"name": "amqp", "port": 5672, "targetPort": "amqp", "protocol": "TCP"},
        {"name": "management", "port": 15672, "targetPort": "management", "protocol": "TCP"},
    ]


def test_network_policy_admits_only_workers_producers_and_the_operator():
    policy = build_rabbitmq.rabbitmq_network_policy(body())
    owner_ok(policy)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == naming.broker_selector("tq1")
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": naming.worker_selector("tq1")}},
        {"podSelector": {"matchLabels": {"ebbtide.dev/producer": "tq1"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"ebbtide.dev/operator": "true"}}},
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5672}, {"protocol": "TCP", "port": 15672}]
    # The same peers as the managed Redis, on its own port.
    redis_rule = build_broker.redis_network_policy(body())["spec"]["ingress"][0]
    assert redis_rule["from"] == rule["from"]


def test_network_policy_selects_the_pods_the_workload_makes():
    owner = body()
    sts = build_rabbitmq.rabbitmq_workload(owner, managed_of(owner))
    selector = build_rabbitmq.rabbitmq_network_policy(owner)["spec"]["podSelector"]
    assert selector["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


# --- workers and the operator's reads ------------------------------------------------------


def test_workers_read_the_url_from_the_managed_secret_and_roll_on_a_type_switch():
    rabbit = parse_spec(body()["spec"])
    template = build_worker.worker_pod_template("tq1", rabbit)
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert env["EBBTIDE_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tq1-broker",
        "key": "url",
    }
    assert template["metadata"]["annotations"][naming.BROKER_TYPE_ANNOTATION] == "rabbitmq"
    redis_spec = body()["spec"]
    redis_spec["broker"] = {"type": "redis", "managed": {}}
    redis_template = build_worker.worker_pod_template("tq1", parse_spec(redis_spec))
    assert naming.BROKER_TYPE_ANNOTATION not in redis_template["metadata"]["annotations"]
    hash_key = naming.SPEC_HASH_ANNOTATION
    assert (
        template["metadata"]["annotations"][hash_key]
        != redis_template["metadata"]["annotations"][hash_key]
    )


def test_amqp_urls_get_short_timeouts_unless_they_set_their_own():
    url = "amqp://u:p@h:5672/%2F?management_port=15672&socket_timeout=9"
    options = parse_options(with_amqp_timeouts(url))
    assert options.management_url == "http://u:p@h:15672"
    assert "socket_timeout=9" in options.amqp_url
    assert "connection_attempts=1" in options.amqp_url and "stack_timeout=5" in options.amqp_url


def test_the_reader_passes_amqp_urls_with_timeouts_to_read_stats():
    seen = []
    reader = BrokerReader(max_threads=1, reader=lambda handle, queues: seen.append(handle))
    url = build_rabbitmq.rabbitmq_url("tq1", "ns1", "u", "p")
    try:
        asyncio.run(reader.read("ns1/tq1", url, ["default"], timeout=5))
    finally:
        reader.close()
    (handle,) = seen
    assert isinstance(handle, str) and handle.startswith(url)
    assert "connection_attempts=1" in handle
