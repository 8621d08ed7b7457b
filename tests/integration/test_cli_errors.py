"""The CLI against brokers it cannot use: one line on stderr naming the broker (its
password hidden) and exit 1, never a traceback; and `--version`."""

from __future__ import annotations

import socket
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

from ebbtide.buildinfo import version
from support.servers import free_port
from worker_testkit import HERE, TASKS_APP, run_cli

COMMANDS = (
    ["stats"],
    ["stats", "--queues", "q"],
    ["dlq", "list", "--queue", "q"],
    ["dlq", "replay", "--queue", "q"],
    ["dlq", "purge", "--queue", "q"],
)


def one_line(out: subprocess.CompletedProcess) -> str:
    """The error line; log events the command wrote before it (`ts=...`, e.g. a warning
    that the RabbitMQ management API is away) are not part of it."""
    lines = [line for line in out.stderr.splitlines() if not line.startswith("ts=")]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return lines[0]


def with_port(url: str, port: int, password: str | None = None, user: str | None = None) -> str:
    parts = urlsplit(url)
    user = user if user is not None else parts.username or ""
    secret = password if password is not None else parts.password
    auth = f"{user}:{secret}@" if secret is not None else (f"{user}@" if user else "")
    return urlunsplit(parts._replace(netloc=f"{auth}{parts.hostname}:{port}"))


def test_version_comes_from_the_package_metadata():
    out = subprocess.run(
        [sys.executable, "-m", "ebbtide", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == f"ebbtide {version()}"
    assert version() != "unknown"


def test_every_command_says_in_one_line_that_the_broker_is_unreachable(broker):
    closed = with_port(broker.url, free_port(), password="s3cret")  # nothing listens there
    kind = "Redis" if broker.is_redis else "RabbitMQ"
    for command in COMMANDS:
        out = run_cli(closed, *command)
        line = one_line(out)
        assert out.returncode == 1, (command, out.stderr)
        assert line.startswith(f"ebbtide: cannot reach {kind} at "), line
        assert line.endswith(": Connection refused"), line
        assert "s3cret" not in out.stderr and ":***@127.0.0.1:" in line, line


def test_a_wrong_password_is_one_line_too(broker):
    parts = urlsplit(broker.url)
    # The test Redis has no password, which accepts any for its default user: log in as
    # a user it does not have.
    user = "nobody" if broker.is_redis else None
    bad = with_port(broker.url, parts.port or 0, password="wrong", user=user)
    line = one_line(out := run_cli(bad, "dlq", "list", "--queue", "q"))
    assert out.returncode == 1, out.stderr
    assert "wrong" not in line and line.startswith("ebbtide: "), line
    kind = "Redis" if broker.is_redis else "RabbitMQ"
    assert line.startswith(f"ebbtide: {kind} at ") and "refused the login" in line, line


def test_a_worker_whose_metrics_port_is_taken_says_so_in_one_line(broker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "ebbtide", "worker", TASKS_APP, "--metrics-port", str(port)]
            + ["--metrics-host", "127.0.0.1", "--broker-url", broker.url],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=60,
        )
    line = one_line(out)
    assert out.returncode == 1, out.stderr
    assert str(port) in line and "address already in use" in line.lower(), line
