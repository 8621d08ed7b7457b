"""What exactly to execute for a container: argv, environment and working directory.

Kubernetes semantics first (the container's `command` replaces the image's entrypoint, its
`args` replace the image's default args, both `$(VAR)`-expanded against the container's
env), then the process kubelet's local adjustments: host ports and emptyDir paths are
substituted (see ports.py), and the process gets a small base environment from the
kubelet's own (PATH with the venv's bin dir first, HOME, locale) under the container's env,
so `python` and `ebbtide` resolve to the venv's. Nothing else from the kubelet's environment
(KUBECONFIG, say) leaks into pods.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from e2e.kubelet.expansion import expand_all
from e2e.kubelet.images import ImageRule
from e2e.kubelet.ports import substitute_paths, substitute_ports

PASS_THROUGH = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "USER", "LOGNAME")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class CommandError(Exception):
    """The container cannot be created as specified (no command to run, say)."""

    reason = "CreateContainerError"


@dataclass(frozen=True)
class LaunchSpec:
    """One container run: what to exec, with which environment, where."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str


def base_environment(host_env: Mapping[str, str], venv_bin: str, hostname: str) -> dict[str, str]:
    """The environment every process starts from (the container's env is laid over it)."""
    env = {key: host_env[key] for key in PASS_THROUGH if key in host_env}
    env["PATH"] = f"{venv_bin}{os.pathsep}{host_env.get('PATH', DEFAULT_PATH)}"
    env["HOSTNAME"] = hostname
    return env


def container_argv(
    container: Mapping[str, Any], rule: ImageRule, env: Mapping[str, str]
) -> list[str]:
    """command + args as the container runtime would assemble them, `$(VAR)`-expanded."""
    command = container.get("command") or []
    args = container.get("args")
    if command:
        argv = expand_all(command, env) + expand_all(args or [], env)
    elif rule.command:
        argv = list(rule.command) + (expand_all(args, env) if args else list(rule.args))
    else:
        raise CommandError(
            f"no command specified: image {container.get('image')!r} has no local entrypoint "
            f"(its image map rule {rule.pattern!r} has command: null), so the container "
            "must give a command"
        )
    if rule.command and rule.append_args and argv[0] == rule.command[0]:
        argv += rule.append_args
    return argv


def working_dir(
    container: Mapping[str, Any],
    mounts: Mapping[str, str],
    fallback: str,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> str:
    """The container's workingDir when it exists locally (or is an emptyDir mount), else
    the pod's own scratch directory."""
    wanted = container.get("workingDir")
    if wanted:
        local = substitute_paths(wanted, mounts)
        if is_dir(local):
            return local
    return fallback


def launch_spec(
    container: Mapping[str, Any],
    rule: ImageRule,
    container_env: Mapping[str, str],
    *,
    base_env: Mapping[str, str],
    ports: Mapping[int, int],
    mounts: Mapping[str, str],
    cwd: str,
) -> LaunchSpec:
    """Put it together: expand, then substitute host ports and emptyDir paths."""

    def local(value: str) -> str:
        return substitute_paths(substitute_ports(value, ports), mounts)

    argv = container_argv(container, rule, container_env)
    argv = [argv[0], *(local(arg) for arg in argv[1:])]
    env = dict(base_env)
    env.update({name: local(value) for name, value in container_env.items()})
    return LaunchSpec(argv=tuple(argv), env=env, cwd=cwd)
