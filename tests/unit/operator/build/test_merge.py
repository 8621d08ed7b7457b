"""Telling drift from API-server defaults: a live template with defaults filled in and
quantities normalised still holds ours; a changed image does not."""

from __future__ import annotations

import copy

from ebbtide_operator.build import worker
from ebbtide_operator.build.merge import is_subset
from ebbtide_operator.spec import parse_spec
from support.taskqueue import managed_spec


def test_live_template_with_server_defaults_is_not_drift():
    raw = managed_spec()
    raw["worker"]["resources"] = {"requests": {"cpu": "0.5", "memory": "1024Mi"}}
    wanted = worker.worker_pod_template("tq1", parse_spec(raw))
    live = copy.deepcopy(wanted)
    container = live["spec"]["containers"][0]
    container.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
    container["resources"]["requests"] = {"cpu": "500m", "memory": "1Gi"}
    live["spec"]["dnsPolicy"] = "ClusterFirst"
    assert is_subset(wanted, live)
    container["image"] = "evil:latest"
    assert not is_subset(wanted, live)
