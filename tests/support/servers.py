"""Real broker servers for tests, started as child processes on free loopback ports.

Each server is a child of the test process and is stopped at session end, so an
interrupted run leaves no orphan behind (the data dir is a temp dir).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass(frozen=True)
class TLSFiles:
    """A private CA and a server certificate it signed, as PEM files (what a TLS test
    server listens with and what its clients trust)."""

    ca_file: str
    cert_file: str
    key_file: str


def make_tls_files(directory: str, names: Sequence[str] = ("localhost",)) -> TLSFiles:
    """The operator's own CA and server certificate (ebbtide_operator.certs) for `names`,
    written to `directory`: the test servers run exactly what managed brokers get."""
    import datetime as dt

    from ebbtide_operator import certs

    now = dt.datetime.now(dt.UTC)
    ca = certs.new_ca("ebbtide test CA", now)
    server = certs.new_server_cert(ca, list(names), now)
    files = TLSFiles(*(os.path.join(directory, n) for n in ("ca.crt", "tls.crt", "tls.key")))
    for path, pem in zip(
        (files.ca_file, files.cert_file, files.key_file),
        (ca.cert_pem, server.cert_pem, server.key_pem),
        strict=True,
    ):
        with open(path, "w") as f:
            f.write(pem)
    os.chmod(files.key_file, 0o600)
    return files


@contextlib.contextmanager
def redis_server(port: int | None = None, password: str | None = None) -> Iterator[str]:
    """Start `redis-server` on loopback, with no persistence; yield its URL."""
    with redis_process(port=port, password=password) as server:
        yield server.url


@contextlib.contextmanager
def redis_process(
    *extra: str,
    port: int | None = None,
    password: str | None = None,
    tls: TLSFiles | None = None,
) -> Iterator[RedisProcess]:
    """Start `redis-server` on loopback; yield a handle that can `restart()` it on the
    same port and data dir. `extra` are more `--option value` arguments (the last wins),
    e.g. `"--appendonly", "yes"` for a broker that must survive its restart. With `tls`
    it listens on TLS only (`--port 0 --tls-port`), and its URL is rediss://localhost."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run `make setup`")
    with tempfile.TemporaryDirectory(prefix="ebbtide-redis-") as data_dir:
        server = RedisProcess(exe, port or free_port(), data_dir, password, extra, tls)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class RedisProcess:
    """One redis-server child; `stop()` is a clean SHUTDOWN (SIGTERM), `kill()` a crash."""

    def __init__(
        self,
        exe: str,
        port: int,
        data_dir: str,
        password: str | None,
        extra: tuple[str, ...],
        tls: TLSFiles | None = None,
    ) -> None:
        self.exe, self.port, self.data_dir, self.password = exe, port, data_dir, password
        self.extra, self.tls = extra, tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:  # the certificate names localhost
            return f"rediss://{auth}localhost:{self.port}/0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.tls is not None:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", self.tls.cert_file, "--tls-key-file", self.tls.key_file]
            args += ["--tls-ca-cert-file", self.tls.ca_file]
        args += ["--save", "", "--appendonly", "no", "--dir", self.data_dir]
        args += ["--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, 10, self.proc)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"  # Debian's scripts; /usr/sbin wrappers su to 'rabbitmq'


@contextlib.contextmanager
def rabbitmq_server(
    management: bool = True,
    advanced_config: str = "",
    timeout: float = 90.0,
    tls: TLSFiles | None = None,
    listeners: Callable[[int, int], Sequence[str]] | None = None,
    extra_conf: Sequence[str] = (),
) -> Iterator[dict]:
    """Start a private `rabbitmq-server` on loopback; yield its URLs and control env.

    Own epmd on a free port (a default `epmd -daemon` would outlive the tests), own
    HOME (so the Erlang cookie is private), data and logs in a temp dir. Yields
    {"url", "management_url", "node", "home", "epmd_port", ...} and stops everything at exit.
    With `tls` AMQP listens on TLS only and the management API on https only (as the
    managed broker does); the URLs are then amqps:// and https:// on localhost.
    `listeners(amqp_port, management_port)` replaces the listener lines (to run the
    operator's own), and `extra_conf` lines are appended.
    """
    server = os.path.join(RABBITMQ_BIN, "rabbitmq-server")
    if not os.path.exists(server):
        raise RuntimeError("rabbitmq-server is not installed: run `make setup`")
    port, dist_port, mgmt_port, epmd_port = (free_port() for _ in range(4))
    node = f"ebbtide-test-{port}@localhost"
    with tempfile.TemporaryDirectory(prefix="ebbtide-rabbitmq-") as base:
        conf = os.path.join(base, "rabbitmq.conf")
        lines = ["loopback_users = none", "collect_statistics_interval = 500"]
        if tls is None:
            lines.append(f"listeners.tcp.default = 127.0.0.1:{port}")
        else:
            lines += ["listeners.tcp = none", f"listeners.ssl.default = 127.0.0.1:{port}"]
            lines += _rabbitmq_tls_lines("ssl_options", tls)
        if management and tls is None:
            lines += [f"management.tcp.port = {mgmt_port}", "management.tcp.ip = 127.0.0.1"]
        elif management:
            lines += [f"management.ssl.port = {mgmt_port}", "management.ssl.ip = 127.0.0.1"]
            lines += _rabbitmq_tls_lines("management.ssl", tls)
        if listeners is not None:
            lines = lines[:2] + list(listeners(port, mgmt_port))
        lines += list(extra_conf)
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        plugins = os.path.join(base, "enabled_plugins")
        with open(plugins, "w") as f:
            f.write("[rabbitmq_management].\n" if management else "[].\n")
        with open(os.path.join(base, "advanced.config"), "w") as f:
            f.write(advanced_config or "[].\n")
        env = {
            **os.environ,
            "HOME": base,
            # A crashing node (or rabbitmqctl) dumps here, not into the caller's directory.
            "ERL_CRASH_DUMP": os.path.join(base, "erl_crash.dump"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
            "RABBITMQ_CONFIG_FILE": conf,
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(base, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
            "RABBITMQ_PID_FILE": os.path.join(base, "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(base, "rabbitmq-env.conf"),
        }
        if tls is None:  # these would add a plain listener next to the TLS one
            env |= {"RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port)}
        epmd = subprocess.Popen(
            ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle = RabbitMQProcess(server, env, node, base, port, mgmt_port, management, tls)
        try:
            wait_for_port(epmd_port, 10, epmd)
            handle.start(timeout)
            yield handle.info()
        finally:
            handle.stop()
            epmd.terminate()
            try:
                epmd.wait(10)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait()


class RabbitMQProcess:
    """One rabbitmq-server process group; `restart()` keeps its data (durable queues).
    Public: the managed-RabbitMQ test runs the operator's own config with it."""

    def __init__(self, server, env, node, base, port, mgmt_port, management, tls=None) -> None:
        self.server, self.env, self.node, self.base = server, env, node, base
        self.port, self.mgmt_port, self.management = port, mgmt_port, management
        self.tls: TLSFiles | None = tls
        self.proc: subprocess.Popen | None = None

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(RABBITMQ_BIN, "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, timeout: float) -> None:
        log = open(os.path.join(self.base, "server.out"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.server], env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        # await_startup fails fast until the node has registered with epmd: retry it.
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            done = self.ctl("await_startup", "--timeout", str(left), timeout=left + 10)
            if done.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = _tail(os.path.join(self.base, "server.out"))
                raise RuntimeError(f"rabbitmq-server did not start:\n{tail}\n{done.stderr[:300]}")
            time.sleep(0.5)
        wait_for_port(self.port, timeout, self.proc)
        if self.management:
            wait_for_port(self.mgmt_port, timeout, self.proc)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # erl_child_setup and friends

    def restart(self, timeout: float = 90.0) -> None:
        self.stop()
        self.start(timeout)

    def info(self) -> dict:
        if self.tls is not None:
            return {
                "url": f"amqps://guest:guest@localhost:{self.port}/%2F"
                f"?management_port={self.mgmt_port}",
                "management_url": f"https://guest:guest@localhost:{self.mgmt_port}",
                "node": self.node,
                "port": str(self.port),
                "server": self,
                "tls": self.tls,
            }
        return {
            "url": f"amqp://guest:guest@127.0.0.1:{self.port}/%2F",
            "management_url": f"http://guest:guest@127.0.0.1:{self.mgmt_port}",
            "node": self.node,
            "port": str(self.port),
            "server": self,
        }


def _rabbitmq_tls_lines(prefix: str, tls: TLSFiles) -> list[str]:
    """rabbitmq.conf lines for a TLS listener that shows `tls`'s certificate and asks
    clients for none (they log in with a password)."""
    return [
        f"{prefix}.cacertfile = {tls.ca_file}",
        f"{prefix}.certfile = {tls.cert_file}",
        f"{prefix}.keyfile = {tls.key_file}",
        f"{prefix}.verify = verify_none",
        f"{prefix}.fail_if_no_peer_cert = false",
    ]


def _tail(path: str, lines: int = 30) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])
    return ""


@dataclass(frozen=True)
class RedisClusterInfo:
    """A running Redis Cluster: its seed URL and every node's process."""

    url: str
    nodes: tuple[RedisProcess, ...]


@contextlib.contextmanager
def redis_cluster(
    masters: int = 3, replicas: int = 1, timeout: float = 30.0, tls: TLSFiles | None = None
) -> Iterator[RedisClusterInfo]:
    """A real Redis Cluster of `masters * (1 + replicas)` redis-server processes on
    loopback, made with `redis-cli --cluster create` (fewer than 3 masters, which it
    refuses: ADDSLOTSRANGE and MEET); yields once `cluster_state:ok` holds on every node.
    With `tls` (make_node_tls_files: the nodes' bus links show it as a client
    certificate too, and it names 127.0.0.1, the address the nodes announce) every port
    is TLS only; the URL is then rediss+cluster://."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed: run `make setup`")
    count = masters * (1 + replicas)
    with contextlib.ExitStack() as stack:
        procs = []
        for _ in range(count):
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ebbtide-rc-"))
            port = _cluster_port()
            extra = ("--cluster-enabled", "yes", "--cluster-config-file",
                     os.path.join(data_dir, "nodes.conf"), "--cluster-node-timeout", "2000")  # fmt: skip
            if tls is not None:
                extra += ("--tls-cluster", "yes", "--tls-replication", "yes")
            proc = RedisProcess(exe, port, data_dir, None, extra, tls)
            proc.start()
            stack.callback(proc.stop)
            procs.append(proc)
        hosts = [f"127.0.0.1:{p.port}" for p in procs]
        if masters >= 3:
            args = ["redis-cli", "--cluster", "create", *hosts, "--cluster-yes"]
            if tls is not None:
                args[1:1] = ["--tls", "--cacert", tls.ca_file]
            if replicas:
                args += ["--cluster-replicas", str(replicas)]
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {done.stdout[-500:]}{done.stderr}"
                )
        elif replicas:
            raise ValueError("redis-cli makes clusters of 3+ masters; fewer: replicas=0 only")
        else:  # redis-cli refuses fewer than 3 masters: the slots by hand, then MEET
            for i, proc in enumerate(procs):
                node = redis.Redis(port=proc.port, **_tls_client(tls))
                first, last = 16384 * i // masters, 16384 * (i + 1) // masters - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                if i:
                    node.execute_command("CLUSTER", "MEET", "127.0.0.1", procs[0].port)
                node.close()
        deadline = time.monotonic() + timeout
        for proc in procs:
            client = redis.Redis(port=proc.port, decode_responses=True, **_tls_client(tls))
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster_state not ok on {proc.port} after {timeout}s")
                time.sleep(0.05)
            client.close()
        if tls is not None:
            yield RedisClusterInfo(f"rediss+cluster://{','.join(hosts[:2])}/0", tuple(procs))
        else:
            yield RedisClusterInfo(f"redis+cluster://{','.join(hosts[:2])}/0", tuple(procs))


def _tls_client(tls: TLSFiles | None) -> dict:
    """redis-py arguments to reach a TLS test node by port (no host name check)."""
    if tls is None:
        return {}
    return {"ssl": True, "ssl_ca_certs": tls.ca_file, "ssl_check_hostname": False}


def make_node_tls_files(directory: str) -> TLSFiles:
    """make_tls_files, but the certificate is good for client authentication as well
    (cluster nodes present it on their bus links to each other) and names 127.0.0.1
    (what the nodes announce; redis-py turns `localhost` into it too)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from ebbtide_operator import certs

    now = dt.datetime.now(dt.UTC)
    ca = certs.new_ca("ebbtide test CA", now)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(*(os.path.join(directory, n) for n in ("ca.crt", "tls.crt", "tls.key")))
    pems = (
        ca.cert_pem,
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    for path, pem in zip((files.ca_file, files.cert_file, files.key_file), pems, strict=True):
        with open(path, "w") as f:
            f.write(pem)
    os.chmod(files.key_file, 0o600)
    return files


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a valid free port too."""
    while True:
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 10000))
            return port


@contextlib.contextmanager
def redis_sentinel(timeout: float = 30.0) -> Iterator[dict]:
    """One master, one replica and one sentinel watching them (quorum 1, fast failover);
    yields {"url": redis+sentinel://..., "master", "replica", "sentinel_port", "service"}."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run `make setup`")
    service = "ebbtide"
    with contextlib.ExitStack() as stack:
        dirs = [
            stack.enter_context(tempfile.TemporaryDirectory(prefix="ebbtide-rs-")) for _ in range(3)
        ]
        master = RedisProcess(exe, free_port(), dirs[0], None, ())
        master.start()
        stack.callback(master.stop)
        replica = RedisProcess(
            exe, free_port(), dirs[1], None, ("--replicaof", "127.0.0.1", str(master.port))
        )
        replica.start()
        stack.callback(replica.stop)
        port = free_port()
        conf = os.path.join(dirs[2], "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {port}\nbind 127.0.0.1\ndir {dirs[2]}\n"
                f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 5000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
        sentinel = subprocess.Popen(
            [exe, conf, "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        stack.callback(_stop, sentinel)
        wait_for_port(port, 10, sentinel)
        client = redis.Redis(port=port, decode_responses=True)
        deadline = time.monotonic() + timeout
        while not client.sentinel_slaves(service):
            if time.monotonic() > deadline:
                raise TimeoutError("the sentinel never saw the replica")
            time.sleep(0.1)
        client.close()
        link = redis.Redis(port=replica.port, decode_responses=True)
        while link.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica never synced with the master")
            time.sleep(0.05)
        link.close()
        yield {"url": f"redis+sentinel://127.0.0.1:{port}/{service}/0", "master": master,
               "replica": replica, "sentinel_port": port, "service": service}  # fmt: skip


def sentinel_failover(sentinel, service: str) -> bool:
    """SENTINEL FAILOVER on a redis.Redis to the sentinel; False while it answers
    NOGOODSLAVE (it has not yet judged the replica healthy) or INPROG: call again."""
    import redis

    try:
        return bool(sentinel.execute_command("SENTINEL", "FAILOVER", service))
    except redis.exceptions.ResponseError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
