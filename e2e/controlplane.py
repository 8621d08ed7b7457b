"""The local Kubernetes cluster: etcd, kube-apiserver and kube-controller-manager on
loopback, built from Go modules (e2e/build-binaries.sh) because there is no Docker here;
with `--node` (what `make cluster-up` runs) also kube-scheduler and a real node
(e2e/node.py: kubelet on containerd, kube-proxy, CoreDNS, kube-router's NetworkPolicy
firewall, a host-path provisioner), a one-node cluster as `kind create cluster` makes.

    python -m e2e.controlplane up [--node]   # build once (cached), start, wait until ready
    python -m e2e.controlplane down    # stop everything, leave no process behind
    python -m e2e.controlplane status

`up` runs the processes detached (they outlive the command) and records their pids in
state.json; the pytest session fixture runs them attached instead, as children that die
with it. Every failure is one line that says what to do, never a hang.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from e2e import kubeconfig, node, pki, processes

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("EBBTIDE_CACHE", Path.home() / ".cache" / "ebbtide"))
DEFAULT_ROOT = CACHE / "cluster"
# A cluster with a real node lives apart, so that a suite expecting a bare control plane
# (the process kubelet's) never picks it up, nor the reverse.
NODE_ROOT = CACHE / "cluster-node"
SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT = float(os.environ.get("EBBTIDE_CLUSTER_READY_TIMEOUT", "90"))
# Fixed ports when set (e.g. to reach the API from elsewhere); by default each is free.
PORT_ENV = {
    "etcd": "EBBTIDE_ETCD_PORT",
    "etcd-peer": "EBBTIDE_ETCD_PEER_PORT",
    "apiserver": "EBBTIDE_APISERVER_PORT",
    "controller-manager": "EBBTIDE_KCM_PORT",
}
# The node's ports (all on loopback but the kubelet's, on the bridge): free ones, always.
NODE_PORTS = (
    "kube-scheduler",
    "kubelet",
    "kubelet-healthz",
    "kube-proxy-healthz",
    "kube-proxy-metrics",
    "coredns-ready",
    "kube-router-health",
)
NODE_CLIENTS = {**node.CLIENTS, "kube-scheduler": ("system:kube-scheduler", None)}
CLIENTS = {
    "admin": ("ebbtide-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
}


class ControlPlaneError(RuntimeError):
    """A failure the user can act on; its message is one line that says how."""


def build_binaries(what: str = "controlplane") -> Path:
    """The cached bin dir, building it on first use (e2e/build-binaries.sh [node])."""
    result = subprocess.run(
        [str(HERE / "build-binaries.sh"), what], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode == 3:
        raise ControlPlaneError(
            "no Go toolchain on PATH: install Go >= 1.26, or set KUBECONFIG to use an existing cluster"
        )
    if result.returncode != 0:
        raise ControlPlaneError(
            f"building the {what} binaries failed (exit {result.returncode}): rerun e2e/build-binaries.sh {what} to see why"
        )
    return Path(result.stdout.strip().splitlines()[-1])


LISTEN_PORTS = (20000, 32767)  # where listening ports are picked (see free_port): above
# the 10248-10260 of the components' defaults, below the usual ephemeral range
_picked: set[int] = set()


@functools.cache
def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port to listen on, outside the ephemeral range. A port that bind(0) hands
    out is an ephemeral one, and the components started before the one that listens on
    it make outgoing connections from ephemeral ports: one took kube-router's health
    port that way ("bind: address already in use") and the cluster never came up."""
    candidates = listen_candidates()
    for _ in range(200):
        port = random.choice(candidates)
        if port not in _picked and port_is_free(port):
            _picked.add(port)
            return port
    with socket.socket() as s:  # nothing free out there: the old way
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def listen_candidates() -> tuple[int, ...]:
    """The ports free_port() draws from, computed once: the cluster's start asks for
    about a dozen."""
    low, high = LISTEN_PORTS
    e_low, e_high = ephemeral_range()
    return tuple(p for p in range(low, high + 1) if not e_low <= p <= e_high)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_ports(with_node: bool = False) -> dict[str, int]:
    ports: dict[str, int] = {name: free_port() for name in NODE_PORTS} if with_node else {}
    for name, env in PORT_ENV.items():
        if os.environ.get(env):
            port = int(os.environ[env])
            if not port_is_free(port):
                raise ControlPlaneError(
                    f"port {port} for {name} ({env}) is already in use: stop what listens there, or unset {env} to pick a free port"
                )
            ports[name] = port
        else:
            ports[name] = free_port()
    return ports


