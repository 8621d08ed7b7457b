"""Per-pod host ports: planning, whole-token substitution, probe ports, emptyDir paths."""

import itertools
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from e2e.kubelet.ports import (  # noqa: E402
    declared_ports,
    empty_dir_mounts,
    free_port,
    plan_ports,
    probe_port,
    substitute_paths,
    substitute_ports,
)

WORKER = {
    "name": "worker",
    "ports": [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}],
}
POD = {
    "spec": {
        "containers": [
            WORKER,
            {
                "name": "side",
                "ports": [{"containerPort": 8080, "hostPort": 18080}, {"containerPort": 9100}],
            },
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
    }
}


def test_plan_gives_each_declared_port_one_host_port():
    counter = itertools.count(40000)
    plan = plan_ports(declared_ports(POD), lambda: next(counter))
    assert plan == {9100: 40000, 8080: 18080}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9100", "41000"),
        ("--metrics-port=9100", "--metrics-port=41000"),
        ("http://0.0.0.0:9100/healthz", "http://0.0.0.0:41000/healthz"),
        ("127.0.0.1:9100", "127.0.0.1:41000"),
        ("9100,8080", "41000,42000"),
        ("19100", "19100"),
        ("91000", "91000"),
        ("v9100", "v9100"),
        ("9100a", "9100a"),
        ("9100.5", "9100.5"),
        ("1.2.9100", "1.2.9100"),
        ("port_9100", "port_9100"),
        ("no ports here", "no ports here"),
    ],
)
def test_substitution_replaces_whole_tokens_only(value, expected):
    assert substitute_ports(value, {9100: 41000, 8080: 42000}) == expected


def test_no_plan_no_change():
    assert substitute_ports("9100", {}) == "9100"


def test_probe_ports_by_name_and_number():
    plan = {9100: 41000}
    assert probe_port("metrics", WORKER, plan) == 41000
    assert probe_port(9100, WORKER, plan) == 41000
    assert probe_port("9100", WORKER, plan) == 41000
    assert probe_port(7000, WORKER, plan) == 7000
    with pytest.raises(ValueError, match="not a named port"):
        probe_port("http", WORKER, plan)


def test_free_port_is_bindable_and_avoids_reserved():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert free_port({port}) != port


def test_empty_dir_mounts_and_paths():
    container = {
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp/"},
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "tmp", "mountPath": "/cache", "subPath": "c"},
            {"name": "tmp", "mountPath": "/"},
        ]
    }
    mounts = empty_dir_mounts(POD, container, lambda name: f"/state/volumes/{name}")
    assert mounts == {"/tmp": "/state/volumes/tmp", "/cache": "/state/volumes/tmp/c"}
    assert substitute_paths("/tmp", mounts) == "/state/volumes/tmp"
    assert substitute_paths("/tmp/x/y", mounts) == "/state/volumes/tmp/x/y"
    assert substitute_paths("--dir=/cache/z", mounts) == "--dir=/state/volumes/tmp/c/z"
    assert substitute_paths("/tmpfoo", mounts) == "/tmpfoo"
    assert substitute_paths("/etc/cfg", mounts) == "/etc/cfg"
    assert substitute_paths("test -e /tmp/ready", mounts) == "test -e /state/volumes/tmp/ready"
    assert substitute_paths("/tmp:/cache", mounts) == "/state/volumes/tmp:/state/volumes/tmp/c"
    assert substitute_paths("/var/tmp", mounts) == "/var/tmp"
    assert substitute_paths("http://host/tmp/x", mounts) == "http://host/tmp/x"
    assert substitute_paths("/tmp.d", mounts) == "/tmp.d"


def test_a_path_that_exists_on_the_host_is_not_rewritten():
    """An emptyDir on /tmp must not hide a checkout under /tmp from PYTHONPATH."""
    mounts = {"/tmp": "/state/volumes/tmp"}
    host = {"/tmp/ci-clone/e2e/tests/apps"}.__contains__
    assert (
        substitute_paths("/tmp/ci-clone/e2e/tests/apps", mounts, host)
        == "/tmp/ci-clone/e2e/tests/apps"
    )
    assert substitute_paths("/tmp/ci-clone/e2e/tests/apps:/tmp/x", mounts, host) == (
        "/tmp/ci-clone/e2e/tests/apps:/state/volumes/tmp/x"
    )
    assert substitute_paths("--dir=/tmp", mounts, host) == "--dir=/state/volumes/tmp"
