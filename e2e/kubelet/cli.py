"""Command line: `python -m e2e.kubelet --kubeconfig PATH [--node-name NAME] ...`.

SIGTERM or SIGINT stops every pod gracefully, removes the Node and exits 0; a second one
SIGKILLs what still runs. Exit 2 on a bad argument or an image map that does not load,
1 when the cluster cannot be reached at startup.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import tempfile
from pathlib import Path

from e2e.kubelet.api import Api, ApiError
from e2e.kubelet.images import ImageMap, load_rules
from e2e.kubelet.kubelet import Kubelet, Options
from e2e.kubelet.log import log
from e2e.kubelet.restarts import Backoff
from e2e.kubelet.scheduler import DEFAULT_SCHEDULER


def default_node_name() -> str:
    """The host name, made a valid node name (a lowercase DNS subdomain)."""
    name = re.sub(r"[^a-z0-9.-]+", "-", socket.gethostname().lower()).strip("-.")
    return name or "process-node"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.kubelet",
        description="A kubelet that runs pods as local processes (e2e harness; see e2e/README.md).",
    )
    parser.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="admin kubeconfig"
    )
    parser.add_argument("--node-name", default=default_node_name(), help="the Node to register")
    parser.add_argument(
        "--state-dir", help="pod logs and scratch dirs (default: a new temporary directory)"
    )
    parser.add_argument(
        "--image-map",
        action="append",
        default=[],
        metavar="FILE",
        help="extra image mappings, JSON or YAML: repository -> {command: [...]|null} (repeatable)",
    )
    parser.add_argument("--max-pods", type=int, default=110)
    parser.add_argument(
        "--backoff-base",
        type=float,
        default=1.0,
        help="crash-loop backoff base, seconds (kubelet: 10)",
    )
    parser.add_argument(
        "--backoff-cap", type=float, default=300.0, help="crash-loop backoff cap, seconds"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="on SIGTERM, the most grace any pod gets, seconds",
    )
    parser.add_argument(
        "--keep-node", action="store_true", help="leave the Node registered on exit"
    )
    parser.add_argument(
        "--resync", type=float, default=30.0, help="full pod relist period, seconds"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=10.0, help="Lease/status period, seconds"
    )
    parser.add_argument(
        "--no-schedule",
        action="store_true",
        help="do not bind unscheduled pods (a scheduler exists)",
    )
    parser.add_argument(
        "--scheduler-name",
        action="append",
        default=[],
        help=f"bind pods with this schedulerName (repeatable; default {DEFAULT_SCHEDULER})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.kubeconfig:
        log("error: no kubeconfig: pass --kubeconfig PATH or set KUBECONFIG")
        return 2
    image_map = ImageMap()
    for path in args.image_map:
        try:
            image_map = image_map.with_extra(load_rules(path))
        except (OSError, ValueError) as error:
            log("error: cannot load image map", file=path, error=error)
            return 2
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="ebbtide-kubelet-")).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    options = Options(
        node_name=args.node_name,
        state_dir=state_dir,
        image_map=image_map,
        max_pods=args.max_pods,
        backoff=Backoff(base=args.backoff_base, cap=args.backoff_cap),
        shutdown_grace=args.shutdown_grace,
        keep_node=args.keep_node,
        resync=args.resync,
        heartbeat=args.heartbeat,
        schedule=not args.no_schedule,
        scheduler_names=tuple(args.scheduler_name) or (DEFAULT_SCHEDULER,),
    )
    try:
        kubelet = Kubelet(Api(args.kubeconfig), options)
    except Exception as error:  # noqa: BLE001 - a kubeconfig that does not load
        log("error: cannot load the kubeconfig", kubeconfig=args.kubeconfig, error=error)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        log("signal received", signal=signal.Signals(signum).name)
        kubelet.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return kubelet.run()
    except ApiError as error:
        log("error: the API server is not usable", kubeconfig=args.kubeconfig, error=error)
        return 1
