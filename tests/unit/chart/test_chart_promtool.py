"""Prometheus' own checker on the chart's alerts: `promtool check rules` and `promtool test rules`.

The rendered PrometheusRule's `spec` is a Prometheus rules file; promtool (Debian's prometheus
package, `make system-deps`) parses every expression and runs the unit tests in
`promtool/alerts_test.yaml` against it. A missing promtool fails these tests.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
Render = Callable[..., list[dict[str, Any]]]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run `make system-deps`", pytrace=False)
    return found


def _rules_file(render: Render, directory: Path) -> Path:
    (rule,) = [o for o in render("prometheusRule.enabled=true") if o["kind"] == "PrometheusRule"]
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def test_promtool_check_rules(render: Render, tmp_path: Path) -> None:
    rules = _rules_file(render, tmp_path)
    done = subprocess.run(
        [_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout, done.stdout


def test_promtool_test_rules(render: Render, tmp_path: Path) -> None:
    _rules_file(render, tmp_path)
    tests = tmp_path / "alerts_test.yaml"
    shutil.copy(HERE / "promtool" / "alerts_test.yaml", tests)
    done = subprocess.run(
        [_promtool(), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout
