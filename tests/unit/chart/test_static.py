"""Checks of the Helm chart and the Dockerfiles that need no helm and no Docker.

`make images` builds the Dockerfiles with podman; their rules are also checked here, by
reading them: a pinned base tag (never `latest`), a non-root numeric USER, no pip cache.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[3]
CHART = ROOT / "charts" / "ebbtide"
DOCKERFILES = {
    "operator": ROOT / "docker" / "operator.Dockerfile",
    "runtime": ROOT / "docker" / "runtime.Dockerfile",
}
PIP_INSTALL = ROOT / "docker" / "pip-install.sh"  # what the Dockerfiles' RUN runs
PINNED_PYTHON = re.compile(r"^python:\d+\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


def test_chart_crd_is_the_repository_crd():
    """One source of truth: the chart's CRD is a symlink to crds/, so they cannot drift.
    It is a file the CRD template reads, not in the chart's crds/ (which helm installs once
    and never upgrades, and which would collide with the template's object)."""
    chart_crd = CHART / "files" / "taskqueue.yaml"
    assert chart_crd.is_symlink(), "charts/ebbtide/files/taskqueue.yaml must link to crds/"
    assert not (CHART / "crds").exists()
    assert chart_crd.resolve() == (ROOT / "crds" / "taskqueue.yaml").resolve()
    assert chart_crd.read_bytes() == (ROOT / "crds" / "taskqueue.yaml").read_bytes()


def test_values_and_schema_cover_the_same_keys():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    documented = set(schema["properties"]) - {"global"}
    assert set(values) == documented


def test_default_values_follow_the_security_rules():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert values["resources"]["requests"] and values["resources"]["limits"]
    assert values["metrics"]["serviceMonitor"]["enabled"] is False
    for optional in ("podMonitor", "prometheusRule", "dashboards"):  # need extra CRDs or Grafana
        assert values[optional]["enabled"] is False, optional
    assert values["crds"]["install"] is True
    assert values["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert values["logFormat"] == "plain"
    assert values["image"]["tag"] != "latest"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_base_image_is_pinned(name):
    steps = instructions(DOCKERFILES[name])
    # `FROM ${BASE_IMAGE}`: the default of the build argument is what users pull (`make
    # images` passes a local stand-in built from Debian's packages).
    defaults = dict(
        args.partition("=")[::2] for word, args in steps if word == "ARG" and "=" in args
    )
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), args.split()[0])
        for word, args in steps
        if word == "FROM"
    ]
    assert bases, f"{name}: no FROM"
    for base in bases:
        assert PINNED_PYTHON.match(base), f"{name}: base image {base!r} is not a pinned tag"
        assert "latest" not in base


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_as_non_root_numeric_user(name):
    users = [args for word, args in instructions(DOCKERFILES[name]) if word == "USER"]
    assert users, f"{name}: no USER (would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, (
        f"{name}: USER {users[-1]!r} is not a numeric non-root uid"
    )
    assert not gid or (gid.isdigit() and int(gid) > 0)
    assert uid == "10001", "the chart's podSecurityContext.runAsUser expects uid 10001"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_installs_without_pip_cache(name):
    installs = [
        args
        for word, args in instructions(DOCKERFILES[name])
        if word == "RUN" and ("pip " in args or PIP_INSTALL.name in args)
    ]
    assert installs
    for args in installs:
        if PIP_INSTALL.name in args:
            args = PIP_INSTALL.read_text()
        pip_lines = [line for line in args.splitlines() if " install " in line and "pip" in line]
        assert all("--no-cache-dir" in line for line in pip_lines), (
            f"{name}: pip without --no-cache-dir"
        )


def test_each_image_installs_only_what_it_needs():
    runs = {
        name: " ".join(args for word, args in instructions(path) if word == "RUN")
        for name, path in DOCKERFILES.items()
    }
    assert '"/src[operator]"' in runs["operator"]
    # The runtime: its own dependencies, both brokers' clients (pika) and the payload
    # extras every worker must read (msgpack, encryption), none of the operator's.
    extras = re.search(r'"/src\[([a-z,]+)\]"', runs["runtime"])
    assert extras and "operator" not in extras.group(1).split(",")
    assert {"rabbitmq", "msgpack", "encryption"} <= set(extras.group(1).split(","))
