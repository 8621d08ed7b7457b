"""Helpers of the real-pods suite: the images of `make images`, TaskQueue bodies for the
e2e worker image, test pods, and reaching a Service from the host through kube-proxy."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from e2e.tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "e2e" / "tests" / "apps"
TAG = "0.1.0"  # EBBTIDE_IMAGE_TAG in e2e/versions.env
# Images of `make images` (imported into the node); on another cluster (`make e2e-kind`)
# the ones named by the environment, loaded there.
OPERATOR_IMAGE = os.environ.get("EBBTIDE_E2E_OPERATOR_IMAGE", f"docker.io/ebbtide/operator:{TAG}")
RUNTIME_IMAGE = os.environ.get("EBBTIDE_E2E_RUNTIME_IMAGE", f"docker.io/ebbtide/runtime:{TAG}")
WORKER_IMAGE = os.environ.get("EBBTIDE_E2E_WORKER_IMAGE", f"docker.io/ebbtide/e2e-worker:{TAG}")
PULL_POLICY = os.environ.get("EBBTIDE_E2E_PULL_POLICY", "Never")
REDIS_IMAGE = "docker.io/library/redis:7.2-alpine"
RABBITMQ_IMAGE = "docker.io/library/rabbitmq:3.13-management"
IMAGES = (OPERATOR_IMAGE, RUNTIME_IMAGE, WORKER_IMAGE, REDIS_IMAGE, RABBITMQ_IMAGE)
GROUP, VERSION, PLURAL = "ebbtide.dev", "v1alpha1", "taskqueues"
RUNS = "e2e:runs"  # tracked.RUNS_KEY
RUN_LOG = "e2e:run-log"  # tracked.RUN_LOG_KEY
TRACKER = "tracker"
HOSTS_ENV = "EBBTIDE_E2E_HOSTS"  # apps/host_routes.py
CA_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "ebbtide-e2e-ca"


def taskqueue(
    name: str,
    broker: dict,
    *,
    track_url: str = "",
    scaling: dict | None = None,
    worker: dict | None = None,
) -> dict:
    """A TaskQueue running e2e/tests/apps/tracked.py from the e2e worker image."""
    env = [{"name": "EBBTIDE_TRACK_URL", "value": track_url}] if track_url else []
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": broker,
            "queues": [{"name": "default"}],
            "worker": {
                "image": WORKER_IMAGE,
                "imagePullPolicy": PULL_POLICY,
                "app": "tracked:app",
                "concurrency": 4,
                "terminationGracePeriodSeconds": 30,
                "env": env,
                **(worker or {}),
            },
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "targetBacklogSeconds": 10,
                "pollSeconds": 1,
                "scaleDownStabilizationSeconds": 5,
                "initialTaskSeconds": 0.05,
                **(scaling or {}),
            },
        },
    }


def external(secret: str) -> dict:
    """An external Redis broker whose URL is the Secret's `url`."""
    return {"type": "redis", "external": {"secretRef": {"name": secret}}}


def put_secret(core, namespace: str, name: str, url: str) -> None:
    from kubernetes import client

    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={"url": url})
    core.create_namespaced_secret(namespace, body)


