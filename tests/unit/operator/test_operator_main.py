"""The `roost-operator` command line: options, environment, and what it hands kopf."""

from __future__ import annotations

import getpass
import os
from typing import Any

import kopf
import pytest
from roost_operator import main


def test_flags_and_defaults() -> None:
    cfg, verbose = main.parse_args(["--namespace", "a", "--namespace", "b", "--verbose"], env={})
    assert cfg.namespaces == ("a", "b")
    assert cfg.bind_address == "0.0.0.0"
    assert verbose


def test_environment_configures_what_flags_do_not() -> None:
    env = {"ROOST_OPERATOR_NAMESPACES": "x, y,", "ROOST_OPERATOR_BIND_ADDRESS": "127.0.0.9"}
    cfg, verbose = main.parse_args([], env=env)
    assert cfg.namespaces == ("x", "y")
    assert cfg.bind_address == "127.0.0.9"
    assert not verbose


def test_identity_names_the_pod_or_the_host() -> None:
    assert main.operator_identity({"POD_NAME": "roost-7d9f-abc"}) == (
        f"roost-operator@roost-7d9f-abc/{os.getpid()}"
    )
    assert main.operator_identity({}).startswith("roost-operator@")


def test_runs_under_a_uid_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image runs as UID 10001 with no /etc/passwd entry; kopf's default identity would ask
    `getpass.getuser()` and crash at startup (found by running the built image)."""

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 10001")

    seen: dict[str, Any] = {}

    def run(**kwargs: Any) -> None:
        seen.update(kwargs)
        if kwargs.get("identity") is None:
            no_user()  # what kopf's peering.detect_own_id would do

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.setattr(kopf, "run", run)
    monkeypatch.setenv("POD_NAME", "roost-0")
    assert main.main(["--namespace", "ns"]) == 0
    assert seen["identity"] == f"roost-operator@roost-0/{os.getpid()}"
    assert seen["namespaces"] == ["ns"]
    assert seen["clusterwide"] is False
