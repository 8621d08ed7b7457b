"""The node of the local cluster: the real kubelet on Debian's containerd, kube-proxy
(iptables), kube-scheduler, CoreDNS, kube-router's NetworkPolicy firewall and a host-path
volume provisioner, as `kind create cluster` would give, on a private bridge.

`e2e.controlplane` starts and stops it with the control plane (`make cluster-up`); the
settings each piece needs on these machines are recorded in shared/notes/real-node.md.

    python -m e2e.node import-images     # import `make images`' archives into containerd

Network: the `cni0` bridge, 10.244.0.1/24, made before anything starts, is the node's IP
(the kubelet refuses a loopback one) and where CoreDNS and the API server listen for pods.
No masquerade, no route off the machine: pods reach each other and the host, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

from e2e import processes

NODE_NAME = "ebbtide-node"
BRIDGE = "cni0"
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
NODE_IP = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"  # as e2e.controlplane's
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN = Path("/usr/lib/cni")
# Containerd's and the kubelet's state live apart from any other containerd on the machine.
STATE = Path(os.environ.get("EBBTIDE_NODE_STATE", "/var/lib/ebbtide-node"))
RUN = Path("/run/ebbtide-node")
SOCKET = RUN / "containerd" / "containerd.sock"
IMAGES = Path(os.environ.get("EBBTIDE_CACHE", Path.home() / ".cache" / "ebbtide")) / "images"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
STORAGE_CLASS = "local-path"
PROVISIONER = "ebbtide.dev/local-path"
# Chains and sets the node's components make, removed on teardown.
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPSET_PREFIXES = ("KUBE-", "kube-router", "inet6:KUBE-")
CLIENTS = {
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", None),
    "kube-scheduler": ("system:kube-scheduler", None),
}


class NodeError(RuntimeError):
    """A failure the user can act on; one line."""


# -- preflight -----------------------------------------------------------------------------


def preflight(node_bin: Path) -> None:
    """Everything the node needs, checked before anything starts: one line per failure."""
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (containerd, iptables, a bridge): run as root")
    for tool, package in (
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("ctr", "containerd"),
        ("iptables", "iptables"),
        ("ipset", "ipset"),
        ("ip", "iproute2"),
    ):
        if shutil.which(tool) is None:
            raise NodeError(f"no {tool} on PATH: run `make deps-node` (apt-get install {package})")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_BIN / plugin).exists():
            raise NodeError(
                f"no CNI plugin {CNI_BIN / plugin}: run `make deps-node` (apt-get install containernetworking-plugins)"
            )
    missing = [c for c in ("cpu", "memory", "pids") if not _cgroup_controller(c)]
    if missing:
        raise NodeError(
            f"cgroups missing: no {', '.join(missing)} controller under /sys/fs/cgroup; the kubelet cannot run pods here"
        )
    for binary in ("kubelet", "kube-proxy", "kube-scheduler", "coredns", "kube-router"):
        if not (node_bin / binary).exists():
            raise NodeError(
                f"no {node_bin / binary}: run `e2e/build-binaries.sh node` to see why it was not built"
            )
    if not archive(PAUSE_IMAGE).exists() and not image_present(PAUSE_IMAGE):
        raise NodeError("image not built: the pause (sandbox) image is missing: run `make images`")


def _cgroup_controller(name: str) -> bool:
    if Path(f"/sys/fs/cgroup/{name}").is_dir():
        return True  # v1 (or hybrid)
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    return controllers.exists() and name in controllers.read_text().split()


def archive(image: str) -> Path:
    return IMAGES / "archives" / (image.replace("/", "_").replace(":", "_") + ".tar")


def image_present(image: str) -> bool:
    """Whether the node's containerd holds `image` (a full name: docker.io/library/...)."""
    if not SOCKET.exists():
        return False
    listed = ctr("images", "list", "--quiet", f"name=={image}", check=False).stdout.split()
    return image in listed


