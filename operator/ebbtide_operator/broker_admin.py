"""Applying the role identities to a live managed broker, as its admin.

The broker loads its users at boot (Redis `--aclfile`, RabbitMQ `load_definitions`), from
the admin Secret the operator re-renders on a rotation. A mounted Secret file changes
late and a restart would drop every connection, so the same users are also set live:
Redis `ACL SETUSER <user> reset ...` and RabbitMQ's management API (`PUT /api/users`,
`PUT /api/permissions`). Connections already authenticated keep working on both brokers
(a password is checked only when a connection opens), so nothing in flight is lost while
the workers roll onto the new Secret. Synchronous: the tick runs it in a thread.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Mapping, Sequence
from urllib.parse import quote, unquote, urlsplit

from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide.brokers.tls import BrokerTLS, is_tls_url

from ebbtide_operator import naming
from ebbtide_operator.build import rabbitmq, roles
from ebbtide_operator.build.roles import Credential

TIMEOUT_SECONDS = 5.0


def apply_redis(
    admin_url: str,
    credentials: Mapping[str, Credential],
    prefix: str,
    tls: BrokerTLS | None = None,
) -> None:
    """`ACL SETUSER` every role's user with exactly the rules of the ACL file (over TLS,
    verified by `tls`, for a rediss:// URL)."""
    import redis

    client = redis.Redis.from_url(
        admin_url,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        **((tls or BrokerTLS()).redis_kwargs() if is_tls_url(admin_url) else {}),
    )
    try:
        for role in naming.ROLES:
            credential = credentials[role]
            rules = roles.redis_user_rules(role, credential, prefix)
            client.execute_command("ACL", "SETUSER", credential.username, *rules)
    finally:
        client.close()


def _request(
    management_url: str, method: str, path: str, body: dict, tls: BrokerTLS | None = None
) -> None:
    """One management API call; https verifies the broker against `tls`'s CA."""
    parts = urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or naming.RABBITMQ_MANAGEMENT_PORT}"
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method)
    token = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    request.add_header("Content-Type", "application/json")
    context = (tls or BrokerTLS()).context() if parts.scheme == "https" else None
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context):  # noqa: S310
        pass


def apply_rabbitmq(
    admin_url: str,
    credentials: Mapping[str, Credential],
    prefix: str,
    vhost: str,
    queues: Sequence[str] = (),
    tls: BrokerTLS | None = None,
) -> None:
    """The vhost, the spec's queues (the producer only checks them), and every role's
    user (password hash, tags) and permissions, over the management API (the admin's
    `administrator` tag allows it)."""
    management = parse_options(admin_url).management_url
    if management is None:
        raise ValueError("the admin URL names no management API")
    v = quote(vhost, safe="")
    _request(management, "PUT", f"/api/vhosts/{v}", {}, tls)
    for queue in rabbitmq.app_queues(vhost, prefix, queues):
        body = {k: queue[k] for k in ("durable", "auto_delete", "arguments")}
        _request(management, "PUT", f"/api/queues/{v}/{quote(queue['name'], safe='')}", body, tls)
    for role in naming.ROLES:
        credential = credentials[role]
        user = quote(credential.username, safe="")
        _request(
            management,
            "PUT",
            f"/api/users/{user}",
            {
                "password_hash": rabbitmq.password_hash(credential.password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ",".join(roles.rabbitmq_tags(role)),
            },
            tls,
        )
        _request(
            management,
            "PUT",
            f"/api/permissions/{quote(vhost, safe='')}/{user}",
            roles.rabbitmq_permissions(role, prefix),
            tls,
        )


def apply(
    broker_type: str,
    admin_url: str,
    credentials: Mapping[str, Credential],
    prefix: str,
    taskqueue: str,
    queues: Sequence[str] = (),
    tls: BrokerTLS | None = None,
) -> None:
    """Set the role identities (and RabbitMQ's app queues) on the live broker (`tls`: the
    CA that verifies a TLS broker)."""
    if broker_type == "rabbitmq":
        vhost = naming.rabbitmq_vhost(taskqueue)
        apply_rabbitmq(admin_url, credentials, prefix, vhost, queues, tls)
    else:
        apply_redis(admin_url, credentials, prefix, tls)
