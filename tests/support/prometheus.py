"""A real Prometheus (Debian's `prometheus`) for the tests that check the chart's dashboard
and alerts against scraped series: the binary, the process (its data in a tmp dir, always
stopped), the HTTP query API, and what to ask it (every dashboard query, every alert
expression). Used by tests/integration/chart/test_prometheus_queries.py (in-process
registries) and e2e/tests/test_prometheus.py (the real operator and worker pods).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "charts" / "ebbtide" / "dashboards" / "ebbtide.json"
PROMETHEUS = os.environ.get("EBBTIDE_PROMETHEUS") or shutil.which("prometheus")
PROMTOOL = os.environ.get("EBBTIDE_PROMTOOL") or shutil.which("promtool")
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def prometheus_binary() -> str:
    """The prometheus binary; skipped without one, failed with CI=true (`make setup`
    installs it)."""
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no prometheus (apt-get install prometheus): with CI=true it must run")
        pytest.skip("no prometheus (apt-get install prometheus)")
    return PROMETHEUS


def promtool_binary() -> str:
    """promtool (the same Debian package); skipped without one, failed with CI=true."""
    if PROMTOOL is None:
        message = "no promtool (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: with CI=true the alerts must be tested")
        pytest.skip(message)
    return PROMTOOL


class Prometheus:
    """One Prometheus server on loopback with the given config; `stop()` always ends it."""

    def __init__(self, binary: str, root: Path, config: dict[str, Any], port: int) -> None:
        self.root = root
        self.config_path = root / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = root / "prometheus.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` selects now; an error from Prometheus fails the test."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query: 400 with the parser's message
            body = json.load(error)
            raise AssertionError(f"{expr}: {body.get('error')}") from error
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.base}/api/v1/targets", timeout=10) as response:  # noqa: S310
            return json.load(response)["data"]["activeTargets"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_until(condition: Any, timeout: float, what: str, prometheus: Prometheus) -> Any:
    """Poll `condition()` until truthy (connection errors while Prometheus starts count as
    not yet); fail naming `what`, with Prometheus's log, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        prometheus.alive()
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{prometheus.log()}"
        time.sleep(0.5)


def dashboard_queries(namespace: str, taskqueue: str) -> dict[str, str]:
    """Every panel target and annotation of the chart's dashboard, by where it is, with the
    dashboard's variables filled in as Grafana would for one TaskQueue."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"{panel['title']} {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        queries[f"annotation {annotation['name']}"] = annotation["expr"]
    return {
        where: expr.replace("$__rate_interval", "1m")
        .replace("$namespace", namespace)
        .replace("$taskqueue", taskqueue)
        for where, expr in queries.items()
    }


def alert_expressions(rule: dict[str, Any]) -> dict[str, str]:
    """{alert name: expr} of a rendered PrometheusRule."""
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def with_bool_comparisons(expr: str) -> str:
    """`expr` with every comparison between vectors or scalars (`>`, `==`, ...) turned into
    its `bool` form: it then returns a 0/1 sample for every series the comparison would
    filter, so "does it select series" no longer depends on the threshold or on how far
    the test got. Label matchers (`{a="b", c!="d"}`) and strings are left alone."""
    out: list[str] = []
    depth, quote, i = 0, "", 0
    while i < len(expr):
        char = expr[i]
        if quote:
            out.append(char)
            if char == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif char == quote:
                quote = ""
            i += 1
            continue
        if char in "\"'`":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0:
            op = next((c for c in COMPARISONS if expr.startswith(c, i)), None)
            if op is not None:
                out.append(op)
                i += len(op)
                if not expr[i:].lstrip().startswith("bool"):
                    out.append(" bool")
                continue
        out.append(char)
        i += 1
    return "".join(out)
