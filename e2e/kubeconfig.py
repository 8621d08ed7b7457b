"""Kubeconfig files for the local control plane, with credentials embedded so the file
can be copied or handed to a subprocess on its own."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def document(server: str, ca: Path, user: dict, name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def write(path: Path, server: str, ca: Path, cert: Path, key: Path, name: str) -> Path:
    """A client-certificate kubeconfig."""
    user = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    return _save(path, document(server, ca, user, name))


def write_token(path: Path, server: str, ca: Path, token: str, name: str, namespace: str) -> Path:
    """A bearer-token kubeconfig, e.g. for a ServiceAccount, so its RBAC is what applies."""
    doc = document(server, ca, {"token": token}, name)
    doc["contexts"][0]["context"]["namespace"] = namespace
    return _save(path, doc)


def _save(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path
