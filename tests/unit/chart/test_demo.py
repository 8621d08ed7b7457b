"""Static checks of `make demo` (scripts/demo.sh): it parses, and the TaskQueue it applies
is valid and wired to the Secret the script creates. That it tears everything down on
Ctrl-C is proven by running it: e2e/tests/test_demo.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from ebbtide_operator.spec import parse_spec

ROOT = Path(__file__).parents[3]
DEMO = ROOT / "scripts" / "demo.sh"
MANIFEST = ROOT / "examples" / "taskqueue-demo.yaml"


def test_demo_script_parses():
    done = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_demo_runs_the_operator_as_the_charts_deployment_from_its_image():
    text = DEMO.read_text()
    assert "watchNamespaces={$NS}" in text and "image.repository=" in text
    assert "replicaCount=0" not in text and "kopf" not in text
    assert '--as="system:serviceaccount:$SYSTEM_NS:$RELEASE"' in text


def test_demo_taskqueue_is_valid_and_uses_the_demo_secret():
    body = yaml.safe_load(MANIFEST.read_text())
    spec = parse_spec(body["spec"])
    assert body["metadata"]["name"] == "demo"
    assert spec.broker.external is not None
    assert spec.broker.external.name == "demo-broker"
    assert "create secret generic demo-broker" in DEMO.read_text()
    assert spec.scaling.min_replicas < spec.scaling.max_replicas
