"""The managed broker's identities: three role Secrets and the admin Secret's broker file.

Each role (producer, worker, operator) has its own `<name>-broker-<role>` Secret with
`url`, `username` and `password`. A missing one is generated; an existing one is the
source of truth: when its password was edited (a rotation), its `url` is re-derived from
the parts, the admin Secret's broker file (Redis `users.acl`, RabbitMQ `definitions.json`)
is re-rendered, and the caller applies the new credentials to the live broker (see
broker_admin.py) and rolls the workers (the pod template carries `version`).

The admin Secret (`<name>-broker`) keeps its password for good: it is the broker's
identity. A Secret of one of these names that this TaskQueue does not control is left
alone (a conflict), and then nothing is rendered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ebbtide_operator import audit, naming
from ebbtide_operator.build import common, rabbitmq, redis
from ebbtide_operator.build.common import controlled_by
from ebbtide_operator.build.roles import Credential
from ebbtide_operator.cluster import Cluster
from ebbtide_operator.spec import TaskQueueSpec

CONFLICT = "conflict"


@dataclass
class Sync:
    """What a credentials pass found and did."""

    report: dict[str, str] = field(default_factory=dict)  # `Secret/<name>` -> outcome
    roles: dict[str, Credential] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)  # role -> its Secret's URL
    admin: Credential | None = None
    admin_url: str | None = None
    rendered_changed: bool = False  # the broker file was rewritten (a rotation to apply)
    rotated: tuple[str, ...] = ()  # roles whose URL was re-derived from a new password

    @property
    def complete(self) -> bool:
        return self.admin is not None and set(self.roles) == set(naming.ROLES)

    def fingerprint(self) -> str | None:
        """Changes whenever any role's credential does (what the live broker must get)."""
        if not self.complete:
            return None
        assert self.admin is not None
        text = "\n".join(f"{r}:{c.username}:{c.password}" for r, c in sorted(self.roles.items()))
        return hmac.new(self.admin.password.encode(), text.encode(), hashlib.sha256).hexdigest()

    def version(self) -> str | None:
        """A digest of the worker credential for the pod template (a rotation rolls the
        workers): keyed by the admin password, so it tells nothing about the password."""
        worker = self.roles.get("worker")
        if worker is None or self.admin is None:
            return None
        message = f"{worker.username}\n{worker.password}".encode()
        return hmac.new(self.admin.password.encode(), message, hashlib.sha256).hexdigest()[:16]


def decode(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data as text (undecodable values are left out)."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            continue
    return out


def url_broker_type(url: str) -> str | None:
    """'redis' or 'rabbitmq' from a broker URL's scheme; None if neither."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("amqp", "amqps"):
        return "rabbitmq"
    return None


def role_secret(
    body: Mapping[str, Any], broker_type: str, role: str, cred: Credential, tls: bool = False
) -> dict:
    """`tls`: the URL is rediss:// or amqps:// (a TLS switch re-derives it like a rotation)."""
    if broker_type == "rabbitmq":
        return rabbitmq.rabbitmq_role_secret(body, role, cred, tls)
    return redis.redis_role_secret(body, role, cred, tls)


def fresh_credential(role: str) -> Credential:
    return Credential(naming.role_username(role), common.generate_password())


def admin_secret(
    body: Mapping[str, Any],
    broker_type: str,
    admin: Credential,
    roles: Mapping[str, Credential],
    spec: TaskQueueSpec,
) -> dict[str, Any]:
    """The admin Secret with the broker's users file rendered from `roles` (its URL
    rediss:// or amqps:// when the managed broker uses TLS)."""
    prefix, tls = spec.broker.key_prefix, spec.broker.managed_tls
    if broker_type == "rabbitmq":
        queues = spec.broker_queues()  # every shard pre-declared
        return rabbitmq.rabbitmq_secret(
            body, admin.username, admin.password, roles, prefix, queues, tls
        )
    return redis.redis_secret(body, admin.password, roles, prefix, tls)


def rendered_key(broker_type: str) -> str:
    return naming.BROKER_DEFINITIONS_KEY if broker_type == "rabbitmq" else naming.BROKER_ACL_KEY


def same_rendering(broker_type: str, live: str | None, wanted: str) -> bool:
    """Definitions compare as JSON (key order is not content); the ACL file as text."""
    if live is None:
        return False
    if broker_type == "rabbitmq":
        try:
            return json.loads(live) == json.loads(wanted)
        except ValueError:
            return False
    return live == wanted


async def _replace(cluster: Cluster, obj: Mapping[str, Any], taskqueue: str) -> None:
    meta = obj["metadata"]
    await cluster.delete("Secret", meta["namespace"], meta["name"])
    await cluster.create(obj)
    audit.record("replace", "Secret", meta["namespace"], meta["name"], taskqueue)


async def _role(
    cluster: Cluster,
    body: Mapping[str, Any],
    broker_type: str,
    role: str,
    sync: Sync,
    tls: bool = False,
) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], naming.role_secret_name(meta["name"], role)
    key = f"Secret/{name}"
    existing = await cluster.read("Secret", namespace, name)
    if existing is None:
        cred = fresh_credential(role)
        if await cluster.create(role_secret(body, broker_type, role, cred, tls)):
            audit.record("create", "Secret", namespace, name, meta["name"])
            sync.report[key], sync.roles[role] = "created", cred
            sync.urls[role] = _url(body, broker_type, role, cred, tls)
        else:  # created meanwhile by someone else: read again next time
            sync.report[key] = CONFLICT
        return
    if not controlled_by(existing, meta.get("uid")):
        sync.report[key] = CONFLICT
        return
    data = decode(existing)
    username, password = data.get(naming.BROKER_USERNAME_KEY), data.get(naming.BROKER_PASSWORD_KEY)
    url = data.get(naming.BROKER_URL_KEY, "")
    if not username or not password or url_broker_type(url) not in (broker_type, None):
        # Emptied by hand, or made for the other broker type: a fresh identity.
        cred = fresh_credential(role)
        await _replace(cluster, role_secret(body, broker_type, role, cred, tls), meta["name"])
        sync.report[key], sync.roles[role] = "replaced", cred
        sync.urls[role] = _url(body, broker_type, role, cred, tls)
        return
    cred = Credential(username, password)
    wanted = role_secret(body, broker_type, role, cred, tls)
    if wanted["data"] != existing.get("data") and _url_credential(url) == cred:
        # Same credentials, another URL: the spec moved it (TLS switched on or off).
        await cluster.patch("Secret", namespace, name, {"data": wanted["data"]})
        sync.report[key] = "updated"
    elif wanted["data"] != existing.get("data"):
        # The password (or user) was edited: the URL follows it. The TaskQueue's audit
        # log records the rotation (never the password).
        await cluster.patch("Secret", namespace, name, {"data": wanted["data"]})
        audit.record("rotate", "Secret", namespace, name, meta["name"], role=role)
        sync.report[key] = "rotated"
        sync.rotated = (*sync.rotated, role)
    else:
        sync.report[key] = "kept"
    sync.roles[role] = cred
    sync.urls[role] = _url(body, broker_type, role, cred, tls)


