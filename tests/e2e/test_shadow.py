"""The shadow step end to end: the canary answers copies of client requests, never a client.

Real control plane, serving pods, operator and bounded traffic sent the way the Service would
(`roost_devcluster.traffic`: Ready pods only, by replicas). During ``{shadow: 100}`` the
canary's ``roost.dev/traffic`` gate stays closed; the operator pushes the ``shadow`` runtime
section to the stable pods, which copy every client request to the canary pods and compare the
answers by request id; ``gates.shadowDisagreement`` (implied) judges the disagreement rate.

- wine-constant (always class 2) is rolled back in the shadow step: zero client requests on the
  canary — counted by the clients and by the canary pods' own /metrics, which only ever show
  ``source="shadow"`` requests;
- wine-v2 (same labels as wine-v1 on this traffic) passes validation, then the shadow step,
  then takes client traffic at weight 50 and is promoted.

Each scenario prints ``SCENARIO <name>: verdict <X> after <N> s`` (apply to verdict).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from e2e.operator_fixtures import operator_process
from e2e.test_canary_scenarios import Rollout, rollout
from e2e.test_zero_exposure import VALIDATION, CanaryScrapes, _metrics_url, _requests_by_source
from e2e.test_zero_exposure import _apply as apply_wine

__all__ = ["operator_process", "rollout"]

pytestmark = pytest.mark.e2e

Obj = dict[str, Any]
STEPS: list[Obj] = [{"shadow": 100, "pause": "4s"}, {"weight": 50, "pause": "4s"}]


def _apply(r: Rollout, model: str, validation: Obj | None = None) -> None:
    apply_wine(r, model, STEPS, validation)


def _serve_stable(r: Rollout) -> str:
    _apply(r, "wine-v1")
    stable: str = r.wait(lambda: (r.status().get("stable") or {}).get("revision"), "stable")
    r.wait(lambda: r.ready_pods(stable, 2), f"2 Ready pods of {stable}")
    return stable


def _shadow_totals(r: Rollout, revision: str, canary: str) -> dict[str, float]:
    """The stable pods' shadow counters for copies to `canary`, summed."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for pod in r.pods(revision):
        url = _metrics_url(pod)
        assert url is not None
        for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
            for s in family.samples:
                if s.name.startswith("roost_shadow_") and s.labels.get("canary") == canary:
                    key = s.name + "/" + s.labels.get("outcome", s.labels.get("kind", ""))
                    out[key] = out.get(key, 0.0) + s.value
    return out


def test_one_class_model_rolled_back_in_shadow_with_zero_client_requests(r: Rollout) -> None:
    stable = _serve_stable(r)
    with r.traffic(120) as traffic:
        _apply(r, "wine-constant")
        canary = r.new_canary(stable)
        with CanaryScrapes(r, canary).running() as scrapes:
            st = r.verdict("RolledBack", "shadow-one-class")
        shadow = _shadow_totals(r, stable, canary)
    entry = st["history"][-1]
    assert entry["revision"] == canary
    assert entry["reason"].startswith("gate shadowDisagreement failed"), entry
    assert "canary disagrees on" in entry["reason"], entry
    # Clients: every request answered 200 by the stable revision, none by the canary.
    assert traffic.sent > 0
    assert set(traffic.codes) == {200}, traffic.codes
    assert {rev for rev, _ in traffic.by_revision} == {stable}, traffic.by_revision
    # The canary's own counters: it answered copies, and not one client request.
    assert scrapes.last, "no scrape of the canary pods while they lived"
    copies = 0.0
    for pod, text in scrapes.last.items():
        by_source = _requests_by_source(text)
        assert by_source.get("client", 0.0) == 0.0, (pod, by_source)
        copies += by_source.get("shadow", 0.0)
    assert copies > 0, scrapes.last
    # The stable pods paired and compared those copies.
    compared = shadow.get("roost_shadow_requests_total/compared", 0.0)
    assert compared > 0, shadow
    assert shadow["roost_shadow_disagreements_total/prediction"] > 0.3 * compared, shadow
    r.assert_rolled_back(stable, canary, "shadowDisagreement")


def test_good_model_passes_shadow_and_is_promoted(r: Rollout) -> None:
    stable = _serve_stable(r)
    with r.traffic(150) as traffic:
        # The whole zero-exposure path: validated before any traffic, shadowed, then weighted.
        _apply(r, "wine-v2", VALIDATION)
        canary = r.new_canary(stable)
        advanced = r.wait(
            lambda: r.canary() if r.canary().get("step") == 1 else None, "the weighted step"
        )
        shadow = _shadow_totals(r, stable, canary)
        st = r.verdict("Promoted", "shadow-pass")
    assert advanced["revision"] == canary
    assert advanced["validation"]["result"] == "passed", advanced
    assert st["stable"]["revision"] == canary
    assert shadow.get("roost_shadow_requests_total/compared", 0.0) >= 50, shadow
    assert shadow.get("roost_shadow_disagreements_total/prediction", 0.0) == 0.0, shadow
    r.wait_events("CanaryStepAdvanced")
    messages = [e["message"] for e in r.events() if e["reason"] == "CanaryStepAdvanced"]
    assert any("shadow step passed" in m for m in messages), messages
    assert set(traffic.codes) == {200}, traffic.codes
    assert traffic.by_revision[(canary, 200)] > 0, traffic.by_revision


@pytest.fixture
def r(rollout: Rollout) -> Rollout:
    return rollout
