"""`--processes N`: the first N children forked from a preloaded supervisor (Linux).

A child started as `python -m ebbtide worker ...` imports the runtime and its broker
client before its first task (redis-py alone is ~0.17 s), and N children do it at once
on the pod's CPUs. So the supervisor imports them once, before its event loop or any
thread exists, and forks the first N children from there: each begins at its app's
import, and the preloaded pages are shared copy-on-write.

The app is not imported before the fork: the supervisor runs no user code, and a child
that cannot import its app exits with a usage error, as an exec'd child does. A child
restarted later is exec'd afresh: by then the supervisor runs an event loop and threads,
which a fork must not copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import NoReturn
from urllib.parse import urlsplit

# What every child imports before its app, whatever its broker.
RUNTIME_MODULES = (
    "ebbtide.app",
    "ebbtide.selection",
    "ebbtide.worker.loop",
    "ebbtide.worker.executor",
    "ebbtide.worker.probes",
    "ebbtide.worker.affinity",
)
# A broker's package and its client library, by the URL's scheme (brokers/__init__.py).
BROKER_MODULES = {
    "redis": ("ebbtide.brokers.redis.broker",),
    "amqp": ("ebbtide.brokers.rabbitmq.broker",),
}


def available() -> bool:
    """Fork only where a child's exit can be watched without a thread: a pidfd, which an
    old kernel or a strict seccomp profile may refuse (then every child is exec'd)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def modules_for(url: str | None) -> tuple[str, ...]:
    """What to preload for a worker of `url`. None (the app names its broker) preloads
    Redis, the default broker; a RabbitMQ child then imports pika after its fork."""
    family = "amqp" if url and urlsplit(url).scheme.lower().startswith("amqp") else "redis"
    return RUNTIME_MODULES + BROKER_MODULES[family]


def preload(modules: tuple[str, ...]) -> None:
    """Import what the children will: a module that fails here (pika not installed) is
    left to the child, which reports it as it would have."""
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


class ForkedProcess:
    """A forked child, watched through its pidfd on the supervisor's event loop: the
    part of asyncio.subprocess.Process that the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._exited: asyncio.Future[int] | None = None

    async def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            loop.add_reader(self._pidfd, self._reap, loop)
        return await asyncio.shield(self._exited)

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._pidfd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        os.close(self._pidfd)
        assert self._exited is not None
        self._exited.set_result(self.returncode)

    def send_signal(self, sig: int) -> None:
        """Never a recycled pid's new owner: until this parent reaps it, the pid is
        the child's, if only as a zombie."""
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_child(
    entry: Callable[[list[str]], int], args: list[str], env: Mapping[str, str]
) -> ForkedProcess:
    """Fork a child that runs `entry(args)` with `env` added, and exits with its code."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    gc.freeze()  # the preloaded heap stays out of the child's collections: fewer copied pages
    pid = os.fork()
    if pid == 0:
        _run_child(entry, args, env)
    gc.unfreeze()
    return ForkedProcess(pid)


def _run_child(
    entry: Callable[[list[str]], int], args: list[str], env: Mapping[str, str]
) -> NoReturn:
    """The child's whole life: never returns into the supervisor's code."""
    code = 1
    try:
        os.environ.update(env)
        code = entry(args)
    except SystemExit as exc:  # argparse's usage errors, sys.exit in the app
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
