"""Spec parsing, the revision hash and kstatus conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from roost_operator import conditions
from roost_operator.revision import compute_revision
from roost_operator.spec import (
    DivergenceGate,
    ErrorRateGate,
    LatencyGate,
    SpecError,
    parse_duration,
    parse_spec,
)

BASE: dict[str, Any] = {"model": {"uri": "s3://bucket/wine/model.onnx"}}


class TestParseSpec:
    def test_defaults(self) -> None:
        s = parse_spec(BASE)
        assert s.replicas == 1
        assert s.server.port == 8080
        assert s.server.max_batch_size == 32
        assert s.rollout.analysis.interval_seconds == 10
        assert s.rollout.analysis.failure_limit == 2
        assert s.rollout.steps == ()
        assert s.autoscaling is None

    def test_steps_and_gates(self) -> None:
        s = parse_spec(
            {
                **BASE,
                "rollout": {
                    "steps": [{"weight": 20, "pause": "30s"}, {"weight": 50, "pause": "1m30s"}],
                    "analysis": {"interval": "5s", "gates": {"errorRate": {"max": 0.05}}},
                },
            }
        )
        assert [(st.weight, st.pause_seconds) for st in s.rollout.steps] == [(20, 30.0), (50, 90.0)]
        assert s.rollout.analysis.gates.error_rate == ErrorRateGate(margin=0.05)
        assert s.rollout.analysis.interval_seconds == 5

    def test_sequential_gate_settings(self) -> None:
        analysis = {
            "alpha": 0.01,
            "progressDeadline": "5m",
            "onInconclusive": "pause",
            "gates": {
                "errorRate": {"margin": 0.005, "mode": "observe"},
                "latency": {"maxP99Ratio": 1.3, "maxP99Seconds": 0.5},
                "divergence": {"maxJSDistance": 0.2},
                "drift": {"maxPSI": 0.25, "margin": 0.2},
            },
        }
        a = parse_spec({**BASE, "rollout": {"analysis": analysis}}).rollout.analysis
        assert a.alpha == 0.01
        assert a.progress_deadline_seconds == 300
        assert a.on_inconclusive == "pause"
        assert a.gates.enforced() == 3  # the observe-mode error gate spends no alpha
        assert a.gates.latency == LatencyGate(max_ratio=1.3, max_p99_seconds=0.5)
        assert a.gates.divergence == DivergenceGate(margin=0.05, max_js_distance=0.2)
        assert a.gates.drift is not None
        assert a.gates.drift.margin == 0.2
        defaults = parse_spec(BASE).rollout.analysis
        assert defaults.progress_deadline_seconds == 600
        assert defaults.on_inconclusive == "rollback"
        assert not defaults.gates.any
        no_deadline = {"rollout": {"analysis": {"progressDeadline": "0s"}}}
        no_deadline_spec = parse_spec({**BASE, **no_deadline}).rollout.analysis
        assert no_deadline_spec.progress_deadline_seconds is None

    @pytest.mark.parametrize(
        ("analysis", "message"),
        [
            ({"alpha": 0.9}, "alpha must be between"),
            ({"onInconclusive": "wait"}, "onInconclusive must be rollback, pause or promote"),
            ({"gates": {"errorRate": {"mode": "warn"}}}, "errorRate.mode must be enforce or"),
            ({"gates": {"latency": {}}}, "needs maxRatio"),
            ({"gates": {"divergence": {"margin": "5%"}}}, "divergence.margin must be a number"),
        ],
    )
    def test_bad_gate_settings(self, analysis: dict[str, object], message: str) -> None:
        with pytest.raises(SpecError, match=message):
            parse_spec({**BASE, "rollout": {"analysis": analysis}})

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ({"model": {}}, "spec.model.uri is required"),
            ({"model": {"uri": "ftp://x/m.onnx"}}, "must start with one of"),
            ({**BASE, "rollout": {"steps": [{"weight": 50}, {"weight": 20}]}}, "strictly"),
            ({**BASE, "rollout": {"steps": [{"weight": 150}]}}, "between 1 and 100"),
            ({**BASE, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "less than or equal"),
            ({"model": {"uri": "s3://b/m", "sha256": "XYZ"}}, "64 lowercase"),
            ({**BASE, "server": {"env": [{"name": "ROOST_MODEL", "value": "x"}]}}, "ROOST_MODEL"),
            ({**BASE, "rollout": {"analysis": {"source": "prometheus"}}}, "prometheusUrl"),
        ],
    )
    def test_bad_specs_say_what_to_fix(self, raw: dict[str, Any], message: str) -> None:
        with pytest.raises(SpecError, match=message):
            parse_spec(raw)

    def test_durations(self) -> None:
        assert parse_duration("1h30m", "x") == 5400
        assert parse_duration("500ms", "x") == 0.5
        with pytest.raises(SpecError, match="duration"):
            parse_duration("10 minutes", "x")


class TestRevision:
    def test_replicas_and_rollout_do_not_change_it(self) -> None:
        a = compute_revision(parse_spec(BASE), "img:1")
        b = compute_revision(
            parse_spec(
                {**BASE, "replicas": 7, "paused": True, "rollout": {"steps": [{"weight": 5}]}}
            ),
            "img:1",
        )
        assert a == b
        assert len(a) == 10
        assert all(ch in "0123456789abcdef" for ch in a)

    @pytest.mark.parametrize(
        "change",
        [
            {"model": {"uri": "s3://bucket/wine/v2.onnx"}},
            {"model": {**BASE["model"], "profileUri": "s3://b/p.json"}},
            {"server": {"maxBatchSize": 8}},
            {"resources": {"limits": {"cpu": "2"}}},
        ],
    )
    def test_what_a_pod_serves_changes_it(self, change: dict[str, Any]) -> None:
        assert compute_revision(parse_spec(BASE), "i") != compute_revision(
            parse_spec({**BASE, **change}), "i"
        )

    def test_image_changes_it(self) -> None:
        s = parse_spec(BASE)
        assert compute_revision(s, "img:1") != compute_revision(s, "img:2")


class TestConditions:
    def test_transition_time_kept_until_status_flips(self) -> None:
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        first = conditions.merge(
            None, conditions.kstatus((False, "A", "a"), ("W", "w"), None), 1, t0
        )
        t1 = t0 + timedelta(minutes=1)
        same = conditions.merge(
            first, conditions.kstatus((False, "B", "b"), ("W", "w"), None), 2, t1
        )
        assert conditions.find(same, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # type: ignore[index]
        flipped = conditions.merge(same, conditions.kstatus((True, "C", "c"), None, None), 2, t1)
        assert conditions.find(flipped, "Ready")["lastTransitionTime"] == "2026-01-01T00:01:00Z"  # type: ignore[index]
        assert [c["type"] for c in flipped] == ["Ready", "Reconciling", "Stalled"]

    def test_stalled_is_not_reconciling(self) -> None:
        cs = conditions.kstatus((True, "R", "r"), ("W", "w"), ("CanaryRolledBack", "why"))
        by = {c.type: c for c in cs}
        assert by["Stalled"].status == "True"
        assert by["Stalled"].reason == "CanaryRolledBack"
        assert by["Reconciling"].status == "False"


class TestRevisionIsThePodTemplate:
    """An operator upgrade that changes the pod template makes a new revision (a canary)."""

    def test_same_spec_same_template_same_revision_for_any_name(self) -> None:
        from roost_operator.builders import Owner, build_deployment

        spec = parse_spec(BASE)
        rev = compute_revision(spec, "img:1")
        a = build_deployment(Owner("wine", "ml", "u1"), spec, rev, 2, "img:1")
        b = build_deployment(Owner("iris", "team", "u2"), spec, rev, 5, "img:1")
        assert a["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"
        assert compute_revision(parse_spec(BASE), "img:1") == rev
        assert a["metadata"]["name"] == f"wine-{rev}"
        assert b["metadata"]["name"] == f"iris-{rev}"

    def test_a_builder_change_makes_a_new_revision(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from roost_operator import builders

        spec = parse_spec(BASE)
        before = compute_revision(spec, "img:1")
        # What an operator upgrade that adds a probe setting or a port does to the template.
        monkeypatch.setattr(builders, "DRAIN_SECONDS", builders.DRAIN_SECONDS + 1)
        assert compute_revision(spec, "img:1") != before

    def test_reordered_env_is_the_same_revision_and_template(self) -> None:
        from roost_operator.builders import Owner, build_deployment

        env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
        one = parse_spec({**BASE, "server": {"env": env}})
        two = parse_spec({**BASE, "server": {"env": env[::-1]}})
        assert compute_revision(one, "i") == compute_revision(two, "i")
        owner = Owner("wine", "ml", "u")
        assert build_deployment(owner, one, "r", 1, "i") == build_deployment(
            owner, two, "r", 1, "i"
        )
