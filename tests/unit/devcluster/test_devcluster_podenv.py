"""Environment and argv computed from a pod spec, as a kubelet would."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from roost_devcluster.podenv import (
    ContainerConfigError,
    command_line,
    container_env,
    decode_secret,
    expand,
    field_ref,
)

POD: dict[str, Any] = {
    "metadata": {
        "name": "wine-abc",
        "namespace": "ml",
        "uid": "u-1",
        "labels": {"roost.dev/revision": "r1"},
        "annotations": {"team": "data"},
    },
    "spec": {"nodeName": "kwok-node-0", "serviceAccountName": "roost"},
    "status": {"podIP": "127.1.7.3", "hostIP": "127.0.0.1", "podIPs": [{"ip": "127.1.7.3"}]},
}
SECRETS = {("ml", "creds"): {"key": "s3cret"}}
CONFIG_MAPS = {("ml", "cfg"): {"mode": "fast", "level": "2"}}


def secrets(namespace: str, name: str) -> Mapping[str, str] | None:
    return SECRETS.get((namespace, name))


def config_maps(namespace: str, name: str) -> Mapping[str, str] | None:
    return CONFIG_MAPS.get((namespace, name))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.name", "wine-abc"),
        ("metadata.namespace", "ml"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['roost.dev/revision']", "r1"),
        ("metadata.annotations['team']", "data"),
        ("metadata.labels['absent']", ""),
        ("spec.nodeName", "kwok-node-0"),
        ("spec.serviceAccountName", "roost"),
        ("status.podIP", "127.1.7.3"),
        ("status.podIPs", "127.1.7.3"),
        ("status.hostIP", "127.0.0.1"),
    ],
)
def test_field_refs(path: str, value: str) -> None:
    assert field_ref(POD, path) == value


def test_unknown_field_ref_is_a_config_error() -> None:
    with pytest.raises(ContainerConfigError, match=r"spec\.hostname"):
        field_ref(POD, "spec.hostname")


def test_expansion_follows_kubernetes_rules() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", env) == "x-y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("cost $5", env) == "cost $5"


def test_container_env_resolves_every_source_in_order() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(HOST):8080"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
        ],
    }
    env = container_env(POD, container, secrets, config_maps)
    assert env == {
        "CFG_mode": "fast",
        "CFG_level": "2",
        "HOST": "127.1.7.3",
        "URL": "http://127.1.7.3:8080",
        "TOKEN": "s3cret",
        "MODE": "fast",
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"secretKeyRef": {"name": "nope", "key": "k"}}, "Secret 'nope' not found"),
        ({"secretKeyRef": {"name": "creds", "key": "other"}}, "key 'other' in Secret 'creds'"),
        ({"configMapKeyRef": {"name": "cfg", "key": "x"}}, "key 'x' in ConfigMap 'cfg'"),
        ({"resourceFieldRef": {"resource": "limits.cpu"}}, "unsupported valueFrom"),
    ],
)
def test_missing_references_are_config_errors(source: dict[str, Any], message: str) -> None:
    container = {"env": [{"name": "X", "valueFrom": source}]}
    with pytest.raises(ContainerConfigError, match=message):
        container_env(POD, container, secrets, config_maps)


def test_decode_secret() -> None:
    assert decode_secret({"data": {"a": "aGk="}, "stringData": {"b": "c"}}) == {"a": "hi", "b": "c"}


def _executable(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_command_resolves_on_path_and_expands_args(tmp_path: Path) -> None:
    tool = _executable(tmp_path, "roost")
    container = {"name": "c", "command": ["roost", "serve"], "args": ["--host", "$(HOST)"]}
    argv = command_line(container, {"HOST": "127.1.0.5"}, f"{tmp_path}{os.pathsep}/usr/bin")
    assert argv == [str(tool), "serve", "--host", "127.1.0.5"]


def test_image_entrypoint_is_used_without_command(tmp_path: Path) -> None:
    tool = _executable(tmp_path, "roost-operator")
    container = {"name": "op", "image": "ghcr.io/roost-dev/roost-operator:0.1.0", "args": ["-v"]}
    assert command_line(container, {}, str(tmp_path)) == [str(tool), "-v"]


def test_unknown_image_without_command_and_missing_executable_fail(tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError, match="no known entrypoint"):
        command_line({"name": "c", "image": "nginx:1"}, {}, str(tmp_path))
    with pytest.raises(ContainerConfigError, match="not found on PATH"):
        command_line({"name": "c", "command": ["absent-tool"]}, {}, str(tmp_path))