def kubectl(kube_env: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`kubectl ARGS` against the cluster under test, as a user runs it."""
    return subprocess.run(
        [kube_env.tool("kubectl"), *args],
        env=kube_env.env,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def install_operator_chart(kube_env: Any, *extra: str) -> subprocess.CompletedProcess:
    """`helm upgrade --install` of charts/ebbtide as the session runs it: every namespace
    (a ClusterRole), the operator Deployment from OPERATOR_IMAGE; `extra` helm arguments
    on top (e.g. `--set replicaCount=2`)."""
    from e2e.tests.support import RELEASE, SYSTEM_NAMESPACE

    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    argv = [
        kube_env.tool("helm"),
        "upgrade",
        "--install",
        RELEASE,
        str(ROOT / "charts" / "ebbtide"),
    ]
    argv += ["--namespace", SYSTEM_NAMESPACE, "--create-namespace", "--wait", "--timeout", "180s"]
    argv += ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]
    argv += ["--set", f"image.pullPolicy={PULL_POLICY}", *extra]
    return subprocess.run(
        argv, env=kube_env.env, capture_output=True, text=True, check=False, timeout=240
    )


def create_tq(custom, namespace: str, body: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def read_tq(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def condition(tq: dict, kind: str) -> dict:
    return next((c for c in tq.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def pod_ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


OPERATOR_SELECTOR = "ebbtide.dev/operator=true"


def operator_pod(core, namespace: str, exclude: tuple[str, ...] = ()) -> str | None:
    """The name of a Ready operator pod in `namespace` that is not being deleted and not
    in `exclude` (a pod just killed), or None."""
    pods = ready_pods(core, namespace, OPERATOR_SELECTOR)
    fresh = sorted(p.metadata.name for p in pods if p.metadata.name not in exclude)
    return fresh[0] if fresh else None


def pod_broker_url(kube_env: Any, namespace: str, pod: str) -> str:
    """The broker URL a running worker pod has, read inside it (`kubectl exec`) the way
    the runtime reads it: the file EBBTIDE_BROKER_URL_FILE names (the mounted Secret),
    else EBBTIDE_BROKER_URL."""
    code = (
        "import os; p = os.environ.get('EBBTIDE_BROKER_URL_FILE'); "
        "print(open(p).read().strip() if p else os.environ.get('EBBTIDE_BROKER_URL', ''))"
    )
    argv = ["exec", "-n", namespace, pod, "--", "python", "-c", code]
    return kubectl(kube_env, *argv).stdout.strip()


def ready_pods(core, namespace: str, selector: str) -> list:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None and pod_ready(p)]


def secret_value(core, namespace: str, name: str, key: str) -> str:
    return base64.b64decode(core.read_namespaced_secret(name, namespace).data[key]).decode()


def cluster_ip(core, namespace: str, service: str) -> str:
    return core.read_namespaced_service(service, namespace).spec.cluster_ip


def via_cluster_ip(core, namespace: str, url: str) -> str:
    """`url` (a broker URL naming `SERVICE.NAMESPACE.svc`) reachable from the host, which
    has no cluster DNS but whose kube-proxy routes ClusterIPs.

    Plain URLs get the ClusterIP for the host. TLS ones (a managed broker, TLS by default)
    keep the name, which the certificate carries and the client verifies: this process
    and its children (EBBTIDE_E2E_HOSTS, apps/host_routes.py) resolve it to the ClusterIP,
    and trust the TaskQueue's CA (`<tq>-broker-ca`, as EBBTIDE_BROKER_CA_FILE)."""
    parts = urllib.parse.urlsplit(url)
    service = parts.hostname.split(".")[0]
    address = cluster_ip(core, namespace, service)
    if parts.scheme not in ("rediss", "amqps"):
        netloc = parts.netloc.replace(parts.hostname, address)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    sys.path.insert(0, str(APPS))
    import host_routes

    host_routes.install({parts.hostname: address})
    routes = dict(p.split("=", 1) for p in os.environ.get(HOSTS_ENV, "").split(",") if "=" in p)
    routes[parts.hostname] = address
    os.environ[HOSTS_ENV] = ",".join(f"{k}={v}" for k, v in routes.items())
    taskqueue = service.rsplit("-", 1)[0]  # <tq>-redis, <tq>-rabbitmq
    ca = secret_value(core, namespace, f"{taskqueue}-broker-ca", "ca.crt")
    path = CA_DIR / f"{namespace}-{taskqueue}-ca.crt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ca)
    os.environ["EBBTIDE_BROKER_CA_FILE"] = str(path)
    return url


def broker_client(url: str) -> Any:
    """A redis-py client for a broker URL from `via_cluster_ip` (TLS: the CA it set)."""
    import redis
    from ebbtide.brokers.tls import BrokerTLS

    tls = BrokerTLS.from_env().redis_kwargs() if url.startswith("rediss://") else {}
    return redis.Redis.from_url(url, retry=None, **tls)


def security() -> dict[str, Any]:
    return {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def tracker(core, apps, namespace: str, name: str = TRACKER) -> str:
    """A plain Redis pod and Service (no password, no NetworkPolicy): where the workers count
    their runs, or an "external" broker; returns the in-cluster URL. Tests reach it through
    its ClusterIP (`via_cluster_ip`)."""
    labels = {"app": name}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"runAsUser": 999, "runAsNonRoot": True},
                        "containers": [
                            {
                                "name": "redis",
                                "image": REDIS_IMAGE,
                                "imagePullPolicy": PULL_POLICY,
                                "command": ["redis-server"],
                                "args": [
                                    "--save",
                                    "",
                                    "--appendonly",
                                    "no",
                                    "--protected-mode",
                                    "no",
                                ],
                                "ports": [{"name": "redis", "containerPort": 6379}],
                                "readinessProbe": {
                                    "tcpSocket": {"port": "redis"},
                                    "periodSeconds": 1,
                                },
                                "securityContext": security(),
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                    },
                },
            },
        },
    )
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"name": "redis", "port": 6379}]},
        },
    )
    wait_for(lambda: ready_pods(core, namespace, f"app={name}"), 90, f"the {name} Redis pod Ready")
    return f"redis://{name}.{namespace}.svc:6379/0"


def run_pod(
    core, namespace: str, name: str, code: str, labels: dict | None = None
) -> tuple[str, str]:
    """Run `python -c code` in a pod of the runtime image to its end: (phase, log)."""
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsUser": 10001, "runAsNonRoot": True},
                "containers": [
                    {
                        "name": "probe",
                        "image": RUNTIME_IMAGE,
                        "imagePullPolicy": PULL_POLICY,
                        "command": ["python", "-c", code],
                        "securityContext": security(),
                    }
                ],
            },
        },
    )

    def finished() -> str | None:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, 90, f"pod {name} to finish")
    return phase, core.read_namespaced_pod_log(name, namespace)


def enqueue(broker_url: str, count: int, seconds: float, first: int = 0) -> None:
    """Enqueue tasks numbered `first` to `first + count - 1` through the runtime's producer
    API in a fresh host process, as an app would."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tracked; "
        "tracked.app.use_broker_url(sys.argv[2]); "
        "f, n = int(sys.argv[5]), int(sys.argv[3]); "
        "[tracked.work.send_many([(i, float(sys.argv[4])) for i in range(s, min(f + n, s + 500))]) "
        "for s in range(f, f + n, 500)]"
    )
    argv = [sys.executable, "-c", code, str(APPS), broker_url, str(count), str(seconds), str(first)]
    subprocess.run(argv, check=True, timeout=120)


def runs_of(track: Any, tasks: set[int], most: int = 40) -> str:
    """The run log's lines for `tasks` (which pod ran each, from when to when): a test
    that finds a task run twice says by whom, the first step to why."""
    lines = [line.decode() for line in track.lrange(RUN_LOG, 0, -1)]
    mine = [line for line in lines if int(line.split(" ", 1)[0]) in tasks]
    return "\n".join(mine[:most])
