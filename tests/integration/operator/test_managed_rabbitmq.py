"""The managed RabbitMQ's generated configuration on a real `rabbitmq-server`.

No image can run here, so the node is Debian's rabbitmq-server, started with exactly the
ConfigMap's rabbitmq.conf and enabled_plugins, the Secret's definitions.json and the
container's Erlang settings; only ports and paths are moved to a temp dir on loopback.
Checks: the management plugin is on, the Secret's URL works for the runtime and for the
operator's statistics reader, `guest` does not exist, and a node restarted on its old
data with a newly generated Secret accepts the new credentials (definitions load at
every boot).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from ebbtide_operator import provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.build import rabbitmq
from ebbtide_operator.spec import parse_spec
from support.servers import RABBITMQ_BIN, RabbitMQProcess, free_port, wait_for_port

pytestmark = pytest.mark.rabbitmq

BODY = {
    "apiVersion": "ebbtide.dev/v1alpha1",
    "kind": "TaskQueue",
    "metadata": {"name": "tq", "namespace": "ns", "uid": "u1"},
    "spec": {
        "broker": {"type": "rabbitmq", "managed": {"resources": {"limits": {"memory": "1Gi"}}}},
        "queues": [{"name": "jobs"}],
        "worker": {"image": "w:1", "app": "m:app"},
    },
}


def decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


class Node:
    """One rabbitmq-server on loopback configured like the managed broker's pod."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port, self.mgmt_port, self.dist_port, self.epmd_port = (free_port() for _ in range(4))
        self.etc = base / "etc"
        for path in (self.etc, base / "home", base / "mnesia", base / "log"):
            path.mkdir(parents=True, exist_ok=True)
        spec = parse_spec(BODY["spec"])
        workload = rabbitmq.rabbitmq_workload(BODY, spec.broker.managed)
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        self.node = env["RABBITMQ_NODENAME"]  # rabbit@localhost: unique on its own epmd
        self.env = {
            **os.environ,
            "HOME": str(base / "home"),
            "ERL_EPMD_ADDRESS": env["ERL_EPMD_ADDRESS"],
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_USE_LONGNAME": env["RABBITMQ_USE_LONGNAME"],
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"],
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.etc / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(self.etc / "conf.d"),  # absent, as in the pod
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.etc / "enabled_plugins"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.etc / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.etc / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }
        config_map = rabbitmq.rabbitmq_config_map(BODY, spec.broker.managed)
        conf = config_map["data"]["rabbitmq.conf"]
        conf = conf.replace(
            "listeners.tcp.default = 5672", f"listeners.tcp.default = 127.0.0.1:{self.port}"
        )
        conf = conf.replace(
            "management.tcp.port = 15672",
            f"management.tcp.port = {self.mgmt_port}\nmanagement.tcp.ip = 127.0.0.1",
        )
        conf = re.sub(
            r"load_definitions = .*", f"load_definitions = {self.etc / 'definitions.json'}", conf
        )
        (self.etc / "rabbitmq.conf").write_text(conf)
        (self.etc / "enabled_plugins").write_text(config_map["data"]["enabled_plugins"])
        self.server = RabbitMQProcess(
            os.path.join(RABBITMQ_BIN, "rabbitmq-server"),
            self.env,
            self.node,
            str(base),
            self.port,
            self.mgmt_port,
            True,
        )

    def start(self, secret: dict) -> None:
        (self.etc / "definitions.json").write_text(decoded(secret)["definitions.json"])
        self.server.start(90)

    def local_url(self, secret: dict) -> str:
        """The Secret's URL, pointed at this node instead of the in-cluster Service."""
        url = decoded(secret)["url"]
        url = url.replace("tq-rabbitmq.ns.svc:5672", f"127.0.0.1:{self.port}")
        return url.replace("management_port=15672", f"management_port={self.mgmt_port}")


@contextlib.contextmanager
def managed_node(tmp_path: Path) -> Iterator[Node]:
    if not os.path.exists(os.path.join(RABBITMQ_BIN, "rabbitmq-server")):
        pytest.skip("rabbitmq-server is not installed: run `make setup`")
    node = Node(tmp_path)
    epmd = subprocess.Popen(
        ["epmd", "-port", str(node.epmd_port), "-address", "127.0.0.1"],
        env=node.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(node.epmd_port, 10, epmd)
        yield node
    finally:
        node.server.stop()
        epmd.terminate()
        epmd.wait(10)


def management_get(node: Node, path: str, user: str, password: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{node.mgmt_port}{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def read_stats(url: str):
    reader = BrokerReader(max_threads=1)
    try:
        return asyncio.run(reader.read("ns/tq", url, ["jobs"], timeout=10))
    finally:
        reader.close()


def wait_ready(url: str, expected: int, timeout: float = 20.0):
    """Until `expected` tasks are ready and the management sample has caught up (the
    live AMQP depth shows them at once; the head timestamp comes with the next sample,
    up to 5 s later)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = read_stats(url)
        jobs = stats.queues["jobs"]
        caught_up = jobs.ready == expected and jobs.oldest_ready_at is not None
        if caught_up or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def test_generated_config_runs_a_node_the_runtime_and_operator_can_use(tmp_path):
    import ebbtide

    secret = provision.new_broker_secret(BODY, "rabbitmq")
    creds = decoded(secret)
    with managed_node(tmp_path) as node:
        node.start(secret)
        url = node.local_url(secret)

        # The generated user works on AMQP and the management API; guest does not exist.
        assert management_get(node, "/api/queues/%2F", creds["username"], creds["password"]) == 200
        assert management_get(node, "/api/overview", "guest", "guest") == 401
        # ...and the user is no administrator.
        assert management_get(node, "/api/users", creds["username"], creds["password"]) != 200
        guest = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.port}/%2F")
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(guest)

        app = ebbtide.App(broker_url=url)

        @app.task(queue="jobs")
        def job(n: int) -> None: ...

        job.send_many([(i,) for i in range(7)])
        app.close()
        stats = wait_ready(url, 7)
        jobs = stats.queues["jobs"]
        assert jobs.ready == 7 and jobs.enqueued_total == 7
        assert jobs.oldest_ready_at is not None  # from the management API

        # A new Secret (a TaskQueue recreated over a kept PVC): the node restarts on its
        # old data and takes the new credentials from the definitions it loads at boot.
        node.server.stop()
        renewed = provision.new_broker_secret(BODY, "rabbitmq")
        node.start(renewed)
        renewed_url = node.local_url(renewed)
        assert wait_ready(renewed_url, 7).queues["jobs"].ready == 7  # durable, persistent
