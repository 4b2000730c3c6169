"""What a kubelet computes before starting a container: its environment and its argv.

Pure functions over pod JSON (plus callbacks that read Secrets and ConfigMaps), so they are
unit-tested without a cluster. Supported: literal values with ``$(VAR)`` expansion,
downward-API ``fieldRef`` (``metadata.name``, ``metadata.namespace``, ``metadata.uid``,
``metadata.labels['k']``, ``metadata.annotations['k']``, ``spec.nodeName``,
``spec.serviceAccountName``, ``status.podIP``, ``status.podIPs``, ``status.hostIP``),
``secretKeyRef`` / ``configMapKeyRef`` (honouring ``optional``) and ``envFrom``.
Anything else is a ``ContainerConfigError``, reported as the kubelet's
``CreateContainerConfigError``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
# (namespace, name) -> data (Secret data already base64-decoded), or None when not found.
Lookup = Callable[[str, str], Mapping[str, str] | None]

# Image ENTRYPOINTs of the roost images (Dockerfile.serving / Dockerfile.operator), used when a
# container gives no command, as a container runtime would take them from the image.
IMAGE_ENTRYPOINTS: dict[str, list[str]] = {
    "roost-serving": ["roost", "serve"],
    "roost-operator": ["roost-operator"],
}

_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ContainerConfigError(Exception):
    """The container cannot be configured (the kubelet's CreateContainerConfigError)."""


def field_ref(pod: Obj, path: str) -> str:
    """The downward-API value of ``fieldRef.fieldPath`` for this pod."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", [])),
    }
    if path in simple:
        return str(simple[path])
    match = _FIELD_SUBSCRIPT.match(path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef.fieldPath {path!r}")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(replace, value)


def _key_ref(
    kind: str, ref: Obj, namespace: str, lookup: Lookup
) -> str | None:  # None: optional and missing
    data = lookup(namespace, ref["name"])
    optional = bool(ref.get("optional", False))
    if data is None or ref["key"] not in data:
        if optional:
            return None
        what = (
            f"{kind} {ref['name']!r}"
            if data is None
            else f"key {ref['key']!r} in {kind} {ref['name']!r}"
        )
        raise ContainerConfigError(f"{what} not found")
    return data[ref["key"]]


def container_env(pod: Obj, container: Obj, secrets: Lookup, config_maps: Lookup) -> dict[str, str]:
    """The variables the pod spec defines for this container, in kubelet precedence order."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        sources = (("Secret", "secretRef", secrets), ("ConfigMap", "configMapRef", config_maps))
        for kind, key, lookup in sources:
            ref = source.get(key)
            if ref is None:
                continue
            data = lookup(namespace, ref["name"])
            if data is None:
                if ref.get("optional", False):
                    continue
                raise ContainerConfigError(f"{kind} {ref['name']!r} not found")
            env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            is_secret = "secretKeyRef" in source
            value = _key_ref(
                "Secret" if is_secret else "ConfigMap",
                source["secretKeyRef" if is_secret else "configMapKeyRef"],
                namespace,
                secrets if is_secret else config_maps,
            )
            if value is not None:
                env[name] = value
        else:
            raise ContainerConfigError(f"env {name!r}: unsupported valueFrom {sorted(source)}")
    return env


def decode_secret(secret: Obj) -> dict[str, str]:
    """A Secret's ``data`` decoded (and ``stringData``, which only appears on create)."""
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def command_line(container: Obj, env: Mapping[str, str], path: str) -> list[str]:
    """argv for the container: command + args (image entrypoint when no command), expanded,
    the executable resolved on ``path`` the way a shell would."""
    command = list(container.get("command") or [])
    if not command:
        image = str(container.get("image", ""))
        repo = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
        if repo not in IMAGE_ENTRYPOINTS:
            raise ContainerConfigError(
                f"container {container['name']!r} has no command and image {image!r} has no "
                "known entrypoint (the pod runner runs local executables)"
            )
        command = list(IMAGE_ENTRYPOINTS[repo])
    argv = [expand(a, env) for a in command + list(container.get("args") or [])]
    if os.sep not in argv[0]:
        found = shutil.which(argv[0], path=path)
        if found is None:
            raise ContainerConfigError(f"executable {argv[0]!r} not found on PATH {path}")
        argv[0] = found
    return argv
