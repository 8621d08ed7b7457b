"""Pure builders for a managed RabbitMQ: Secret, ConfigMap, workload, Service, NetworkPolicy.

One node, from the official `rabbitmq` image, with the management plugin on (the runtime
reads ready/unacked/oldest-age/ack counts from its HTTP API). The `<name>-broker` Secret
holds the admin user (never `guest`) and a definitions file that the node imports at every
boot: the TaskQueue's own vhost (named after it) and one user per role (roles.py) with
its permissions, so the credentials in the Secrets are always the ones that work, even on
a PVC kept from an earlier TaskQueue of the same name. No I/O here; every object is owned
by the TaskQueue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ebbtide.brokers.rabbitmq.publish import queue_declarations

from ebbtide_operator import naming
from ebbtide_operator.build.common import (
    Body,
    broker_network_policy,
    broker_service,
    broker_tls_volume,
    broker_workload,
    container_security,
    owned,
    pod_security,
    role_secret,
    secret_object,
    spec_hash,
)
from ebbtide_operator.build.roles import Credential, rabbitmq_permissions, rabbitmq_tags
from ebbtide_operator.spec import ManagedBrokerSpec

RABBITMQ_UID = 999  # the `rabbitmq` user of the official images
DEFAULT_VHOST = "/"  # kept, with the admin's rights: tasks queued there before roles
# The admin (`<name>-broker`) manages users over the management API: that is how the
# operator applies a rotated password without restarting the node.
ADMIN_TAGS = ["administrator"]
CONFIG_DIR = "/etc/rabbitmq"  # the image's RABBITMQ_CONFIG_FILE / ENABLED_PLUGINS_FILE live here
TLS_DIR = "/etc/rabbitmq-tls"  # the broker's certificate, key and CA (from <tq>-broker-tls)
HOME_DIR = "/var/lib/rabbitmq"  # HOME: the Erlang cookie
DATA_DIR = "/var/lib/rabbitmq/mnesia"  # RABBITMQ_MNESIA_BASE: queues and messages
LOG_DIR = "/var/log/rabbitmq"  # upgrade log and crash dumps (log lines go to the console)
STATISTICS_INTERVAL_MS = 2000  # management sampling; the default 5 s would lag the scaler
GRACE_SECONDS = 60  # a clean stop flushes queue indexes; a killed node recovers slowly

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def generate_username() -> str:
    """A fresh user name per TaskQueue; `guest` is never created."""
    return f"ebbtide-{secrets.token_hex(4)}"


def ports(tls: bool) -> tuple[int, int]:
    """(AMQP, management) ports: 5671/15671 with TLS (AMQPS and https), else 5672/15672."""
    if tls:
        return naming.RABBITMQ_TLS_PORT, naming.RABBITMQ_MANAGEMENT_TLS_PORT
    return naming.RABBITMQ_PORT, naming.RABBITMQ_MANAGEMENT_PORT


def scheme(tls: bool) -> str:
    return "amqps" if tls else "amqp"


def rabbitmq_url(
    taskqueue: str,
    namespace: str,
    username: str,
    password: str,
    vhost: str = DEFAULT_VHOST,
    scheme: str = "amqp",
    passive_declare: bool = False,
) -> str:
    """The runtime's URL, built from its parts (`scheme` is where TLS says `amqps`): AMQP
    on `vhost`, the management API on the same host (AMQPS on 5671 and https on 15671
    with TLS: the runtime calls the API over https whenever AMQP uses TLS);
    `passive_declare` (the producer's) makes the runtime only check the app queues it
    publishes to (roles.py says why)."""
    host = f"{naming.rabbitmq_name(taskqueue)}.{namespace}.svc"
    auth = f"{quote(username, safe='')}:{quote(password, safe='')}"
    amqp, management = ports(scheme == "amqps")
    query = f"management_port={management}"
    if passive_declare:
        query += "&declare=passive"
    return f"{scheme}://{auth}@{host}:{amqp}/{quote(vhost, safe='')}?{query}"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password)).
    The default salt is derived from the password, so the same credentials always give
    the same definitions file (a re-render that changes nothing writes nothing)."""
    if salt is None:
        salt = hmac.new(password.encode(), b"ebbtide-rabbitmq-salt", "sha256").digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _user(credential: Credential, tags: list[str]) -> dict[str, Any]:
    return {
        "name": credential.username,
        "password_hash": password_hash(credential.password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
    }


def app_queues(vhost: str, prefix: str, queues: Sequence[str]) -> list[dict[str, Any]]:
    """Every spec queue's ready, dead and lost queues, exactly as the runtime declares
    them (publish.queue_declarations), so the producer finds them without declaring."""
    return [
        {"name": name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": args}
        for queue in queues
        for name, args in queue_declarations(prefix, queue)
    ]


def definitions(
    admin: Credential,
    roles: Mapping[str, Credential],
    vhost: str,
    prefix: str,
    queues: Sequence[str] = (),
) -> dict[str, Any]:
    """Users, vhosts, permissions and the app queues, as RabbitMQ's definitions import
    wants them: the admin on `/` and the TaskQueue's vhost, each role on the TaskQueue's
    vhost only. With definitions to load the node never seeds its default `guest` user."""
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    users = [_user(admin, ADMIN_TAGS)]
    permissions = [
        {"user": admin.username, "vhost": name, **everything}
        for name in dict.fromkeys([DEFAULT_VHOST, vhost])
    ]
    for role in naming.ROLES:
        credential = roles[role]
        users.append(_user(credential, rabbitmq_tags(role)))
        permissions.append(
            {"user": credential.username, "vhost": vhost, **rabbitmq_permissions(role, prefix)}
        )
    vhosts = [{"name": name} for name in dict.fromkeys([DEFAULT_VHOST, vhost])]
    return {
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "queues": app_queues(vhost, prefix, queues),
    }


def rabbitmq_secret(
    owner: Body,
    username: str,
    password: str,
    roles: Mapping[str, Credential],
    prefix: str,
    queues: Sequence[str] = (),
    tls: bool = False,
) -> dict[str, Any]:
    """The admin Secret: its user, password and URL (on the TaskQueue's vhost; amqps://
    with `tls`), and the definitions file the node loads (salted hashes only) with every
    role's user and the spec's queues."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    vhost = naming.rabbitmq_vhost(name)
    admin = Credential(username, password)
    rendered = definitions(admin, roles, vhost, prefix, queues)
    return secret_object(
        owner,
        {
            naming.BROKER_USERNAME_KEY: username,
            naming.BROKER_PASSWORD_KEY: password,
            naming.BROKER_URL_KEY: rabbitmq_url(
                name, namespace, username, password, vhost, scheme(tls)
            ),
            naming.BROKER_DEFINITIONS_KEY: json.dumps(rendered),
        },
    )


def rabbitmq_role_secret(
    owner: Body, role: str, credential: Credential, tls: bool = False
) -> dict[str, Any]:
    """`<name>-broker-<role>`: that role's user, password and URL on the TaskQueue's vhost
    (amqps:// with `tls`)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    url = rabbitmq_url(
        name,
        namespace,
        credential.username,
        credential.password,
        naming.rabbitmq_vhost(name),
        scheme(tls),
        passive_declare=role == "producer",
    )
    return role_secret(owner, role, credential.username, credential.password, url)


def memory_bytes(quantity: object) -> int | None:
    """A Kubernetes memory quantity in bytes (`512Mi`, `1G`, `1073741824`); None if odd."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def tls_conf(prefix: str) -> list[str]:
    """One TLS listener's settings: the TaskQueue's certificate; clients show none (they
    log in with a password)."""
    return [
        f"{prefix}.cacertfile = {TLS_DIR}/{naming.CA_CERT_KEY}",
        f"{prefix}.certfile = {TLS_DIR}/{naming.TLS_CERT_KEY}",
        f"{prefix}.keyfile = {TLS_DIR}/{naming.TLS_KEY_KEY}",
        f"{prefix}.verify = verify_none",
        f"{prefix}.fail_if_no_peer_cert = false",
    ]


def listener_conf(tls: bool) -> list[str]:
    """AMQP and the management API: plain, or TLS only (AMQPS and https, no plain port)."""
    if not tls:
        return [
            f"listeners.tcp.default = {naming.RABBITMQ_PORT}",
            f"management.tcp.port = {naming.RABBITMQ_MANAGEMENT_PORT}",
        ]
    return [
        "listeners.tcp = none",
        f"listeners.ssl.default = {naming.RABBITMQ_TLS_PORT}",
        *tls_conf("ssl_options"),
        f"management.ssl.port = {naming.RABBITMQ_MANAGEMENT_TLS_PORT}",
        *tls_conf("management.ssl"),
    ]


def rabbitmq_conf(managed: ManagedBrokerSpec, tls: bool = False) -> str:
    """rabbitmq.conf. With a memory limit, RabbitMQ is told it (it does not always see the
    cgroup limit) so its memory alarm throttles publishers before the OOM killer strikes."""
    lines = [
        "# Written by the Ebbtide operator; a change restarts the broker pod.",
        "# Users: the admin and one per role, on the TaskQueue's own vhost (definitions).",
        *listener_conf(tls),
        f"load_definitions = {CONFIG_DIR}/{naming.BROKER_DEFINITIONS_KEY}",
        "log.console = true",
        "log.console.level = info",
        "log.file = false",
        f"collect_statistics_interval = {STATISTICS_INTERVAL_MS}",
    ]
    limit = memory_bytes((managed.resources.get("limits") or {}).get("memory", ""))
    if limit:
        lines.append(f"total_memory_available_override_value = {limit}")
    return "\n".join(lines) + "\n"


def enabled_plugins() -> str:
    return "[rabbitmq_management].\n"


def rabbitmq_config_map(
    owner: Body, managed: ManagedBrokerSpec, tls: bool = False
) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return owned(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": naming.rabbitmq_name(name),
                "labels": naming.common_labels(name, "broker"),
            },
            "data": {
                "rabbitmq.conf": rabbitmq_conf(managed, tls),
                "enabled_plugins": enabled_plugins(),
            },
        },
        owner,
    )


def _rabbitmq_container(managed: ManagedBrokerSpec, tls: bool) -> dict[str, Any]:
    amqp_port, management_port = ports(tls)
    probe = {"tcpSocket": {"port": "amqp"}, "timeoutSeconds": 5}
    container: dict[str, Any] = {
        "name": "rabbitmq",
        "image": managed.image,
        # The image's entrypoint and `rabbitmq-server` command are kept.
        "env": [
            # The image's defaults, spelled out so that they match the mounts below.
            {"name": "HOME", "value": HOME_DIR},
            {"name": "RABBITMQ_CONFIG_FILE", "value": f"{CONFIG_DIR}/rabbitmq.conf"},
            {"name": "RABBITMQ_ENABLED_PLUGINS_FILE", "value": f"{CONFIG_DIR}/enabled_plugins"},
            {"name": "RABBITMQ_MNESIA_BASE", "value": DATA_DIR},
            {"name": "RABBITMQ_LOG_BASE", "value": LOG_DIR},
            # The node's name (and so its data directory) must not follow the pod's hostname.
            {"name": "RABBITMQ_NODENAME", "value": "rabbit@localhost"},
            {"name": "RABBITMQ_USE_LONGNAME", "value": "false"},
            # epmd and Erlang distribution stay on loopback: only AMQP and HTTP face the pod network.
            {"name": "ERL_EPMD_ADDRESS", "value": "127.0.0.1"},
            {
                "name": "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "value": "-kernel inet_dist_use_interface {127,0,0,1}",
            },
        ],
        "ports": [
            {"name": "amqp", "containerPort": amqp_port, "protocol": "TCP"},
            {"name": "management", "containerPort": management_port, "protocol": "TCP"},
        ],
        # Booting (or recovering a big message store) can take minutes; after that the
        # AMQP listener is the signal, as it only opens once the node is fully up.
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 4},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "home", "mountPath": HOME_DIR},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "logs", "mountPath": LOG_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": container_security(),
    }
    if tls:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if managed.resources:
        container["resources"] = dict(managed.resources)
    return container


def rabbitmq_workload(
    owner: Body, managed: ManagedBrokerSpec, tls: bool = False, tls_hash: str = ""
) -> dict[str, Any]:
    """A StatefulSet with a PVC (persistent, the default) or a Deployment with an emptyDir.

    The root filesystem is read-only: the node writes only to its volumes. The config
    directory is a read-only projection of the ConfigMap and the Secret's definitions;
    HOME (the Erlang cookie, rewritten at every start) is an emptyDir apart from the data
    PVC, because the kubelet's fsGroup chmod of a reused volume would make the cookie
    group-readable and Erlang refuses such a cookie. With `tls` the certificate, key and
    CA are mounted from `<tq>-broker-tls`; `tls_hash` (of the live certificate) restarts
    the pod on a new certificate.
    """
    name = owner["metadata"]["name"]
    security = pod_security(RABBITMQ_UID)
    security["fsGroupChangePolicy"] = "OnRootMismatch"  # no recursive chown of a big PVC
    config_sources = [
        {"configMap": {"name": naming.rabbitmq_name(name)}},
        {
            "secret": {
                "name": naming.broker_secret_name(name),
                "items": [
                    {
                        "key": naming.BROKER_DEFINITIONS_KEY,
                        "path": naming.BROKER_DEFINITIONS_KEY,
                    }
                ],
            }
        },
    ]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": security,
        "containers": [_rabbitmq_container(managed, tls)],
        "volumes": [
            # 0440: readable by the rabbitmq group (fsGroup) only.
            {"name": "config", "projected": {"sources": config_sources, "defaultMode": 0o440}},
            {"name": "home", "emptyDir": {"sizeLimit": "16Mi"}},
            {"name": "logs", "emptyDir": {"sizeLimit": "256Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    config_hash = spec_hash(rabbitmq_config_map(owner, managed, tls)["data"])
    annotations = {naming.CONFIG_HASH_ANNOTATION: config_hash}
    if tls:
        pod_spec["volumes"].append(broker_tls_volume(name))
        annotations[naming.TLS_HASH_ANNOTATION] = tls_hash
    return broker_workload(
        owner, naming.rabbitmq_name(name), pod_spec, managed.persistence, annotations=annotations
    )


def rabbitmq_service(owner: Body, tls: bool = False) -> dict[str, Any]:
    amqp, management = ports(tls)
    return broker_service(
        owner,
        naming.rabbitmq_name(owner["metadata"]["name"]),
        {"amqp": amqp, "management": management},
    )


def rabbitmq_network_policy(
    owner: Body,
    operator_namespace: str | None = None,
    allowed_namespaces: Sequence[str] = (),
    tls: bool = False,
) -> dict[str, Any]:
    return broker_network_policy(
        owner,
        naming.rabbitmq_name(owner["metadata"]["name"]),
        list(ports(tls)),
        operator_namespace,
        allowed_namespaces,
    )
