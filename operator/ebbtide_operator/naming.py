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
SPEC_HASH_ANNOTATION = "ebbtide.dev/spec-hash"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

BROKER_URL_KEY = "url"
BROKER_PASSWORD_KEY = "password"
REDIS_PORT = 6379


def worker_name(taskqueue: str) -> str:
    return f"{taskqueue}-worker"


def redis_name(taskqueue: str) -> str:
    return f"{taskqueue}-redis"


def broker_secret_name(taskqueue: str) -> str:
    return f"{taskqueue}-broker"


def worker_selector(taskqueue: str) -> dict[str, str]:
    return {TASKQUEUE_LABEL: taskqueue, "app.kubernetes.io/component": "worker"}


def redis_selector(taskqueue: str) -> dict[str, str]:
    return {TASKQUEUE_LABEL: taskqueue, "app.kubernetes.io/component": "broker"}


def common_labels(taskqueue: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "ebbtide",
        "app.kubernetes.io/instance": taskqueue,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TASKQUEUE_LABEL: taskqueue,
    }