@dataclass
class State:
    """What `down` and a later `up` need to find a running control plane again."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    bin_dir: str = ""
    node_bin: str = ""  # set when the cluster has a real node

    def alive(self) -> dict[str, bool]:
        return {name: processes.alive(pid, started) for name, (pid, started) in self.pids.items()}

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "ports": self.ports,
                    "pids": self.pids,
                    "bin_dir": self.bin_dir,
                    "node_bin": self.node_bin,
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        pids = {name: (int(p[0]), p[1]) for name, p in raw.get("pids", {}).items()}
        return cls(
            ports=raw.get("ports", {}),
            pids=pids,
            bin_dir=raw.get("bin_dir", ""),
            node_bin=raw.get("node_bin", ""),
        )


class ControlPlane:
    """One control plane under `root`. `attached=True` ties its processes' lives to ours.
    `controller_manager=False` starts etcd and kube-apiserver only (the operator's
    integration tests, tests/support/apiserver.py): no controller then writes a
    Deployment's status or makes a pod, so the tests do it themselves."""

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        *,
        attached: bool = True,
        with_node: bool = False,
        controller_manager: bool = True,
    ) -> None:
        if with_node and not controller_manager:
            raise ValueError("a node needs the controller-manager (ReplicaSets, node CIDRs)")
        self.root = root
        self.attached = attached
        self.with_node = with_node
        self.controller_manager = controller_manager
        self.state_path = root / "state.json"
        self.kubeconfig = root / "admin.kubeconfig"
        self.pki = pki.Pki(root / "pki")
        self.logs = root / "logs"
        self.state = State()
        self.started_here = False
        self._children: list[subprocess.Popen] = []

    @property
    def bin_dir(self) -> Path:
        return Path(self.state.bin_dir)

    def url(self) -> str:
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    # -- lifecycle ---------------------------------------------------------------------

    def up(self) -> ControlPlane:
        """Reuse a running, ready control plane; otherwise clean up after a killed run and
        start a fresh one."""
        previous = State.load(self.state_path)
        if previous is not None:
            alive = previous.alive()
            if alive and all(alive.values()) and bool(previous.node_bin) == self.with_node:
                self.state = previous
                if self._ready():
                    log(
                        f"control plane already running at {self.url()} (kubeconfig {self.kubeconfig})"
                    )
                    return self
                raise ControlPlaneError(
                    f"a control plane in {self.root} is running but not ready: run `make cluster-down` and retry (logs: {self.logs})"
                )
            if alive and all(alive.values()):
                raise ControlPlaneError(
                    f"a cluster {'without' if self.with_node else 'with'} a real node is running in {self.root}: run `make cluster-down` first"
                )
            log(f"cleaning up stale state in {self.root} from a run that was killed")
            self._stop(previous)
        if (self.root / "etcd").exists() and previous is None:
            log(f"removing a stale etcd data dir in {self.root} (no running control plane owns it)")
        self._wipe()
        started = time.monotonic()
        self.state = State(ports=choose_ports(self.with_node), bin_dir=str(build_binaries()))
        if self.with_node:
            self.state.node_bin = str(build_binaries("node"))
            try:
                node.preflight(Path(self.state.node_bin))
            except node.NodeError as error:
                raise ControlPlaneError(str(error)) from None
        self.started_here = True
        try:
            self._start_all()
        except BaseException:
            self.down()
            raise
        log(
            f"control plane ready at {self.url()} in {time.monotonic() - started:.1f}s (kubeconfig {self.kubeconfig})"
        )
        return self

    def down(self) -> None:
        current = State.load(self.state_path) or self.state
        self._stop(current)
        for child in self._children:
            child.wait()
        self._children.clear()
        self._wipe()

    def _wipe(self) -> None:
        for name in (
            "etcd",
            "pki",
            "state.json",
            "admin.kubeconfig",
            "controller-manager.kubeconfig",
            "node",
        ):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _stop(self, state: State) -> None:
        # Reverse start order: the node before the control plane, the controller-manager and
        # API server before their storage; the pods' containers after the kubelet and before
        # containerd (a container outlives containerd unless it is stopped).
        for name in reversed(list(state.pids)):
            pid, started = state.pids[name]
            if name == "containerd":
                node.kill_pods()
            if processes.terminate(pid, started, grace=15.0):
                log(f"stopped {name} (pid {pid})")
        if state.node_bin or self.with_node:
            node.kill_pods()
            node.teardown_network()
            log(
                f"removed {node.BRIDGE}, the pods' network namespaces and the KUBE-*/CNI-* iptables chains"
            )
        self.state_path.unlink(missing_ok=True)

    # -- starting ----------------------------------------------------------------------

    def _start_all(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        pki.create(self.pki.root, {**CLIENTS, **(NODE_CLIENTS if self.with_node else {})})
        ports = self.state.ports
        if self.with_node:
            node.make_bridge()  # the API server advertises the bridge address to pods

        self._start("etcd", self._etcd_args())
        self._wait("etcd", lambda: self._http_ok(f"http://127.0.0.1:{ports['etcd']}/health"))

        self._start("kube-apiserver", self._apiserver_args())
        self._wait("kube-apiserver", self._ready)
        cert, key = self.pki.client("admin")
        kubeconfig.write(self.kubeconfig, self.url(), self.pki.ca_cert, cert, key, "ebbtide-e2e")
        if not self.controller_manager:
            return

        kcm_kubeconfig = self.root / "controller-manager.kubeconfig"
        cert, key = self.pki.client("controller-manager")
        kubeconfig.write(kcm_kubeconfig, self.url(), self.pki.ca_cert, cert, key, "ebbtide-e2e")
        self._start("kube-controller-manager", self._controller_manager_args(kcm_kubeconfig))
        # Ready when its service-account controller has done something observable.
        self._wait("kube-controller-manager", self._default_service_account_exists)
        if self.with_node:
            self._start_node()

    def _start(
        self, name: str, args: list[str], *, where: Path | None = None, env: dict | None = None
    ) -> None:
        binary = shutil.which(args[0]) if where is None and args[0] == "containerd" else None
        argv = [binary or str((where or self.bin_dir) / args[0]), *args[1:]]
        child = processes.spawn(argv, self.logs / f"{name}.log", env=env, attached=self.attached)
        if self.attached:
            self._children.append(child)
        self.state.pids[name] = (child.pid, processes.start_time(child.pid))
        self.state.save(self.state_path)

    def _wait(self, name: str, ready, timeout: float = READY_TIMEOUT) -> None:
        pid, started = self.state.pids[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not processes.alive(pid, started):
                raise ControlPlaneError(
                    f"{name} exited during startup: {self._last_line(name)} (log: {self.logs / name}.log)"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{name} not ready after {timeout:.0f}s: {self._last_line(name)} (log: {self.logs / name}.log)"
        )

    def _last_line(self, name: str) -> str:
        try:
            lines = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "empty log"

    # -- the node ----------------------------------------------------------------------

    def _client_kubeconfig(self, name: str) -> Path:
        path = self.root / "node" / f"{name}.kubeconfig"
        cert, key = self.pki.client(name)
        return kubeconfig.write(path, self.url(), self.pki.ca_cert, cert, key, "ebbtide-e2e")

    def _start_node(self) -> None:
        ports = self.state.ports
        where = Path(self.state.node_bin)
        files = self.root / "node"
        files.mkdir(parents=True, exist_ok=True)

        self._start(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--kubeconfig={self._client_kubeconfig('kube-scheduler')}",
                f"--authentication-kubeconfig={self._client_kubeconfig('kube-scheduler')}",
                f"--authorization-kubeconfig={self._client_kubeconfig('kube-scheduler')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-scheduler']}",
                "--leader-elect=false",
                "--v=1",
            ],
            where=where,
        )
        self._wait(
            "kube-scheduler",
            lambda: self._http_ok(
                f"https://127.0.0.1:{ports['kube-scheduler']}/healthz", _insecure()
            ),
        )

        # Stale containers of a killed run would hold the bridge's addresses and mounts.
        node.kill_pods()
        node.remove_netns()
        self._start("containerd", ["containerd", f"--config={node.write_containerd_config(files)}"])
        self._wait("containerd", node.containerd_ready, 30)
        try:
            node.import_images()
        except node.NodeError as error:
            raise ControlPlaneError(str(error)) from None

        self._start(
            "kubelet",
            node.kubelet_args(
                node.write_kubelet_config(files, self.pki.ca_cert, ports),
                self._client_kubeconfig("kubelet"),
            ),
            where=where,
        )
        self._wait("kubelet", self._node_ready, 120)

        proxy_config = node.write_kube_proxy_config(
            files, self._client_kubeconfig("kube-proxy"), ports
        )
        self._start("kube-proxy", ["kube-proxy", f"--config={proxy_config}", "--v=1"], where=where)
        self._wait(
            "kube-proxy",
            lambda: self._http_ok(f"http://127.0.0.1:{ports['kube-proxy-healthz']}/healthz"),
        )

        # CoreDNS, kube-router and the provisioner are the cluster's add-ons: admin identity.
        corefile = node.write_corefile(files, self.kubeconfig, ports)
        self._start("coredns", ["coredns", f"-conf={corefile}"], where=where)
        self._wait(
            "coredns", lambda: self._http_ok(f"http://127.0.0.1:{ports['coredns-ready']}/ready")
        )

        self._start("kube-router", node.kube_router_args(self.kubeconfig, ports), where=where)
        self._wait(
            "kube-router",
            lambda: self._http_ok(f"http://127.0.0.1:{ports['kube-router-health']}/healthz"),
        )

        self._start(
            "provisioner",
            [
                Path(sys.executable).name,
                "-m",
                "e2e.provisioner",
                f"--kubeconfig={self.kubeconfig}",
                f"--root={node.STATE / 'volumes'}",
            ],
            where=Path(sys.executable).parent,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        self._wait("provisioner", self._storage_class_exists)

    def _get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(
                f"{self.url()}{path}", timeout=2, context=self._tls()
            ) as response:
                return json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _node_ready(self) -> bool:
        found = self._get(f"/api/v1/nodes/{node.NODE_NAME}")
        conditions = (found or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _storage_class_exists(self) -> bool:
        return self._get(f"/apis/storage.k8s.io/v1/storageclasses/{node.STORAGE_CLASS}") is not None

    # -- readiness probes --------------------------------------------------------------

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        cert, key = self.pki.client("admin")
        context.load_cert_chain(str(cert), str(key))
        return context

    def _ready(self) -> bool:
        return self.pki.ca_cert.exists() and self._http_ok(f"{self.url()}/readyz", self._tls())

    def _default_service_account_exists(self) -> bool:
        return self._http_ok(
            f"{self.url()}/api/v1/namespaces/default/serviceaccounts/default", self._tls()
        )

    # -- command lines -----------------------------------------------------------------

    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.state.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.state.ports['etcd-peer']}"
        return [
            "etcd",
            "--name=e2e",
            f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=e2e={peer}",
            "--unsafe-no-fsync",  # a throwaway test store: speed over durability
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        if self.with_node:
            # Pods reach the API server at the bridge address (the `kubernetes` Service's
            # endpoint); the kubelet's KUBE-FIREWALL drops pod traffic to 127.0.0.0/8.
            address = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={node.NODE_IP}",
                "--authorization-mode=Node,RBAC",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={p.client('admin')[0]}",
                f"--kubelet-client-key={p.client('admin')[1]}",
            ]
        else:
            address = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--authorization-mode=RBAC",
                # A loopback address cannot be an Endpoints address; nothing here needs the
                # `kubernetes` Service's endpoints.
                "--endpoint-reconciler-type=none",
            ]
        return [
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.state.ports['etcd']}",
            *address,
            f"--secure-port={self.state.ports['apiserver']}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            f"--cert-dir={p.root}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={p.sa_public}",
            f"--service-account-signing-key-file={p.sa_private}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self, kubeconfig_path: Path) -> list[str]:
        p = self.pki
        return [
            "kube-controller-manager",
            f"--kubeconfig={kubeconfig_path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.state.ports['controller-manager']}",
            "--leader-elect=false",
            # Each controller acts as its own ServiceAccount, as kubeadm sets it up, so the
            # bootstrap RBAC roles are exercised.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_private}",
            f"--root-ca-file={p.ca_cert}",
            f"--cluster-signing-cert-file={p.ca_cert}",
            f"--cluster-signing-key-file={p.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            *(
                [
                    f"--cluster-cidr={node.CLUSTER_CIDR}",
                    "--allocate-node-cidrs=true",
                    "--node-cidr-mask-size=24",
                ]
                if self.with_node
                else []
            ),
            "--profiling=false",
            "--v=1",
        ]


def _insecure() -> ssl.SSLContext:
    """For the health endpoints of components with self-signed serving certificates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.controlplane", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig"])
    parser.add_argument(
        "--node",
        action="store_true",
        help="up: also kube-scheduler and a real node (kubelet, containerd, kube-proxy, CoreDNS, kube-router)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help=f"state dir (default {DEFAULT_ROOT}, with --node {NODE_ROOT})",
    )
    args = parser.parse_args(argv)
    root = args.root or (NODE_ROOT if args.node else DEFAULT_ROOT)
    plane = ControlPlane(root, attached=False, with_node=args.node)
    try:
        if args.command == "up":
            plane.up()
            print(plane.kubeconfig)
        elif args.command == "down":
            plane.down()
            log("down")
        elif args.command == "kubeconfig":
            print(plane.kubeconfig)
        else:
            state = State.load(plane.state_path)
            if state is None:
                log("not running")
                return 1
            for name, up in state.alive().items():
                log(f"{name}: {'running' if up else 'dead'} (pid {state.pids[name][0]})")
            return 0 if all(state.alive().values()) else 1
    except ControlPlaneError as error:
        print(f"cluster: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