# -- the bridge ------------------------------------------------------------------------------


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def make_bridge() -> None:
    """cni0 with the gateway address, up before the kubelet (its node IP) and the API
    server (which pods reach there) start; the bridge plugin adopts it."""
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    addresses = run("ip", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f"{NODE_IP}/" not in addresses:
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # Pod-to-pod traffic on one bridge must pass iptables for the NetworkPolicy firewall.
    for key, value in (
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/ipv4/ip_forward", "1"),
    ):
        path = Path("/proc/sys") / key
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value)


def remove_bridge() -> None:
    run("ip", "link", "del", BRIDGE, check=False)


# -- files -----------------------------------------------------------------------------------


def write_containerd_config(root: Path) -> Path:
    """containerd's config: its defaults, with what these machines need (real-node.md)."""
    path = root / "containerd.toml"
    cni_conf = root / "cni"
    cni_conf.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""version = 2
root = "{STATE / "containerd"}"
state = "{RUN / "containerd" / "state"}"
[grpc]
  address = "{SOCKET}"
[plugins."io.containerd.grpc.v1.cri"]
  # Locally imported (`make images`): no registry is reachable.
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: runc cannot set the sandbox's oom_score_adj -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    # A runtime table replaces the default one whole: runtime_type must be restated.
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"""
    )
    (cni_conf / "10-ebbtide.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "ebbtide",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": BRIDGE,
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                            # Pods and Services only: no default route off the machine.
                            "routes": [{"dst": CLUSTER_CIDR}, {"dst": SERVICE_CIDR}],
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            },
            indent=2,
        )
    )
    return path


def write_kubelet_config(root: Path, ca_cert: Path, ports: dict[str, int]) -> Path:
    path = root / "kubelet.yaml"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # hybrid cgroups: v1 controllers plus /sys/fs/cgroup/unified
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{SOCKET}",
        "address": NODE_IP,
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet-healthz"],
        # The API server (logs, exec, port-forward) presents the admin client certificate.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "",  # no host resolver: nothing beyond the machine is reachable
        "staticPodPath": "",
        "serializeImagePulls": False,
        # Imported images are the only copies: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "maxPods": 60,
        "podPidsLimit": 4096,
        "shutdownGracePeriod": "0s",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_kube_proxy_config(root: Path, kubeconfig: Path, ports: dict[str, int]) -> Path:
    path = root / "kube-proxy.yaml"
    # `kube-proxy --config` ignores --kubeconfig and --hostname-override: both go here.
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": CLUSTER_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
        "conntrack": {"maxPerCore": 0},  # leave the machine's conntrack table size alone
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_corefile(root: Path, kubeconfig: Path, ports: dict[str, int]) -> Path:
    path = root / "Corefile"
    path.write_text(
        f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ports["coredns-ready"]}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} ebbtide-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
    )
    return path


# -- arguments -------------------------------------------------------------------------------


def kubelet_args(config: Path, kubeconfig: Path) -> list[str]:
    return [
        "kubelet",
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        f"--root-dir={STATE / 'kubelet'}",
        f"--cert-dir={STATE / 'kubelet' / 'pki'}",
        "--v=1",
    ]


def kube_router_args(kubeconfig: Path, ports: dict[str, int]) -> list[str]:
    return [
        "kube-router",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        "--enable-ipv6=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--health-port={ports['kube-router-health']}",
        "--metrics-port=0",
        "--v=1",
    ]


# -- containerd ------------------------------------------------------------------------------


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ctr", f"--address={SOCKET}", "--namespace=k8s.io", *args, check=check)


def containerd_ready() -> bool:
    return SOCKET.exists() and ctr("version", check=False).returncode == 0


def archive_names(tar: Path) -> list[str]:
    """The image names a `podman save --format docker-archive` tar carries (RepoTags)."""
    with tarfile.open(tar) as archive:
        member = archive.extractfile("manifest.json")
        manifest = json.loads(member.read()) if member else []
    return [name for entry in manifest for name in entry.get("RepoTags") or []]


def import_images(quiet: bool = False) -> list[str]:
    """Import every archive of `make images` whose image id differs from the last import,
    or whose image containerd does not hold (its root was wiped, say)."""
    imported = []
    archives = IMAGES / "archives"
    present = set(ctr("images", "list", "--quiet", check=False).stdout.split())
    for tar in sorted(archives.glob("*.tar")) if archives.is_dir() else []:
        id_file, done = tar.with_suffix(".id"), tar.with_suffix(".imported")
        image_id = id_file.read_text().strip() if id_file.exists() else ""
        if done.exists() and done.read_text().strip() == image_id:
            names = archive_names(tar)
            if names and all(name in present for name in names):
                continue
        result = ctr("images", "import", str(tar), check=False)
        if result.returncode != 0:
            raise NodeError(
                f"importing {tar.name} into containerd failed: {result.stderr.strip()[-200:]}"
            )
        done.write_text(image_id)
        imported.append(tar.stem)
    if imported and not quiet:
        print(f"node: imported {', '.join(imported)} into containerd (k8s.io)", file=sys.stderr)
    return imported


# -- teardown --------------------------------------------------------------------------------


def kill_pods() -> None:
    """SIGKILL every process in the kubelet's pod cgroups and every containerd shim of ours:
    a container outlives containerd unless it is stopped."""
    pids: set[int] = set()
    for controller in ("pids", "memory", "cpu", "freezer"):
        base = Path(f"/sys/fs/cgroup/{controller}/kubepods")
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                pids.update(int(p) for p in procs.read_text().split() if p.strip())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "containerd-shim" in cmdline and str(SOCKET) in cmdline:
            pids.add(int(proc.name))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    processes.wait_until(lambda: not any(processes.alive(p) for p in pids), 10.0)


def remove_netns() -> None:
    """The CRI's network namespaces (bind mounts under /run/netns) and their IP leases."""
    for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
        run("umount", str(netns), check=False)
        netns.unlink(missing_ok=True)
    shutil.rmtree("/var/lib/cni/networks/ebbtide", ignore_errors=True)


