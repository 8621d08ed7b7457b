"""The managed RabbitMQ builders: the exact objects, their credentials and hardening."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide_operator import naming
from ebbtide_operator.build import rabbitmq, redis, roles
from ebbtide_operator.spec import DEFAULT_RABBITMQ_IMAGE, parse_spec
from support.taskqueue import assert_owned, decoded, managed_spec, taskqueue


def body(name: str = "tq1", **managed) -> dict:
    return taskqueue(managed_spec("rabbitmq", **managed), name)


def managed_of(b: dict):
    return parse_spec(b["spec"]).broker.managed


def workload_pod(b: dict) -> dict:
    return rabbitmq.rabbitmq_workload(b, managed_of(b))["spec"]["template"]["spec"]


# --- the Secret ------------------------------------------------------------------------


ROLES = {role: roles.Credential(f"ebbtide-{role}", f"{role}-pw") for role in naming.ROLES}


def test_admin_secret_holds_user_password_url_and_definitions_of_every_role():
    owner = body()
    secret = rabbitmq.rabbitmq_secret(owner, "ebbtide-0a1b2c3d", "s3cret", ROLES, "ebbtide")
    assert_owned(secret)
    assert secret["metadata"]["name"] == "tq1-broker"
    data = decoded(secret)
    assert data["username"] == "ebbtide-0a1b2c3d" and data["password"] == "s3cret"
    assert data["url"] == (
        "amqp://ebbtide-0a1b2c3d:s3cret@tq1-rabbitmq.ns1.svc:5672/tq1?management_port=15672"
    )
    text = data["definitions.json"]
    assert not any(p in text for p in ["s3cret", *(c.password for c in ROLES.values())])
    definitions = json.loads(text)
    users = {u["name"]: u["tags"] for u in definitions["users"]}
    assert users == {
        "ebbtide-0a1b2c3d": ["administrator"],  # applies rotations over the management API
        "ebbtide-producer": [],
        "ebbtide-worker": [],
        "ebbtide-operator": ["monitoring"],
    }
    assert definitions["vhosts"] == [{"name": "/"}, {"name": "tq1"}]
    grants = {(p["user"], p["vhost"]): p for p in definitions["permissions"]}
    assert set(grants) == {
        ("ebbtide-0a1b2c3d", "/"),
        ("ebbtide-0a1b2c3d", "tq1"),
        ("ebbtide-producer", "tq1"),
        ("ebbtide-worker", "tq1"),
        ("ebbtide-operator", "tq1"),
    }
    for role in naming.ROLES:
        grant = grants[(f"ebbtide-{role}", "tq1")]
        assert {k: grant[k] for k in ("configure", "write", "read")} == (
            roles.rabbitmq_permissions(role, "ebbtide")
        )
    # The same credentials render the same file: a re-render that changes nothing writes
    # nothing.
    again = rabbitmq.rabbitmq_secret(owner, "ebbtide-0a1b2c3d", "s3cret", ROLES, "ebbtide")
    assert decoded(again)["definitions.json"] == text


def test_role_secret_holds_its_user_password_and_url_on_the_taskqueues_vhost():
    secret = rabbitmq.rabbitmq_role_secret(body(), "worker", ROLES["worker"])
    assert_owned(secret)
    assert secret["metadata"]["name"] == "tq1-broker-worker"
    assert decoded(secret)["url"] == (
        "amqp://ebbtide-worker:worker-pw@tq1-rabbitmq.ns1.svc:5672/tq1?management_port=15672"
    )


def test_the_url_is_the_runtimes_convention_for_amqp_and_management():
    url = rabbitmq.rabbitmq_url("tq1", "ns1", "u", "p")
    options = parse_options(url)
    assert options.management_url == "http://u:p@tq1-rabbitmq.ns1.svc:15672"
    assert "management_port" not in options.amqp_url  # pika never sees Ebbtide's params


def test_password_hash_is_rabbitmqs_salted_sha256():
    salt = b"\x90\x8d\xe4\x1c"
    raw = base64.b64decode(rabbitmq.password_hash("hunter2", salt))
    assert raw[:4] == salt and raw[4:] == hashlib.sha256(salt + b"hunter2").digest()
    # The default salt comes from the password: stable renders, distinct per password.
    assert rabbitmq.password_hash("x") == rabbitmq.password_hash("x")
    assert rabbitmq.password_hash("x")[:8] != rabbitmq.password_hash("y")[:8]


# --- ConfigMap: management plugin, definitions, memory ------------------------------------


def test_config_map_enables_management_and_loads_the_definitions():
    owner = body()
    config_map = rabbitmq.rabbitmq_config_map(owner, managed_of(owner))
    assert_owned(config_map)
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
    conf = rabbitmq.rabbitmq_conf(managed_of(owner))
    assert f"total_memory_available_override_value = {expected}\n" in conf


def test_an_unparseable_memory_limit_is_left_to_rabbitmq():
    assert rabbitmq.memory_bytes("lots") is None
    assert rabbitmq.memory_bytes("") is None


def test_a_config_change_restarts_the_node_and_equal_specs_do_not():
    def config_hash(b: dict) -> str:
        workload = rabbitmq.rabbitmq_workload(b, managed_of(b))
        return workload["spec"]["template"]["metadata"]["annotations"][
            naming.CONFIG_HASH_ANNOTATION
        ]

    assert config_hash(body()) == config_hash(body())
    assert config_hash(body()) != config_hash(body(resources={"limits": {"memory": "1Gi"}}))


# --- the workload ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_default_is_a_statefulset_with_a_pvc_and_its_retention_policy(policy):
    owner = body(persistence={"size": "5Gi", "storageClassName": "fast", "deletionPolicy": policy})
    sts = rabbitmq.rabbitmq_workload(owner, managed_of(owner))
    assert_owned(sts)
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
    workload = rabbitmq.rabbitmq_workload(owner, managed_of(owner))
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
    service = rabbitmq.rabbitmq_service(body())
    assert_owned(service)
    assert service["metadata"]["name"] == "tq1-rabbitmq"
    assert service["spec"]["selector"] == naming.broker_selector("tq1")
    assert service["spec"]["ports"] == [
        {"name": "amqp", "port": 5672, "targetPort": "amqp", "protocol": "TCP"},
        {"name": "management", "port": 15672, "targetPort": "management", "protocol": "TCP"},
    ]


def test_network_policy_admits_only_workers_producers_and_the_operator():
    policy = rabbitmq.rabbitmq_network_policy(body(), "ebbtide-system")
    assert_owned(policy)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == naming.broker_selector("tq1")
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": naming.worker_selector("tq1")}},
        {"podSelector": {"matchLabels": {"ebbtide.dev/producer": "tq1"}}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ebbtide-system"}},
            "podSelector": {"matchLabels": {"ebbtide.dev/operator": "true"}},
        },
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5672}, {"protocol": "TCP", "port": 15672}]
    # The same peers as the managed Redis, on its own port.
    redis_rule = redis.redis_network_policy(body(), "ebbtide-system")["spec"]["ingress"][0]
    assert redis_rule["from"] == rule["from"]


def test_network_policy_selects_the_pods_the_workload_makes():
    owner = body()
    sts = rabbitmq.rabbitmq_workload(owner, managed_of(owner))
    selector = rabbitmq.rabbitmq_network_policy(owner)["spec"]["podSelector"]
    assert selector["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_tls_config_listens_on_amqps_and_https_only():
    managed = parse_spec(managed_spec("rabbitmq")).broker.managed
    conf = rabbitmq.rabbitmq_conf(managed, tls=True)
    lines = conf.splitlines()
    assert "listeners.tcp = none" in lines
    assert "listeners.ssl.default = 5671" in lines
    assert "management.ssl.port = 15671" in lines
    assert not any(line.startswith(("listeners.tcp.default", "management.tcp.")) for line in lines)
    for prefix in ("ssl_options", "management.ssl"):
        assert f"{prefix}.certfile = /etc/rabbitmq-tls/tls.crt" in lines
        assert f"{prefix}.keyfile = /etc/rabbitmq-tls/tls.key" in lines
        assert f"{prefix}.cacertfile = /etc/rabbitmq-tls/ca.crt" in lines
        assert f"{prefix}.verify = verify_none" in lines


def test_tls_workload_service_and_policy_use_the_tls_ports():
    owner = taskqueue(managed_spec("rabbitmq"))
    managed = parse_spec(managed_spec("rabbitmq")).broker.managed
    pod = rabbitmq.rabbitmq_workload(owner, managed, tls=True, tls_hash="h")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [5671, 15671]
    assert {"name": "tls", "mountPath": "/etc/rabbitmq-tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "tq1-broker-tls"
    assert pod["metadata"]["annotations"][naming.TLS_HASH_ANNOTATION] == "h"
    service = rabbitmq.rabbitmq_service(owner, tls=True)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("amqp", 5671),
        ("management", 15671),
    ]
    policy = rabbitmq.rabbitmq_network_policy(owner, tls=True)
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [5671, 15671]


def test_tls_urls_are_amqps_with_https_management():
    owner = taskqueue(managed_spec("rabbitmq"))
    url = decoded(rabbitmq.rabbitmq_role_secret(owner, "worker", ROLES["worker"], tls=True))["url"]
    assert url == (
        "amqps://ebbtide-worker:worker-pw@tq1-rabbitmq.ns1.svc:5671/tq1?management_port=15671"
    )
    assert parse_options(url).management_url == (
        "https://ebbtide-worker:worker-pw@tq1-rabbitmq.ns1.svc:15671"
    )
