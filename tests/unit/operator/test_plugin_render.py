"""kubectl roost: tables rendered from real-shaped ModelDeployment objects, and the timeline."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gate_results import point_gate
from roost_operator.kubectl_plugin import (
    _parser,
    render_history,
    render_status,
    request_token,
    table,
)
from roost_operator.plot import plot_history

MID_ROLLOUT: dict[str, Any] = {
    "apiVersion": "roost.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "iris", "namespace": "ml", "generation": 4},
    "spec": {
        "model": {"uri": "file:///models/iris-v2/model.onnx"},
        "replicas": 4,
        "paused": False,
        "rollout": {
            "steps": [{"weight": 20, "pause": "30s"}, {"weight": 50, "pause": "30s"}],
            "analysis": {"failureLimit": 2},
        },
    },
    "status": {
        "observedGeneration": 4,
        "replicas": 5,
        "readyReplicas": 5,
        "selector": "roost.dev/modeldeployment=iris",
        "stable": {
            "revision": "5f2c1a9b0d",
            "modelUri": "file:///models/iris-v1/model.onnx",
            "readyReplicas": 3,
        },
        "canary": {
            "revision": "a1b2c3d4e5",
            "modelUri": "file:///models/iris-v2/model.onnx",
            "step": 1,
            "weight": 50,
            "stepStartedAt": "2026-03-01T12:00:30Z",
            "readyReplicas": 2,
            "consecutiveFailures": 1,
            "analysisCount": 5,
            "lastAnalysis": {
                "time": "2026-03-01T12:00:50Z",
                "verdict": "fail",
                "message": "errorRate 0.12 > 0.05",
                "canaryRequests": 210,
                "gates": [
                    point_gate("minRequests", 210.0, 50.0, "pass").to_status(),
                    point_gate("errorRate", 0.1190476, 0.05, "fail").to_status(),
                    point_gate("drift", None, 0.25, "inconclusive").to_status(),
                ],
            },
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "StableServing",
                "message": "stable revision 5f2c1a9b0d serves 3/3 replicas",
                "lastTransitionTime": "2026-03-01T11:00:00Z",
            },
            {
                "type": "Reconciling",
                "status": "True",
                "reason": "CanaryStep",
                "message": "canary a1b2c3d4e5 at step 2/2, weight 50%",
                "lastTransitionTime": "2026-03-01T12:00:00Z",
            },
        ],
    },
}

HISTORY = [
    {
        "revision": "5f2c1a9b0d",
        "modelUri": "file:///models/iris-v1/model.onnx",
        "outcome": "Promoted",
        "reason": "all steps passed",
        "startedAt": "2026-03-01T10:58:00Z",
        "finishedAt": "2026-03-01T11:00:00Z",
    },
    {
        "revision": "0badc0ffee",
        "modelUri": "file:///models/iris-bad/model.onnx",
        "outcome": "RolledBack",
        "reason": "errorRate 0.4 > 0.05",
        "startedAt": "2026-03-01T11:10:00Z",
        "finishedAt": "2026-03-01T11:11:05Z",
    },
    {
        "revision": "77aa77aa77",
        "modelUri": "file:///models/iris-v3/model.onnx",
        "outcome": "Superseded",
        "reason": "newer revision a1b2c3d4e5",
        "startedAt": "2026-03-01T11:50:00Z",
        "finishedAt": "2026-03-01T11:59:59Z",
    },
]


def test_table_aligns_columns() -> None:
    assert table(["A", "LONGER"], [["xyz", 1.23456], [None, True]]).splitlines() == [
        "A    LONGER",
        "xyz  1.235",
        "-    yes",
    ]


def test_status_mid_rollout() -> None:
    out = render_status(MID_ROLLOUT)
    lines = out.splitlines()
    assert lines[0].startswith("ModelDeployment ml/iris   generation 4 (observed 4)")
    assert "paused: no" in lines[0]
    assert lines[1] == "Replicas: 4 desired, 5 running, 5 ready"
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("5f2c", "a1b2"))}
    assert rows["5f2c1a9b0d"][:4] == ["5f2c1a9b0d", "stable", "50%", "3"]
    assert rows["a1b2c3d4e5"][:7] == [
        "a1b2c3d4e5",
        "canary",
        "50%",
        "2",
        "2/2",
        "since",
        "2026-03-01T12:00:30Z",
    ]
    assert any(line.split()[:3] == ["Reconciling", "True", "CanaryStep"] for line in lines), out
    assert "Analyses: 5, consecutive failures: 1 of 2 allowed" in out
    assert "Last analysis 2026-03-01T12:00:50Z: fail (errorRate 0.12 > 0.05)" in out
    gates = {
        line.split()[0]: line.split()
        for line in lines
        if line.split()[:1] in (["minRequests"], ["errorRate"], ["drift"])
    }
    assert gates["minRequests"] == ["minRequests", "210", "50", "pass"]
    assert gates["errorRate"] == ["errorRate", "0.119", "0.05", "fail"]
    assert gates["drift"] == ["drift", "-", "0.25", "inconclusive"]


def test_status_of_a_canary_promoted_on_request() -> None:
    md = {**MID_ROLLOUT, "status": dict(MID_ROLLOUT["status"])}
    md["status"]["canary"] = {**md["status"]["canary"], "promotion": "promoted by user"}
    row = next(line for line in render_status(md).splitlines() if line.startswith("a1b2"))
    assert row.split()[:7] == ["a1b2c3d4e5", "canary", "50%", "2", "promoting", "at", "full"]


def test_status_steady_with_failed_revision() -> None:
    md = {
        "metadata": {"name": "iris", "namespace": "default", "generation": 2},
        "spec": {"replicas": 2, "paused": True},
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "readyReplicas": 2,
            "stable": {"revision": "5f2c1a9b0d", "modelUri": "s3://b/m.onnx", "readyReplicas": 2},
            "failedRevision": "0badc0ffee",
        },
    }
    out = render_status(md)
    assert "paused: yes" in out
    assert "5f2c1a9b0d  stable  100%    2      -     s3://b/m.onnx" in out
    assert "canary" not in out
    assert "Failed revision 0badc0ffee is not retried" in out
    assert "kubectl roost retry iris" in out


def test_status_before_first_reconcile() -> None:
    out = render_status({"metadata": {"name": "new", "namespace": "x"}, "spec": {}})
    assert "No revision serves yet." in out


def test_history_table() -> None:
    out = render_history({"status": {"history": HISTORY}})
    lines = out.splitlines()
    assert lines[0].split() == [
        "REVISION",
        "OUTCOME",
        "STARTED",
        "FINISHED",
        "TOOK",
        "MODEL",
        "REASON",
    ]
    assert lines[1].split()[:5] == [
        "5f2c1a9b0d",
        "Promoted",
        "2026-03-01T10:58:00Z",
        "2026-03-01T11:00:00Z",
        "2m00s",
    ]
    assert lines[2].split()[4] == "1m05s"
    assert lines[2].endswith("errorRate 0.4 > 0.05")
    assert render_history({"status": {}}) == "No rollouts recorded yet."


def test_request_token_is_rfc3339_and_distinct_within_a_second() -> None:
    a = request_token(datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC))
    b = request_token(datetime(2026, 3, 1, 12, 0, 0, 2, tzinfo=UTC))
    assert a == "2026-03-01T12:00:00.000001Z"
    assert a != b
    assert datetime.fromisoformat(a.replace("Z", "+00:00")).tzinfo is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "iris"],
        ["-n", "ml", "--context", "dev", "promote", "iris"],
        ["--kubeconfig", "/tmp/k", "history", "iris", "--plot", "out.png"],
    ],
)
def test_parser_accepts_commands(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert args.name == "iris"


def test_plot_history_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "history.png"
    plot_history(HISTORY, out, title="iris")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000  # a drawn figure, not an empty canvas


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "roost-demo", "status", "wine"],
        ["status", "wine", "-n", "roost-demo"],
        ["status", "-n", "roost-demo", "wine"],
        ["--namespace=roost-demo", "history", "wine"],
        ["history", "wine", "--namespace", "roost-demo", "--context", "dev"],
    ],
)
def test_namespace_goes_anywhere_on_the_command_line(argv: list[str]) -> None:
    """The demo's closing hint `kubectl roost status wine -n roost-demo` must parse."""
    args = _parser().parse_args(argv)
    assert (args.name, args.namespace) == ("wine", "roost-demo")


