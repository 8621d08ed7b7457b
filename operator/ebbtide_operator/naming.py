"""Names and labels of the objects a TaskQueue owns, in one place so that the builders,
the tick and the tests agree on them."""

from __future__ import annotations

GROUP = "ebbtide.dev"
VERSION = "v1alpha1"
PLURAL = "taskqueues"
KIND = "TaskQueue"

MANAGED_BY = "ebbtide-operator"
TASKQUEUE_LABEL = "ebbtide.dev/taskqueue"
PRODUCER_LABEL = "ebbtide.dev/producer"  # value: the TaskQueue's name
OPERATOR_LABEL = "ebbtide.dev/operator"  # "true" on the operator's pods (set by the chart)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on namespaces
SPEC_HASH_ANNOTATION = "ebbtide.dev/spec-hash"
CONFIG_HASH_ANNOTATION = "ebbtide.dev/config-hash"  # broker pods: restart on a config change
BROKER_TYPE_ANNOTATION = "ebbtide.dev/broker-type"  # worker pods: roll when the broker changes
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

BROKER_URL_KEY = "url"
BROKER_PASSWORD_KEY = "password"
BROKER_USERNAME_KEY = "username"  # RabbitMQ's admin Secret, and every role Secret
BROKER_DEFINITIONS_KEY = "definitions.json"  # RabbitMQ only: the users, loaded at every boot
BROKER_ACL_KEY = "users.acl"  # Redis only: the ACL file (password hashes), loaded at boot
# The three generated identities of a managed broker, each in its own Secret (roles.py
# says what each may do). The `<name>-broker` Secret stays the broker's admin identity.
ROLES = ("producer", "worker", "operator")
ROLE_LABEL = "ebbtide.dev/role"  # on each role Secret: producer | worker | operator
CREDENTIALS_ANNOTATION = "ebbtide.dev/credentials"  # worker pods: roll on a rotation
REDIS_PORT = 6379  # plain or TLS (a TLS managed Redis listens on TLS only, same port)
RABBITMQ_PORT = 5672
RABBITMQ_MANAGEMENT_PORT = 15672
RABBITMQ_TLS_PORT = 5671  # AMQPS, RabbitMQ's conventional port
RABBITMQ_MANAGEMENT_TLS_PORT = 15671  # the management API over https
# The TLS Secrets' keys (the kubernetes.io/tls layout, as cert-manager writes it too).
CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"  # the generated CA's private key (signs renewals); never mounted
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
# Where worker pods find the broker's CA and their client certificate.
BROKER_CA_DIR = "/etc/ebbtide/broker-ca"
BROKER_CLIENT_CERT_DIR = "/etc/ebbtide/broker-client"
CERT_MANAGER_GROUP = "cert-manager.io"


def worker_name(taskqueue: str) -> str:
    return f"{taskqueue}-worker"


def redis_name(taskqueue: str) -> str:
    return f"{taskqueue}-redis"


def rabbitmq_name(taskqueue: str) -> str:
    return f"{taskqueue}-rabbitmq"


def broker_name(taskqueue: str, broker_type: str) -> str:
    """The managed broker's workload, Service, NetworkPolicy (and ConfigMap) name."""
    return rabbitmq_name(taskqueue) if broker_type == "rabbitmq" else redis_name(taskqueue)


def broker_secret_name(taskqueue: str) -> str:
    """The managed broker's admin identity (and the broker's ACL or definitions file)."""
    return f"{taskqueue}-broker"


def broker_ca_secret_name(taskqueue: str) -> str:
    """ca.crt only: what clients (workers, producers, the operator) trust."""
    return f"{taskqueue}-broker-ca"


def broker_tls_secret_name(taskqueue: str) -> str:
    """The broker's own certificate and key (and the generated CA's key)."""
    return f"{taskqueue}-broker-tls"


def role_secret_name(taskqueue: str, role: str) -> str:
    """`<name>-broker-producer`, `-worker`, `-operator`: one generated identity each."""
    if role not in ROLES:
        raise ValueError(f"unknown broker role {role!r}: one of {', '.join(ROLES)}")
    return f"{taskqueue}-broker-{role}"


def worker_secret_name(taskqueue: str) -> str:
    """The Secret the worker pods read the broker URL from (managed brokers)."""
    return role_secret_name(taskqueue, "worker")


def role_username(role: str) -> str:
    """The broker user name of a role (one broker per TaskQueue, so no suffix needed)."""
    return f"ebbtide-{role}"


def rabbitmq_vhost(taskqueue: str) -> str:
    """The managed RabbitMQ's vhost: one per TaskQueue, named after it."""
    return taskqueue


# What the operator's watch of worker Deployments selects (main.py): only Deployments with
# these labels are kept in its cache, since only their changes reach it.
WORKER_WATCH_LABELS = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    "app.kubernetes.io/component": "worker",
}


def worker_selector(taskqueue: str) -> dict[str, str]:
    return {TASKQUEUE_LABEL: taskqueue, "app.kubernetes.io/component": "worker"}


def broker_selector(taskqueue: str) -> dict[str, str]:
    """The managed broker's pods, whatever the type (one broker per TaskQueue)."""
    return {TASKQUEUE_LABEL: taskqueue, "app.kubernetes.io/component": "broker"}


redis_selector = broker_selector  # the name the managed Redis has always used


def common_labels(taskqueue: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "ebbtide",
        "app.kubernetes.io/instance": taskqueue,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TASKQUEUE_LABEL: taskqueue,
    }


TLS_HASH_ANNOTATION = "ebbtide.dev/tls-hash"  # broker pods: restart on a new certificate
