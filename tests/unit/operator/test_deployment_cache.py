"""The informer cache the ticks read worker Deployments from (pure)."""

from ebbtide_operator.deployment_cache import DeploymentCache


def deployment(name="tq-worker", replicas=2, generation=1, ready=None, deleting=False):
    meta = {"namespace": "ns", "name": name, "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    body = {"metadata": meta, "spec": {"replicas": replicas}}
    if ready is not None:
        body["status"] = {"readyReplicas": ready}
    return body


def test_listed_and_modified_objects_are_served_without_managed_fields():
    cache = DeploymentCache()
    cache.apply(None, deployment(replicas=2))
    body = deployment(replicas=2, ready=2)
    body["metadata"]["managedFields"] = [{"manager": "kube-controller-manager"}]
    cache.apply("MODIFIED", body)
    got = cache.get("ns", "tq-worker")
    assert got["status"]["readyReplicas"] == 2
    assert "managedFields" not in got["metadata"]
    assert body["metadata"]["managedFields"], "the event's body is left alone"


def test_a_scale_does_not_change_an_object_already_handed_out():
    cache = DeploymentCache()
    cache.apply("ADDED", deployment(replicas=1))
    before = cache.get("ns", "tq-worker")
    cache.scaled("ns", "tq-worker", 5)
    assert before["spec"]["replicas"] == 1
    assert cache.get("ns", "tq-worker")["spec"]["replicas"] == 5


def test_unknown_and_deleted_objects_are_misses():
    cache = DeploymentCache()
    assert cache.get("ns", "tq-worker") is None
    cache.apply("ADDED", deployment())
    cache.apply("DELETED", deployment())
    assert cache.get("ns", "tq-worker") is None
    cache.apply("ADDED", deployment())
    cache.apply("MODIFIED", deployment(deleting=True))
    assert cache.get("ns", "tq-worker") is None


def test_our_own_scale_is_visible_before_its_watch_event():
    cache = DeploymentCache()
    cache.apply("ADDED", deployment(replicas=1))
    cache.scaled("ns", "tq-worker", 6)
    assert cache.get("ns", "tq-worker")["spec"]["replicas"] == 6
    cache.apply("MODIFIED", deployment(replicas=1, ready=1))  # a late event from before
    assert cache.get("ns", "tq-worker")["spec"]["replicas"] == 6
    cache.apply("MODIFIED", deployment(replicas=6, generation=2, ready=1))
    assert cache.get("ns", "tq-worker")["status"]["readyReplicas"] == 1
    cache.scaled("ns", "other", 3)  # never seen: nothing to update
    assert cache.get("ns", "other") is None


def test_an_event_for_an_older_generation_never_overwrites_a_newer_one():
    cache = DeploymentCache()
    cache.apply("MODIFIED", deployment(generation=5, replicas=4))
    cache.apply("MODIFIED", deployment(generation=4, replicas=1))
    assert cache.get("ns", "tq-worker")["spec"]["replicas"] == 4
    cache.remember(deployment(generation=6, replicas=3))
    assert cache.get("ns", "tq-worker")["spec"]["replicas"] == 3
    assert len(cache) == 1


def test_a_scale_whose_watch_event_came_first_does_not_hide_later_events():
    # The watch can bring our own write (generation 2) before scale_deployment returns.
    cache = DeploymentCache()
    cache.apply("ADDED", deployment(replicas=1, generation=1))
    cache.apply("MODIFIED", deployment(replicas=2, generation=2, ready=1))
    cache.scaled("ns", "tq-worker", 2)
    cache.apply("MODIFIED", deployment(replicas=2, generation=2, ready=2))
    assert cache.get("ns", "tq-worker")["status"]["readyReplicas"] == 2
