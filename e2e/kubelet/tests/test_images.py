"""Image -> local command mapping, and the command line a container gets."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from e2e.kubelet.command import (  # noqa: E402
    CommandError,
    base_environment,
    container_argv,
    launch_spec,
    working_dir,
)
from e2e.kubelet.images import (  # noqa: E402
    ImageMap,
    ImageRule,
    load_rules,
    repository,
    rules_from_mapping,
    unmapped_message,
    without_registry,
)


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("python:3.11", "python"),
        ("python", "python"),
        ("redis:7.2-alpine", "redis"),
        ("ghcr.io/acme/ebbtide-worker:1.0@sha256:abc", "ghcr.io/acme/ebbtide-worker"),
        ("localhost:5000/app:dev", "localhost:5000/app"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("app@sha256:abc", "app"),
    ],
)
def test_repository_drops_tag_and_digest(image, repo):
    assert repository(image) == repo


def test_without_registry():
    assert without_registry("docker.io/library/redis") == "redis"
    assert without_registry("docker.io/bitnami/redis") == "bitnami/redis"
    assert without_registry("ghcr.io/ebbtide/runtime") == "ebbtide/runtime"
    assert without_registry("ebbtide/runtime") == "ebbtide/runtime"
    assert without_registry("localhost:5000/x") == "x"


@pytest.mark.parametrize(
    "image",
    [
        "python:3.11",
        "docker.io/library/python:3.12-slim",
        "ebbtide/runtime:0.1.0",
        "ghcr.io/ebbtide/worker:1",
        "registry.example.com/team/ebbtide-worker:2",
        "acme/ebbtide-runtime",
        "ebbtide-operator:0.1.0",
        "ghcr.io/acme/ebbtide/runtime:1",
    ],
)
def test_default_map_runs_python_images_as_given(image):
    rule = ImageMap().lookup(image)
    assert rule is not None and rule.command is None


@pytest.mark.parametrize("image", ["redis", "redis:7.2-alpine", "docker.io/library/redis:7"])
def test_default_map_redis(image):
    rule = ImageMap().lookup(image)
    assert rule is not None and rule.command == ("redis-server",)


@pytest.mark.parametrize(
    "image",
    ["registry.example.com/emails-worker:2.0.0", "nginx", "bitnami/redis:7", "pythonista:1"],
)
def test_unmapped_images(image):
    assert ImageMap().lookup(image) is None


def test_unmapped_message_names_image_and_remedy():
    message = unmapped_message("registry.example.com/emails-worker:2.0.0")
    assert '"registry.example.com/emails-worker:2.0.0"' in message
    assert "--image-map" in message and '"emails-worker"' in message


def test_extra_rules_come_first(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps(
            {
                "registry.example.com/emails-worker:2.0.0": {"command": ["ebbtide"]},
                "python": {"command": ["python3"]},
                "nginx": None,
            }
        )
    )
    images = ImageMap().with_extra(load_rules(path))
    assert images.lookup("registry.example.com/emails-worker:9").command == ("ebbtide",)
    assert images.lookup("python:3.11").command == ("python3",)
    assert images.lookup("nginx:1").command is None


def test_yaml_rules(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("memcached:\n  command: [memcached]\n  appendArgs: [-l, 127.0.0.1]\n")
    (rule,) = load_rules(path)
    assert rule == ImageRule("memcached", ("memcached",), (), ("-l", "127.0.0.1"))


@pytest.mark.parametrize(
    "data", [{"x": {"command": "not-a-list"}}, {"x": {"entrypoint": ["a"]}}, {"x": 3}, ["x"]]
)
def test_bad_rules_are_refused(data):
    with pytest.raises(ValueError):
        rules_from_mapping(data)


REDIS = ImageRule("redis", ("redis-server",), append_args=("--bind", "127.0.0.1"))
AS_GIVEN = ImageRule("python")


def test_argv_command_and_args_expanded():
    spec = {"command": ["python", "-c", "$(CODE)"], "args": ["$(NAME)", "$$(NAME)"]}
    assert container_argv(spec, AS_GIVEN, {"CODE": "print(1)", "NAME": "x"}) == [
        "python",
        "-c",
        "print(1)",
        "x",
        "$(NAME)",
    ]


def test_argv_image_entrypoint_and_append_args():
    assert container_argv({"args": ["--port", "6379"]}, REDIS, {}) == [
        "redis-server",
        "--port",
        "6379",
        "--bind",
        "127.0.0.1",
    ]
    # The container's own command replaces the entrypoint: nothing is appended to `sh`.
    assert container_argv({"command": ["sh", "-c", "true"]}, REDIS, {}) == ["sh", "-c", "true"]
    # ... unless that command is the entrypoint program itself.
    assert container_argv({"command": ["redis-server"], "args": ["--save", ""]}, REDIS, {})[
        -2:
    ] == [
        "--bind",
        "127.0.0.1",
    ]
    with_cmd = ImageRule("x", ("server",), args=("--default",))
    assert container_argv({}, with_cmd, {}) == ["server", "--default"]
    assert container_argv({"args": ["--mine"]}, with_cmd, {}) == ["server", "--mine"]


def test_argv_without_any_command():
    with pytest.raises(CommandError, match="no command specified"):
        container_argv({"image": "python:3.11", "args": ["x"]}, AS_GIVEN, {})


def test_base_environment_puts_the_venv_first_and_leaks_nothing():
    env = base_environment(
        {"PATH": "/usr/bin", "HOME": "/root", "KUBECONFIG": "/secret", "LANG": "C.UTF-8"},
        "/repo/.venv/bin",
        "pod-1",
    )
    assert env == {
        "PATH": "/repo/.venv/bin:/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "HOSTNAME": "pod-1",
    }


def test_launch_spec_substitutes_ports_and_paths_after_expansion():
    spec = {
        "name": "worker",
        "command": ["ebbtide"],
        "args": [
            "worker",
            "--metrics-port",
            "$(PORT)",
            "--dir",
            "/data",
            "--pid=/data/x.pid",
            "9100",
        ],
    }
    launched = launch_spec(
        spec,
        AS_GIVEN,
        {"PORT": "9100", "URL": "http://127.0.0.1:9100/metrics", "OTHER": "19100"},
        base_env={"PATH": "/venv/bin:/usr/bin"},
        ports={9100: 41234},
        mounts={"/data": "/state/pod/volumes/data"},
        cwd="/state/pod/work",
    )
    assert launched.argv == (
        "ebbtide",
        "worker",
        "--metrics-port",
        "41234",
        "--dir",
        "/state/pod/volumes/data",
        "--pid=/state/pod/volumes/data/x.pid",
        "41234",
    )
    assert launched.env == {
        "PATH": "/venv/bin:/usr/bin",
        "PORT": "41234",
        "URL": "http://127.0.0.1:41234/metrics",
        "OTHER": "19100",
    }


def test_working_dir():
    exists = {"/srv/app", "/state/vol"}.__contains__
    assert working_dir({"workingDir": "/srv/app"}, {}, "/fallback", exists) == "/srv/app"
    assert working_dir({"workingDir": "/nope"}, {}, "/fallback", exists) == "/fallback"
    assert (
        working_dir({"workingDir": "/data"}, {"/data": "/state/vol"}, "/fallback", exists)
        == "/state/vol"
    )
    assert working_dir({}, {}, "/fallback", exists) == "/fallback"
