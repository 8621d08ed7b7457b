"""A host-path volume provisioner for the one-node cluster: the default StorageClass
`local-path`, as kind's local-path-provisioner gives.

A claim of that class gets a directory under --root (mode 0777: a hostPath volume gets no
fsGroup ownership, and the broker pods run as uid 999) and a PersistentVolume bound to it;
a released volume's directory and PV are deleted (reclaim policy Delete). It polls: one
list of claims and one of volumes a second is nothing for a test cluster.

    python -m e2e.provisioner --kubeconfig FILE --root DIR
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from kubernetes import client, config

from e2e.node import NODE_NAME, PROVISIONER, STORAGE_CLASS

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def storage_class() -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume(claim, path: Path) -> dict:
    size = (claim.spec.resources.requests or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{claim.metadata.uid}",
            "annotations": {PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": claim.spec.access_modes or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {
                "namespace": claim.metadata.namespace,
                "name": claim.metadata.name,
                "uid": claim.metadata.uid,
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [NODE_NAME],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def sync(core: client.CoreV1Api, root: Path) -> None:
    volumes = {pv.metadata.name: pv for pv in core.list_persistent_volume().items}
    for claim in core.list_persistent_volume_claim_for_all_namespaces().items:
        if claim.spec.storage_class_name != STORAGE_CLASS or claim.spec.volume_name:
            continue
        if claim.metadata.deletion_timestamp or f"pvc-{claim.metadata.uid}" in volumes:
            continue
        path = root / f"{claim.metadata.namespace}_{claim.metadata.name}_{claim.metadata.uid}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        core.create_persistent_volume(volume(claim, path))
        print(
            f"provisioner: {path} for {claim.metadata.namespace}/{claim.metadata.name}", flush=True
        )
    for pv in volumes.values():
        ours = (pv.metadata.annotations or {}).get(PROVISIONED_BY) == PROVISIONER
        if (
            ours
            and pv.status.phase in ("Released", "Failed")
            and not pv.metadata.deletion_timestamp
        ):
            path = Path(pv.spec.host_path.path)
            if path.parent == root:
                shutil.rmtree(path, ignore_errors=True)
            core.delete_persistent_volume(pv.metadata.name)
            print(f"provisioner: deleted {pv.metadata.name} and {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.provisioner")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        storage.create_storage_class(storage_class())
    except client.ApiException as error:
        if error.status != 409:
            raise
    while not stop.is_set():
        try:
            sync(core, args.root)
        except Exception as error:  # noqa: BLE001 - the API may be briefly unavailable
            print(f"provisioner: {error}", file=sys.stderr, flush=True)
        stop.wait(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
