"""The operator's integration tests run against a real kube-apiserver + etcd, started once
per session (tests/support/apiserver.py); each test gets its own namespace and the
operator's real `KubeCluster` bound to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from support.apiserver import (
    ApiServer,
    Namespace,
    RecordingCluster,
    binaries_built,
    control_plane,
    new_namespace,
)

from e2e.controlplane import ControlPlaneError


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """Skipped (a failure with CI=true) when the binaries cannot be had."""
    if not binaries_built():
        pytest.skip("no etcd/kube-apiserver for the operator tests: run `make binaries`")
    try:
        with control_plane(tmp_path_factory.mktemp("apiserver")) as server:
            yield server
    except ControlPlaneError as error:
        pytest.skip(f"no kube-apiserver for the operator tests: {error}")


@pytest.fixture
def kube(apiserver: ApiServer) -> Iterator[tuple[RecordingCluster, Namespace]]:
    """A fresh namespace, and a `KubeCluster` (recording what it writes) to act in it."""
    with contextlib.closing(apiserver.api_client(pool=4)) as client:
        namespace = new_namespace(client)
        cluster = RecordingCluster(apiserver.api_client())
        try:
            yield cluster, namespace
        finally:
            cluster.close()
