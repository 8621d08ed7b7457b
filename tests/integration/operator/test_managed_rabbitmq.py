"""The managed RabbitMQ's generated configuration on a real `rabbitmq-server`.

No image can run here, so the node is Debian's rabbitmq-server, started with exactly the
ConfigMap's rabbitmq.conf and enabled_plugins, the Secret's definitions.json and the
container's Erlang settings; only ports and paths are moved to a temp dir on loopback.
Checks: the management plugin is on, the role Secrets' URLs work for the runtime and for
the operator's statistics reader, `guest` does not exist, a node restarted on its old
data with newly generated Secrets accepts the new credentials (definitions load at every
boot); and each role has exactly its rights: the producer sends but cannot claim, the
worker claims but cannot manage the broker, the operator reads the statistics but cannot
publish, and a rotated password is applied live.
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
from ebbtide import PermissionDenied
from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide_operator import broker_admin, credentials, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.build import rabbitmq
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.wake import RabbitMQListener
from support.memory_cluster import MemoryCluster
from support.servers import RABBITMQ_BIN, RabbitMQProcess, free_port, wait_for_port

pytestmark = pytest.mark.rabbitmq

BODY = {
    "apiVersion": "ebbtide.dev/v1alpha1",
    "kind": "TaskQueue",
    "metadata": {"name": "tq", "namespace": "ns", "uid": "u1"},
    "spec": {
        # Plain listeners here (this file is about users, vhosts and boot); the same node
        # with the operator's TLS listeners is test_managed_tls.py's.
        "broker": {
            "type": "rabbitmq",
            "managed": {"resources": {"limits": {"memory": "1Gi"}}},
            "tls": {"enabled": False},
        },
        "queues": [{"name": "jobs"}],
        "worker": {"image": "w:1", "app": "m:app"},
    },
}


def decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def reconciled() -> MemoryCluster:
    """A TaskQueue's Secrets as a real reconcile makes them (fresh credentials)."""
    cluster = MemoryCluster()
    asyncio.run(provision.reconcile(cluster, BODY, parse_spec(BODY["spec"])))
    return cluster


def secret_of(cluster: MemoryCluster, role: str | None = None) -> dict:
    return cluster.objects[("Secret", "ns", "tq-broker" + (f"-{role}" if role else ""))]


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

    cluster = reconciled()
    secret = secret_of(cluster)
    creds, monitor = decoded(secret), decoded(secret_of(cluster, "operator"))
    with managed_node(tmp_path) as node:
        node.start(secret)
        url = node.local_url(secret_of(cluster, "producer"))

        # The admin works on the management API (and may manage users: rotations); the
        # operator's identity may read the queues, not the users; guest does not exist.
        assert management_get(node, "/api/queues/tq", creds["username"], creds["password"]) == 200
        assert management_get(node, "/api/users", creds["username"], creds["password"]) == 200
        assert (
            management_get(node, "/api/queues/tq", monitor["username"], monitor["password"]) == 200
        )
        assert management_get(node, "/api/users", monitor["username"], monitor["password"]) != 200
        assert management_get(node, "/api/overview", "guest", "guest") == 401
        guest = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.port}/%2F")
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(guest)

        app = ebbtide.App(broker_url=url)

        @app.task(queue="jobs")
        def job(n: int) -> None: ...

        job.send_many([(i,) for i in range(7)])
        app.close()
        stats = wait_ready(node.local_url(secret_of(cluster, "operator")), 7)
        jobs = stats.queues["jobs"]
        assert jobs.ready == 7 and jobs.enqueued_total == 7
        assert jobs.oldest_ready_at is not None  # from the management API

        # A new Secret (a TaskQueue recreated over a kept PVC): the node restarts on its
        # old data and takes the new credentials from the definitions it loads at boot.
        node.server.stop()
        renewed = reconciled()
        node.start(secret_of(renewed))
        renewed_url = node.local_url(secret_of(renewed, "operator"))
        assert wait_ready(renewed_url, 7).queues["jobs"].ready == 7  # durable, persistent


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(parse_options(url).amqp_url))


def refused(url: str, action) -> str:
    """The reply text of the channel error `action(channel)` ends in."""
    connection = connect(url)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            action(connection.channel())
        return str(error.value)
    finally:
        connection.close()