def test_options_default_to_none_when_not_given() -> None:
    args = _parser().parse_args(["status", "wine"])
    assert (args.namespace, args.kubeconfig, args.context) == (None, None, None)


def test_plot_ticks_tell_apart_a_two_minute_span() -> None:
    """Over a short rollout every tick used to read `12-01 06:30`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from roost_operator.plot import time_axis

    start = np.datetime64("2026-12-01T06:30:05")
    fig, ax = plt.subplots()
    try:
        ax.plot(np.array([start, start + np.timedelta64(120, "s")]), [0, 1])
        time_axis(ax)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    finally:
        plt.close(fig)
    assert len(labels) >= 3
    assert len(set(labels)) == len(labels), labels


def _awaiting_validation(rollout: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """MID_ROLLOUT with `rollout` as spec.rollout and its canary at step 0, not analysed yet;
    the object and its canary."""
    spec = {**MID_ROLLOUT["spec"], "rollout": rollout}
    canary = {**MID_ROLLOUT["status"]["canary"], "step": 0}
    canary.pop("lastAnalysis", None)
    md = {**MID_ROLLOUT, "spec": spec, "status": {**MID_ROLLOUT["status"], "canary": canary}}
    return md, canary


def test_status_shows_validation_pending_passed_and_refused() -> None:
    pending, canary = _awaiting_validation({**MID_ROLLOUT["spec"]["rollout"], "validation": {}})
    out = render_status(pending)
    assert "Validation: pending; the canary takes no traffic until it passes" in out
    assert "validating (no traffic)" in out
    record = {
        "result": "passed",
        "message": "signature compatible; golden set: 40 rows, label agreement 100.0%",
        "time": "2026-03-01T12:00:05Z",
        "rows": 40,
    }
    passed = {
        **pending,
        "status": {**pending["status"], "canary": {**canary, "validation": record}},
    }
    assert (
        "Validation 2026-03-01T12:00:05Z: passed: signature compatible; golden set: 40 rows, "
        "label agreement 100.0% [rows 40]"
    ) in render_status(passed)
    refused_status = {
        **MID_ROLLOUT["status"],
        "canary": None,
        "failedRevision": "9d8e7f6a5b",
        "history": [
            {
                "revision": "9d8e7f6a5b",
                "modelUri": "file:///models/bad/model.onnx",
                "outcome": "RolledBack",
                "reason": "validation: input X has 12 features, stable has 13",
                "startedAt": "2026-03-01T12:00:00Z",
                "finishedAt": "2026-03-01T12:00:04Z",
            }
        ],
    }
    out = render_status({**pending, "status": refused_status})
    assert (
        "Validation 2026-03-01T12:00:04Z: failed: revision 9d8e7f6a5b was refused before any "
        "traffic (validation: input X has 12 features, stable has 13)"
    ) in out


def test_status_of_a_full_scale_replacement_being_validated() -> None:
    md, canary = _awaiting_validation({"steps": [], "validation": {}})
    out = render_status(md)
    assert "full scale validating (no traffic)" in out
    assert "Validation: pending" in out
    skipped = {"result": "skipped", "message": "the stable revision had no ready pod", "time": "t"}
    md["status"]["canary"] = {**canary, "validation": skipped}
    assert "Validation t: skipped: the stable revision had no ready pod" in render_status(md)


def _shadow_md(canary: dict[str, Any] | None, **status: Any) -> dict[str, Any]:
    md: dict[str, Any] = {
        "metadata": {"name": "wine", "namespace": "ml"},
        "spec": {
            "replicas": 2,
            "rollout": {"steps": [{"shadow": 100, "pause": "5m"}, {"weight": 50}]},
        },
        "status": {"stable": {"revision": "aaaa", "modelUri": "file:///v1"}, **status},
    }
    if canary is not None:
        md["status"]["canary"] = canary
    return md


EVIDENCE = {"compared": 120, "rows": 120, "disagreements": 3, "errors": 0, "dropped": 1}


def test_status_during_a_shadow_step_shows_the_copies_and_no_weight() -> None:
    canary = {
        "revision": "bbbb",
        "step": 0,
        "weight": 0,
        "modelUri": "file:///v2",
        "evidence": {"shadow": EVIDENCE},
    }
    out = render_status(_shadow_md(canary))
    assert "1/2 shadow 100% (copies only)" in out
    assert "stable pods copy 100% of their requests to the canary" in out
    assert "120 copies compared, 120 rows, 3 disagreeing (2.50 %), 0 canary errors" in out
    row = next(line for line in out.splitlines() if line.startswith("bbbb"))
    assert " 0% " in row


def test_status_after_a_rollback_in_shadow() -> None:
    history = [
        {
            "revision": "bbbb",
            "outcome": "RolledBack",
            "reason": "gate shadowDisagreement failed (shadow: canary disagrees on 77.00 %)",
        }
    ]
    out = render_status(_shadow_md(None, history=history, failedRevision="bbbb"))
    assert "rolled back in the shadow step, before any client request reached it" in out
