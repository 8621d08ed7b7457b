"""The real helm binary for the chart tests: found, run and rendered the same way by every
test module under tests/unit/chart.

`find_helm()`: $EBBTIDE_HELM, then the control plane's build cache
(~/.cache/ebbtide/k8s-*/helm, built by `make cluster-up`), then ~/.cache/ebbtide/helm-*/helm,
then PATH. None when there is no helm: the chart modules then skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "ebbtide"
RELEASE, NAMESPACE = "ebbtide", "ebbtide-system"
# helm built with plain `go install` assumes Kubernetes v1.20 offline; render for a current one.
KUBE_VERSION = "1.33.0"


def find_helm() -> str | None:
    explicit = os.environ.get("EBBTIDE_HELM")
    if explicit:
        return explicit
    cache = Path.home() / ".cache" / "ebbtide"
    for pattern in ("k8s-*/helm", "k8s-*/bin/helm", "helm-*/helm"):
        found = sorted(cache.glob(pattern), reverse=True)
        if found:
            return str(found[0])
    return shutil.which("helm")


HELM = find_helm()


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/ebbtide-helm-cache"}
    return subprocess.run(
        [HELM, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def render(*sets: str, include_crds: bool = False) -> list[dict[str, Any]]:
    """`helm template` of the chart with `--set` items, as parsed documents."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    if include_crds:
        args.append("--include-crds")
    for item in sets:
        args += ["--set", item]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} over all rules."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table