def hears_wake_up(listener_url: str, producer_url: str) -> str:
    """The queue name wake.py's RabbitMQ listener (on `listener_url`) hears when the
    producer sends a task."""
    import ebbtide

    async def main() -> str:
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = RabbitMQListener(listener_url, "ebbtide", heard.put_nowait)
        try:
            await asyncio.to_thread(listener.subscribed.wait, 20)
            assert listener.subscribed.is_set(), "the operator could not bind its wake queue"
            app = ebbtide.App(broker_url=producer_url)
            job = app.task(queue="jobs", name="woken")(lambda: None)
            await asyncio.to_thread(job.send)
            app.close()
            return await asyncio.wait_for(heard.get(), 10)
        finally:
            listener.stop()

    return asyncio.run(main())


def test_each_role_has_exactly_its_rights_and_a_rotation_is_applied_live(tmp_path):
    import ebbtide

    cluster = reconciled()
    with managed_node(tmp_path) as node:
        node.start(secret_of(cluster))
        producer, worker, operator = (
            node.local_url(secret_of(cluster, role)) for role in ("producer", "worker", "operator")
        )
        app = ebbtide.App(broker_url=producer)

        @app.task(queue="jobs")
        def job(n: int) -> None: ...

        # The producer sends (ready and delayed) into the pre-declared queues...
        job.send_many([(i,) for i in range(3)])
        job.options(delay=120).send(99)
        # ...but cannot claim, nor read the DLQ, nor touch a queue not in the spec.
        text = refused(producer, lambda ch: ch.basic_get("ebbtide.jobs"))
        assert "ACCESS_REFUSED" in text and "ebbtide-producer" in text
        assert "ACCESS_REFUSED" in refused(producer, lambda ch: ch.basic_get("ebbtide.jobs.dead"))
        other = app.task(queue="elsewhere")(lambda: None)
        with pytest.raises(PermissionDenied, match="'ebbtide-producer' lacks the right"):
            other.send()
        app.close()

        # The worker claims and acks (the whole runtime path), ...
        connection = connect(worker)
        channel = connection.channel()
        method, _, _ = channel.basic_get("ebbtide.jobs")
        assert method is not None
        channel.basic_ack(method.delivery_tag)
        connection.close()
        # ...but has no management API (no tags) and no other vhost.
        creds = decoded(secret_of(cluster, "worker"))
        assert management_get(node, "/api/users", creds["username"], creds["password"]) == 401
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
            connect(worker.replace("/tq?", "/%2F?"))

        # The operator reads the statistics (management API + heartbeat peeks)...
        assert wait_ready(operator, 2).queues["jobs"].ready == 2

        # ...and cannot publish, consume or declare.
        def publish(channel) -> None:
            channel.confirm_delivery()  # the refusal then ends the publish itself
            channel.basic_publish("", "ebbtide.jobs", b"x")

        text = refused(operator, publish)
        assert "ACCESS_REFUSED" in text and "exchange 'amq.default'" in text
        assert "ACCESS_REFUSED" in refused(operator, lambda ch: ch.basic_get("ebbtide.jobs"))

        # The operator's identity listens for wake-ups (wake.py) and hears the producer.
        assert hears_wake_up(operator, producer) == "jobs"

        # A rotation: a new worker password, applied live through the admin. The
        # worker's open connection keeps working; new ones need the new password.
        before = connect(worker)
        key = ("Secret", "ns", "tq-broker-worker")
        cluster.objects[key]["data"]["password"] = base64.b64encode(b"rotated-pw").decode()
        synced = asyncio.run(credentials.sync(cluster, BODY, parse_spec(BODY["spec"])))
        assert synced.rotated == ("worker",) and synced.rendered_changed
        admin_url = node.local_url({"data": {"url": base64.b64encode(synced.admin_url.encode())}})
        broker_admin.apply("rabbitmq", admin_url, synced.roles, "ebbtide", "tq", ["jobs"])
        channel = before.channel()
        assert channel.queue_declare("ebbtide.jobs", passive=True).method.message_count == 3
        before.close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(worker)
        rotated = node.local_url(secret_of(cluster, "worker"))
        assert "rotated-pw" in rotated
        connect(rotated).close()
        assert wait_ready(operator, 3).queues["jobs"].ready == 3  # no task lost
