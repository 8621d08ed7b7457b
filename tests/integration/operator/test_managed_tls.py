"""The managed brokers' TLS, as the operator generates it, on a real redis-server and a
real rabbitmq-server.

A real reconcile (on the in-memory cluster) makes the Secrets: the CA, the server
certificate for the Service's names, the role identities. The broker is started with the
operator's own TLS arguments (Redis) or listener configuration (RabbitMQ), only ports and
paths moved to loopback and a temp dir, and with the certificate from `<tq>-broker-tls`.
The in-cluster host names (`tq-redis.ns.svc`) resolve to 127.0.0.1 in this process, so
clients verify the real certificate against its real names. Checks: the producer's URL
sends, the operator's statistics read (over https for RabbitMQ's management API) with
the CA from `<tq>-broker-ca`, and another TaskQueue's CA is refused with one clear line.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path

import ebbtide
import pytest
from ebbtide.brokers import BrokerTLS
from ebbtide_operator import provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.build import rabbitmq, redis
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.tls_files import TLSFiles as OperatorFiles
from support.memory_cluster import MemoryCluster
from support.servers import TLSFiles, free_port, rabbitmq_server, redis_process
from worker_testkit import wait_for


def body(broker_type: str) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "broker": {"type": broker_type, "managed": {}},
            "queues": [{"name": "default"}],
            "worker": {"image": "w:1", "app": "m:app"},
        },
    }


def secret(cluster: MemoryCluster, name: str) -> dict[str, str]:
    data = cluster.objects[("Secret", "ns", name)]["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def reconciled(broker_type: str) -> MemoryCluster:
    cluster = MemoryCluster()
    b = body(broker_type)
    report = asyncio.run(provision.reconcile(cluster, b, parse_spec(b["spec"])))
    assert report["Secret/tq-broker-ca"] == report["Secret/tq-broker-tls"] == "created"
    return cluster


def server_files(cluster: MemoryCluster, directory: Path) -> TLSFiles:
    """The broker's own files, from `<tq>-broker-tls` (what its pod mounts)."""
    tls = secret(cluster, "tq-broker-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (directory / key).write_text(tls[key])
    (directory / "tls.key").chmod(0o600)
    return TLSFiles(*(str(directory / key) for key in ("ca.crt", "tls.crt", "tls.key")))


def client_tls(cluster: MemoryCluster, directory: Path) -> BrokerTLS:
    """What a worker or the operator trusts: `<tq>-broker-ca`'s ca.crt."""
    return OperatorFiles(str(directory)).broker_tls(secret(cluster, "tq-broker-ca")["ca.crt"])


@pytest.fixture
def in_cluster_names(monkeypatch):
    """`<svc>.ns.svc` resolves to loopback in this process (the certificate names them)."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".ns.svc"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


def local(url: str, service: str, port: int, server_port: int) -> str:
    return url.replace(f"{service}.ns.svc:{port}", f"{service}.ns.svc:{server_port}")


def other_ca(tmp_path: Path) -> BrokerTLS:
    """Another TaskQueue's CA: it must not vouch for this broker."""
    return client_tls(reconciled("redis"), tmp_path)


def operator_stats(url: str, tls: BrokerTLS):
    reader = BrokerReader(max_threads=1)
    try:
        return asyncio.run(reader.read("ns/tq", url, ["default"], timeout=10, tls=tls))
    finally:
        reader.close()


def send(url: str, tls: BrokerTLS, n: int, monkeypatch) -> None:
    """A producer that trusts `tls`'s CA, the way a pod mounting the CA Secret does."""
    assert tls.ca_file is not None
    monkeypatch.setenv("EBBTIDE_BROKER_CA_FILE", tls.ca_file)
    app = ebbtide.App(broker_url=url)

    @app.task(queue="default")
    def job(i: int) -> None: ...

    try:
        job.send_many([(i,) for i in range(n)])
    finally:
        app.close()


@pytest.mark.redis
def test_managed_redis_tls_with_the_operators_arguments(tmp_path, in_cluster_names, monkeypatch):
    cluster = reconciled("redis")
    files = server_files(cluster, tmp_path)
    (tmp_path / "users.acl").write_text(secret(cluster, "tq-broker")["users.acl"])
    port = free_port()
    args = redis.tls_args()
    args[args.index("--tls-port") + 1] = str(port)
    args = [a.replace(f"{redis.TLS_DIR}/", f"{tmp_path}/") for a in args]
    with redis_process("--aclfile", str(tmp_path / "users.acl"), *args, port=port) as server:
        assert files.cert_file in args
        tls = client_tls(cluster, tmp_path / "client")
        producer = local(secret(cluster, "tq-broker-producer")["url"], "tq-redis", 6379, port)
        operator = local(secret(cluster, "tq-broker-operator")["url"], "tq-redis", 6379, port)
        assert producer.startswith("rediss://ebbtide-producer:")
        send(producer, tls, 3, monkeypatch)
        assert operator_stats(operator, tls).queues["default"].ready == 3
        with pytest.raises(Exception, match="certificate verify failed"):
            operator_stats(operator, other_ca(tmp_path / "other"))
        with pytest.raises(ConnectionError) as refused:
            send(producer, other_ca(tmp_path / "other2"), 1, monkeypatch)
        assert "\n" not in str(refused.value)
        assert "TLS: the broker's certificate did not verify against CA" in str(refused.value)
        assert server.proc is not None and server.proc.poll() is None


@pytest.mark.rabbitmq
def test_managed_rabbitmq_tls_with_the_operators_config(tmp_path, in_cluster_names, monkeypatch):
    cluster = reconciled("rabbitmq")
    files = server_files(cluster, tmp_path)
    (tmp_path / "definitions.json").write_text(secret(cluster, "tq-broker")["definitions.json"])

    def listeners(amqp: int, management: int) -> list[str]:
        lines = [
            line.replace(rabbitmq.TLS_DIR, str(tmp_path)) for line in rabbitmq.listener_conf(True)
        ]
        lines = [
            line.replace(
                "listeners.ssl.default = 5671", f"listeners.ssl.default = 127.0.0.1:{amqp}"
            ).replace("management.ssl.port = 15671", f"management.ssl.port = {management}")
            for line in lines
        ]
        return [*lines, "management.ssl.ip = 127.0.0.1"]

    with rabbitmq_server(
        tls=files,
        listeners=listeners,
        extra_conf=[f"load_definitions = {tmp_path / 'definitions.json'}"],
    ) as started:
        amqp, management = int(started["port"]), started["server"].mgmt_port

        def here(role: str) -> str:
            url = secret(cluster, f"tq-broker-{role}")["url"]
            url = url.replace("tq-rabbitmq.ns.svc:5671", f"tq-rabbitmq.ns.svc:{amqp}")
            return url.replace("management_port=15671", f"management_port={management}")

        tls = client_tls(cluster, tmp_path / "client")
        assert here("producer").startswith("amqps://ebbtide-producer:")
        send(here("producer"), tls, 4, monkeypatch)

        # The operator's role reads the https management API (it alone knows ages; the
        # ready count comes live over AMQPS, the age with the next management sample).
        def seen() -> bool:
            jobs = operator_stats(here("operator"), tls).queues["default"]
            return jobs.ready == 4 and jobs.oldest_ready_at is not None

        wait_for(seen, timeout=30, what="4 ready tasks and their age in the operator's stats")
        with pytest.raises(ConnectionError, match="did not verify against CA"):
            send(here("producer"), other_ca(tmp_path / "other"), 1, monkeypatch)
