"""Zero exposure end to end: a canary takes no client request before validation lets it.

Real control plane, serving pods, operator and bounded traffic sent the way the Service would
(`roost_devcluster.traffic`: Ready pods only, by replicas). Serving pods carry the
``roost.dev/traffic`` readiness gate; the operator opens it for stable pods at once and for a
canary only after `spec.rollout.validation` passed.

- wine-bad-signature (12 features where the stable takes 13) is refused by validation before
  any client request reaches it, in a canary rollout and as a full-scale replacement (no
  steps): zero client errors, zero client requests on the canary —
  counted by the clients and by the canary pods' own /metrics, which only ever show
  ``source="validation"`` requests;
- wine-v2 passes validation on the profile's sample rows (answered by both revisions, the
  canary's requests counted under ``source="validation"``) and is promoted.

Each scenario prints ``SCENARIO <name>: verdict <X> after <N> s`` (apply to verdict).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from e2e.operator_fixtures import operator_process
from e2e.test_canary_scenarios import Rollout, rollout
from prometheus_client.parser import text_string_to_metric_families
from roost_devcluster import modeldeployments as mds

__all__ = ["operator_process", "rollout"]

pytestmark = pytest.mark.e2e

Obj = dict[str, Any]
GATES: Obj = {"errorRate": {"margin": 0.05}}
STEPS: list[Obj] = [{"weight": 50, "pause": "4s"}]
VALIDATION: Obj = {"minAgreement": 0.8, "maxLatency": "2s"}


def _apply(
    r: Rollout, model: str, steps: list[Obj] = STEPS, validation: Obj | None = VALIDATION
) -> None:
    """Apply `wine` serving `model` (error-rate gate, analysis every 2 s); the verdict clock."""
    body = mds.manifest(
        r.namespace, r.models[model], "wine", 2, steps, {"interval": "2s", "gates": GATES}
    )
    if validation is not None:
        body["spec"]["rollout"]["validation"] = validation
    r.started = time.monotonic()
    mds.apply(r.api, body)


def _metrics_url(pod: Obj) -> str | None:
    ip = pod.get("status", {}).get("podIP")
    if not ip or not ip.startswith("127."):  # loopback pod IPs only, ever
        return None
    ports = pod["spec"]["containers"][0].get("ports") or []
    port = next((p["containerPort"] for p in ports if p.get("name") == "http"), 8080)
    return f"http://{ip}:{port}/metrics"


def _requests_by_source(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "roost_requests_total":
                source = s.labels.get("source", "")
                out[source] = out.get(source, 0.0) + s.value
    return out


class CanaryScrapes:
    """Scrape every pod of one revision's /metrics while it lives; keep each pod's last one."""

    def __init__(self, r: Rollout, revision: str) -> None:
        self.r, self.revision = r, revision
        self.last: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pod in self.r.pods(self.revision):
                url = _metrics_url(pod)
                if url is None:
                    continue
                try:
                    text = httpx.get(url, timeout=2).text
                except httpx.HTTPError:
                    continue
                if "roost_requests_total" in text:
                    self.last[pod["metadata"]["name"]] = text
            self._stop.wait(0.2)

    @contextmanager
    def running(self) -> Iterator[CanaryScrapes]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


@pytest.mark.parametrize("steps", [STEPS, []], ids=["canary", "full-scale"])
def test_incompatible_model_is_refused_before_any_client_request(
    rollout: Rollout, steps: list[Obj]
) -> None:
    """With steps, and without (the new revision replaces the stable at full scale)."""
    r = rollout
    _apply(r, "wine-v1", steps)
    stable = r.wait(lambda: (r.status().get("stable") or {}).get("revision"), "stable")
    r.wait(lambda: r.ready_pods(stable, 2), f"2 Ready pods of {stable}")
    with r.traffic(120) as traffic:
        _apply(r, "wine-bad-signature", steps)
        canary = r.new_canary(stable)
        with CanaryScrapes(r, canary).running() as scrapes:
            st = r.verdict("RolledBack", f"validation-signature ({len(steps)} steps)")
    entry = st["history"][-1]
    assert entry["revision"] == canary
    assert entry["reason"] == "validation: input X has 12 features, stable has 13", entry
    r.wait_events("ValidationFailed")
    # Clients: every request answered 200, none by the canary.
    assert traffic.sent > 0
    assert set(traffic.codes) == {200}, traffic.codes
    assert {rev for rev, _ in traffic.by_revision} == {stable}, traffic.by_revision
    # The canary's own counters: its pods ran, and not one client request reached them.
    assert scrapes.last, "no scrape of the canary pods while they lived"
    for pod, text in scrapes.last.items():
        by_source = _requests_by_source(text)
        assert by_source.get("client", 0.0) == 0.0, (pod, by_source)
    stalled = r.condition("Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "CanaryRolledBack"), stalled
    assert "validation: input X has 12 features" in stalled["message"]


def test_good_model_passes_validation_and_is_promoted(rollout: Rollout) -> None:
    r = rollout
    _apply(r, "wine-v1")
    stable = r.wait(lambda: (r.status().get("stable") or {}).get("revision"), "stable")
    r.wait(lambda: r.ready_pods(stable, 2), f"2 Ready pods of {stable}")
    with r.traffic(120) as traffic:
        _apply(r, "wine-v2")
        canary = r.new_canary(stable)
        passed = r.wait(
            lambda: r.canary().get("validation") if r.canary().get("revision") == canary else None,
            "the canary's validation",
        )
        st = r.verdict("Promoted", "validation-pass")
    assert passed["result"] == "passed", passed
    assert passed["message"].startswith("signature compatible; profile sample: 64 rows"), passed
    assert st["stable"]["revision"] == canary
    r.wait_events("ValidationPassed")
    assert set(traffic.codes) == {200}, traffic.codes
    # The canary pod validated answered the 64 sample rows (8 requests), labelled apart from
    # clients (the pod added while it grew to full scale came after validation).
    counts = []
    for pod in r.pods(canary):
        url = _metrics_url(pod)
        assert url is not None
        counts.append(_requests_by_source(httpx.get(url, timeout=5).text).get("validation", 0.0))
    assert max(counts) >= 8.0, counts
    # Only after validation did clients reach the canary (now the stable revision).
    assert traffic.by_revision[(canary, 200)] > 0, traffic.by_revision