def _url_credential(url: str) -> Credential | None:
    """The user and password a URL carries (None when it carries none)."""
    parts = urlsplit(url)
    if parts.username is None or parts.password is None:
        return None
    return Credential(unquote(parts.username), unquote(parts.password))


def _url(body: Mapping[str, Any], broker_type: str, role: str, cred: Credential, tls: bool) -> str:
    return decode(role_secret(body, broker_type, role, cred, tls))[naming.BROKER_URL_KEY]


async def _admin(
    cluster: Cluster, body: Mapping[str, Any], spec: TaskQueueSpec, sync: Sync
) -> None:
    meta = body["metadata"]
    broker_type = spec.broker.type
    namespace, name = meta["namespace"], naming.broker_secret_name(meta["name"])
    key = f"Secret/{name}"
    existing = await cluster.read("Secret", namespace, name)
    if existing is not None and not controlled_by(existing, meta.get("uid")):
        sync.report[key] = CONFLICT
        return
    data = decode(existing) if existing is not None else {}
    password, username = data.get(naming.BROKER_PASSWORD_KEY), data.get(naming.BROKER_USERNAME_KEY)
    same_type = url_broker_type(data.get(naming.BROKER_URL_KEY, "")) == broker_type
    if broker_type == "rabbitmq" and not username:
        same_type = False
    if existing is None or not same_type or not password:
        username = rabbitmq.generate_username() if broker_type == "rabbitmq" else "default"
        admin = Credential(username, common.generate_password())
        obj = admin_secret(body, broker_type, admin, sync.roles, spec)
        if existing is None:
            if not await cluster.create(obj):
                sync.report[key] = CONFLICT
                return
            audit.record("create", "Secret", namespace, name, meta["name"])
            sync.report[key] = "created"
        else:
            await _replace(cluster, obj, meta["name"])
            sync.report[key] = "replaced"
        sync.admin, sync.admin_url = admin, decode(obj)[naming.BROKER_URL_KEY]
        return
    admin = Credential(username or "default", password)
    wanted = decode(admin_secret(body, broker_type, admin, sync.roles, spec))
    file_key = rendered_key(broker_type)
    if same_rendering(broker_type, data.get(file_key), wanted[file_key]) and all(
        data.get(k) == v for k, v in wanted.items() if k != file_key
    ):
        sync.report[key] = "kept"
    else:
        # Only the derived keys change; the admin password stays the broker's identity.
        await cluster.patch("Secret", namespace, name, {"data": common.encoded(wanted)})
        sync.report[key] = "updated"
        sync.rendered_changed = True
    sync.admin, sync.admin_url = admin, wanted[naming.BROKER_URL_KEY]


async def sync(cluster: Cluster, body: Mapping[str, Any], spec: TaskQueueSpec) -> Sync:
    """Ensure the three role Secrets and the admin Secret of a managed broker, in that
    order (the admin Secret's broker file is rendered from the roles). Nothing is written
    for an external broker."""
    result = Sync()
    if spec.broker.managed is None:
        return result
    for role in naming.ROLES:
        await _role(cluster, body, spec.broker.type, role, result, spec.broker.managed_tls)
    if set(result.roles) != set(naming.ROLES):
        return result  # a foreign Secret in the way: render nothing
    await _admin(cluster, body, spec, result)
    return result
