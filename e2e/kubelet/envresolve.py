"""A container's environment, resolved the way the kubelet's makeEnvironmentVariables does.

Order and precedence: `envFrom` sources first (in order, later ones win, with their
`prefix`), then `env` entries in order, each overriding what came before. A literal `value`
is `$(VAR)`-expanded against the variables defined so far; values from `valueFrom` and
`envFrom` are never expanded. A missing required Secret, ConfigMap or key is an error whose
message matches the kubelet's (the container then waits in CreateContainerConfigError and
the kubelet retries later); an `optional` one is skipped.

Secrets and ConfigMaps come from a `Sources` object, so this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from e2e.kubelet.downward import DownwardError, field_value, resource_value
from e2e.kubelet.expansion import expand, mapping_for


class ConfigError(Exception):
    """The container's config cannot be built yet (a missing Secret, ConfigMap or key)."""

    reason = "CreateContainerConfigError"


class Sources(Protocol):
    """Where Secret and ConfigMap data come from (the API server, or a dict in tests)."""

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """The Secret's data, decoded; None when it does not exist."""

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """The ConfigMap's `data`; None when it does not exist."""


class _Cache:
    """Each Secret/ConfigMap is read once per resolution, like the kubelet's local maps."""

    def __init__(self, sources: Sources, namespace: str) -> None:
        self._sources = sources
        self._namespace = namespace
        self._secrets: dict[str, Mapping[str, str] | None] = {}
        self._config_maps: dict[str, Mapping[str, str] | None] = {}

    def secret(self, name: str) -> Mapping[str, str] | None:
        if name not in self._secrets:
            self._secrets[name] = self._sources.secret(self._namespace, name)
        return self._secrets[name]

    def config_map(self, name: str) -> Mapping[str, str] | None:
        if name not in self._config_maps:
            self._config_maps[name] = self._sources.config_map(self._namespace, name)
        return self._config_maps[name]


def _usable_name(name: str) -> bool:
    """envFrom keys that cannot be an environment variable name are skipped."""
    return bool(name) and "=" not in name and "\0" not in name


def _from_source(cache: _Cache, kind: str, ref: Mapping[str, Any]) -> Mapping[str, str] | None:
    """The data of an envFrom source; None when it is missing but optional."""
    name = ref.get("name", "")
    data = cache.secret(name) if kind == "secret" else cache.config_map(name)
    if data is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind} "{name}" not found')
    return data


def _key_ref(cache: _Cache, kind: str, ref: Mapping[str, Any], namespace: str) -> str | None:
    """The value of a secretKeyRef/configMapKeyRef; None when missing but optional."""
    name, key = ref.get("name", ""), ref.get("key", "")
    optional = bool(ref.get("optional"))
    data = cache.secret(name) if kind == "secret" else cache.config_map(name)
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{name}" not found')
    if key not in data:
        if optional:
            return None
        title = "Secret" if kind == "secret" else "ConfigMap"
        raise ConfigError(f"couldn't find key {key} in {title} {namespace}/{name}")
    return data[key]


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    sources: Sources,
    allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's env as a dict (insertion order: envFrom keys, then env entries)."""
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    cache = _Cache(sources, namespace)
    env: dict[str, str] = {}

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, field in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = source.get(field)
            if ref is None:
                continue
            data = _from_source(cache, kind, ref)
            for key, value in (data or {}).items():
                if _usable_name(prefix + key):
                    env[prefix + key] = value

    for var in container.get("env") or []:
        name = var["name"]
        literal = var.get("value") or ""
        source = var.get("valueFrom")
        if literal or not source:
            # The mapping sees `env` as it is now: earlier variables only.
            env[name] = expand(literal, mapping_for(dict(env)))
            continue
        value = _value_from(pod, container, source, cache, namespace, allocatable or {})
        if value is not None:
            env[name] = value
    return env


def _value_from(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    source: Mapping[str, Any],
    cache: _Cache,
    namespace: str,
    allocatable: Mapping[str, str],
) -> str | None:
    try:
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"].get("fieldPath", ""))
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = container
            wanted = ref.get("containerName")
            if wanted and wanted != container.get("name"):
                containers = (pod.get("spec") or {}).get("containers") or []
                target = next((c for c in containers if c.get("name") == wanted), container)
            return resource_value(target, ref.get("resource", ""), ref.get("divisor"), allocatable)
    except DownwardError as error:
        raise ConfigError(str(error)) from error
    if "configMapKeyRef" in source:
        return _key_ref(cache, "configmap", source["configMapKeyRef"], namespace)
    if "secretKeyRef" in source:
        return _key_ref(cache, "secret", source["secretKeyRef"], namespace)
    raise ConfigError(f"unsupported valueFrom: {sorted(source)}")
