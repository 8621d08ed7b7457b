"""The managed Redis builders: the exact objects, owned by the TaskQueue, hardened."""

from __future__ import annotations

import pytest
from ebbtide_operator import naming
from ebbtide_operator.build import common, redis, roles
from ebbtide_operator.spec import parse_spec
from support.taskqueue import assert_owned, decoded, managed_spec, taskqueue


def redis_spec(**persistence) -> dict:
    return managed_spec("redis", persistence=persistence)


ROLES = {role: roles.Credential(f"ebbtide-{role}", f"{role}-pw") for role in naming.ROLES}


def test_admin_secret_holds_password_url_and_the_acl_file_with_hashes_only():
    owner = taskqueue(redis_spec())
    secret = redis.redis_secret(owner, "s3cret", ROLES, "ebbtide")
    assert_owned(secret)
    assert secret["metadata"]["name"] == "tq1-broker"
    data = decoded(secret)
    assert data["password"] == "s3cret"
    assert data["url"] == "redis://:s3cret@tq1-redis.ns1.svc:6379/0"
    acl = data["users.acl"]
    assert acl == roles.redis_acl_file("s3cret", ROLES, "ebbtide")
    assert "s3cret" not in acl and not any(c.password in acl for c in ROLES.values())
    lines = acl.splitlines()
    assert lines[0].startswith("user default reset on #") and lines[0].endswith("~* &* +@all")
    assert [line.split()[1] for line in lines[1:]] == [
        "ebbtide-producer",
        "ebbtide-worker",
        "ebbtide-operator",
    ]


def test_role_secret_holds_its_user_password_and_url():
    owner = taskqueue(redis_spec())
    secret = redis.redis_role_secret(owner, "producer", ROLES["producer"])
    assert_owned(secret)
    assert secret["metadata"]["name"] == "tq1-broker-producer"
    assert secret["metadata"]["labels"][naming.ROLE_LABEL] == "producer"
    assert decoded(secret) == {
        "username": "ebbtide-producer",
        "password": "producer-pw",
        "url": "redis://ebbtide-producer:producer-pw@tq1-redis.ns1.svc:6379/0",
    }


def test_the_url_is_built_from_its_parts_and_escapes_them():
    assert redis.redis_url("tq", "ns", "p/w@x", "u:1", scheme="rediss") == (
        "rediss://u%3A1:p%2Fw%40x@tq-redis.ns.svc:6379/0"
    )


def test_generated_passwords_are_long_and_distinct():
    a, b = common.generate_password(), common.generate_password()
    assert a != b and len(a) >= 40


def test_ephemeral_redis_is_a_deployment_with_the_acl_file_and_hardening():
    owner = taskqueue(redis_spec(enabled=False))
    spec = parse_spec(owner["spec"])
    workload = redis.redis_workload(owner, spec.broker.managed)
    assert_owned(workload)
    assert workload["kind"] == "Deployment"
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["--aclfile", "/etc/redis/users.acl"]
    assert "--requirepass" not in container["args"] and "env" not in container
    assert "--appendonly" in container["args"]
    (acl,) = [v for v in pod["volumes"] if v["name"] == "acl"]
    assert acl["secret"] == {
        "secretName": "tq1-broker",
        "items": [{"key": "users.acl", "path": "users.acl"}],
        "defaultMode": 0o440,
    }
    mount = {"name": "acl", "mountPath": "/etc/redis", "readOnly": True}
    assert mount in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_persistent_redis_is_a_statefulset_with_aof_and_pvc_policy(policy):
    owner = taskqueue(redis_spec(enabled=True, size="5Gi", deletionPolicy=policy))
    spec = parse_spec(owner["spec"])
    sts = redis.redis_workload(owner, spec.broker.managed)
    assert_owned(sts)
    assert sts["kind"] == "StatefulSet"
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == policy
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_service_and_network_policy_select_the_redis_pods():
    owner = taskqueue(redis_spec())
    service = redis.redis_service(owner)
    policy = redis.redis_network_policy(owner)
    assert_owned(service)
    assert_owned(policy)
    assert service["spec"]["selector"] == naming.redis_selector("tq1")
    assert policy["spec"]["podSelector"]["matchLabels"] == naming.redis_selector("tq1")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": naming.worker_selector("tq1")}} in peers
    assert {"podSelector": {"matchLabels": {"ebbtide.dev/producer": "tq1"}}} in peers


def test_tls_redis_listens_on_tls_only_with_the_mounted_certificate():
    owner = taskqueue(redis_spec())
    managed = parse_spec(redis_spec()).broker.managed
    workload = redis.redis_workload(owner, managed, tls=True, tls_hash="abc")
    pod = workload["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--port") + 1] == "0"  # no plain port at all
    assert args[args.index("--tls-port") + 1] == "6379"
    assert args[args.index("--tls-cert-file") + 1] == "/tls/tls.crt"
    assert args[args.index("--tls-key-file") + 1] == "/tls/tls.key"
    assert args[args.index("--tls-ca-cert-file") + 1] == "/tls/ca.crt"
    assert args[args.index("--tls-auth-clients") + 1] == "no"
    assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in container["volumeMounts"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "tq1-broker-tls"
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    assert volume["secret"]["defaultMode"] == 0o440  # never ca.key, group-readable only
    assert pod["metadata"]["annotations"][naming.TLS_HASH_ANNOTATION] == "abc"
    plain = redis.redis_workload(owner, managed)["spec"]["template"]
    assert "--tls-port" not in plain["spec"]["containers"][0]["args"]
    assert "annotations" not in plain["metadata"]


def test_tls_urls_are_rediss():
    owner = taskqueue(redis_spec())
    cred = ROLES["worker"]
    assert decoded(redis.redis_role_secret(owner, "worker", cred, tls=True))["url"].startswith(
        "rediss://ebbtide-worker:"
    )
    assert decoded(redis.redis_secret(owner, "pw", ROLES, "ebbtide", tls=True))["url"] == (
        "rediss://:pw@tq1-redis.ns1.svc:6379/0"
    )