def remove_iptables() -> None:
    """Every KUBE-* and CNI-* chain (kubelet, kube-proxy, kube-router, portmap) and the rules
    that jump to them, table by table, atomically; then kube-router's ipsets."""
    for save, restore in (
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ):
        if shutil.which(save) is None:
            continue
        dump = run(save, check=False).stdout
        if not any(p in dump for p in CHAIN_PREFIXES):
            continue
        kept = []
        for line in dump.splitlines():
            if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                continue
            if line.startswith("-A") and any(
                f" {p}" in line or f"-A {p}" in line for p in CHAIN_PREFIXES
            ):
                continue
            kept.append(line)
        subprocess.run(
            [restore], input="\n".join(kept) + "\n", text=True, capture_output=True, check=False
        )
    if shutil.which("ipset"):
        for name in run("ipset", "list", "-n", check=False).stdout.split():
            if name.startswith(IPSET_PREFIXES):
                run("ipset", "destroy", name, check=False)


def unmount_kubelet() -> None:
    """The kubelet's mounts under its root dir: the bind mount of the dir onto itself that
    it makes at start, and the pods' volume mounts (tmpfs for Secrets and tokens) that a
    kubelet stopped with its pods running leaves; deepest first."""
    root = str(STATE / "kubelet")
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        if run("umount", point, check=False).returncode != 0:
            run("umount", "-l", point, check=False)


def teardown_network() -> None:
    """Everything of the node but its processes: mounts, namespaces, chains, the bridge."""
    unmount_kubelet()
    remove_netns()
    remove_iptables()
    remove_bridge()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args != ["import-images"]:
        print("usage: python -m e2e.node import-images", file=sys.stderr)
        return 2
    if not containerd_ready():
        print(
            "node: containerd is not running: `make cluster-up` imports the images", file=sys.stderr
        )
        return 0
    try:
        import_images()
    except NodeError as error:
        print(f"node: error: {error}", file=sys.stderr)
        return 1
    return 0


def wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    raise SystemExit(main())
