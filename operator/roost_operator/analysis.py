"""Metric sources of the canary analysis: the serving pods' /metrics, or the Prometheus API.

Both reduce what they read to one `gates.RevisionWindow` per revision and let
`gates.evaluate` judge; the maths lives in `roost_operator.gates`. A source never raises for an
unreachable pod or Prometheus: the analysis is then inconclusive with a message saying why, so
the step waits instead of rolling back (or passing) on a monitoring outage or a network
partition between the operator and the pods.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

import aiohttp

from roost_operator import compare
from roost_operator.gates import (
    HORIZON_CORRECT,
    HORIZON_ERROR_BUCKET,
    HORIZON_LABELLED,
    HORIZON_PREDICTIONS,
    AnalysisResult,
    RevisionWindow,
    Scrape,
    SeriesKey,
    counter_deltas,
    evaluate,
    histogram_quantile,
    inconclusive,
    parse_exposition,
    weighted_feature_psi,
    window_from_samples,
)
from roost_operator.pods import PodTarget
from roost_operator.quality_gates import Quality
from roost_operator.shadow import judge_shadow, prometheus_shadow_counts, shadow_counts
from roost_operator.spec import AnalysisSpec
from roost_operator.times import parse_time, rfc3339_seconds


class AnalysisSource(Protocol):
    """What the operator calls every `spec.rollout.analysis.interval` while a step runs."""

    async def analyse(
        self,
        *,
        namespace: str,
        name: str,
        canary_revision: str,
        stable_revision: str,
        canary_pods: Sequence[PodTarget],
        stable_pods: Sequence[PodTarget],
        window_seconds: float,
        spec: AnalysisSpec,
        evidence: Mapping[str, Any] | None,
        now: datetime,
        shadow: bool = False,
    ) -> AnalysisResult:
        """Add the last interval to `evidence` (``status.canary.evidence``) and judge.

        `shadow`: the canary is in a shadow step; only the stable pods' paired comparisons of
        copies are judged (`roost_operator.shadow`), since the canary serves no client.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class PodsSource:
    """Scrapes the canary and stable pods directly and works on deltas between scrapes.

    The previous scrape of each pod is kept in memory, keyed by (namespace, ModelDeployment,
    pod uid); the window is therefore the time since the previous `analyse` call, and
    `window_seconds` is not used. After an operator restart the first analysis only records a
    baseline and is inconclusive: deltas need two scrapes.
    """

    def __init__(self, *, timeout_seconds: float = 2.0) -> None:
        # Short timeouts: a hung pod must not delay the analysis of every other rollout.
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._previous: dict[tuple[str, str, str], Scrape] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, namespace: str, name: str) -> None:
        """Drop the baselines of one ModelDeployment (deleted, or its rollout ended)."""
        for key in [k for k in self._previous if k[:2] == (namespace, name)]:
            del self._previous[key]

    async def _scrape(self, pod: PodTarget) -> Scrape | str:
        try:
            async with self._client().get(pod.metrics_url) as response:
                if response.status != 200:
                    return f"HTTP {response.status}"
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as e:
            return f"{type(e).__name__}: {e}".rstrip(": ")
        try:
            return parse_exposition(text)
        except ValueError as e:
            return f"unparsable /metrics: {e}"

    async def analyse(
        self,
        *,
        namespace: str,
        name: str,
        canary_revision: str,
        stable_revision: str,
        canary_pods: Sequence[PodTarget],
        stable_pods: Sequence[PodTarget],
        window_seconds: float,
        spec: AnalysisSpec,
        evidence: Mapping[str, Any] | None,
        now: datetime,
        shadow: bool = False,
    ) -> AnalysisResult:
        """Scrape every pod once, compare with the previous scrape and evaluate the gates."""
        pods = [*canary_pods, *stable_pods]
        scrapes = await asyncio.gather(*(self._scrape(p) for p in pods))
        unreachable = [
            f"pod {pod.name} not scraped ({scrape})"
            for pod, scrape in zip(pods, scrapes, strict=True)
            if isinstance(scrape, str)
        ]
        if unreachable:
            # Ready pods the operator cannot reach say nothing about the canary: no verdict on
            # the part that answered. No baseline moves (except first ones), so the next
            # complete analysis covers this interval too, for every pod alike.
            for pod, scrape in zip(pods, scrapes, strict=True):
                if not isinstance(scrape, str):
                    self._previous.setdefault((namespace, name, pod.uid), scrape)
            return inconclusive(
                now, "; ".join([*unreachable, "no verdict until every Ready pod answers"])
            )
        notes: list[str] = []
        deltas: dict[str, dict[SeriesKey, float]] = {}
        gauges: dict[str, Mapping[SeriesKey, float]] = {}
        for pod, scrape in zip(pods, scrapes, strict=True):
            key = (namespace, name, pod.uid)
            assert not isinstance(scrape, str)  # handled above
            gauges[pod.uid] = scrape.gauges
            previous = self._previous.get(key)
            self._previous[key] = scrape
            if previous is None:
                continue
            delta, reset = counter_deltas(previous, scrape)
            # Compare counts only from pods that held the same pushed edges all interval long.
            deltas[pod.uid] = compare.tag_deltas(delta, previous.gauges, scrape.gauges)
            if reset:
                notes.append(f"pod {pod.name} restarted; its counters count from zero")
        # Pods that are gone (scaled down, replaced, promoted away) keep no baseline.
        alive = {p.uid for p in pods}
        for key in [k for k in self._previous if k[:2] == (namespace, name) and k[2] not in alive]:
            del self._previous[key]

        if shadow:
            copies = [deltas[p.uid] for p in stable_pods if p.uid in deltas]
            if not copies:
                reason = "collecting baseline (first scrape of the stable pods)"
                return inconclusive(now, "; ".join([reason, *notes]))
            counts = shadow_counts(copies, canary_revision)
            return judge_shadow(spec, evidence, counts, now, notes)
        canary_deltas = [deltas[p.uid] for p in canary_pods if p.uid in deltas]
        if not canary_deltas:
            reason = (
                "no canary pods"
                if not canary_pods
                else "collecting baseline (first scrape of the canary pods)"
            )
            return inconclusive(now, "; ".join([reason, *notes]))
        canary = window_from_samples(
            canary_deltas, [gauges[p.uid] for p in canary_pods if p.uid in gauges]
        )
        stable_deltas = [deltas[p.uid] for p in stable_pods if p.uid in deltas]
        stable = (
            window_from_samples(
                stable_deltas, [gauges[p.uid] for p in stable_pods if p.uid in gauges]
            )
            if stable_deltas
            else None
        )
        _record_edges(namespace, name, (canary_revision, canary), (stable_revision, stable))
        return evaluate(canary, stable, spec, now, notes, evidence)


def compare_query(selector: str, window: str) -> str:
    """PromQL: compare counts by (version, bin) of the pods that held one version of the
    pushed edges all `window` long (one info series in it), labelled with that version."""
    info = f"{compare.COMPARE_INFO}{{{selector}}}"
    one_version = f"count by (pod) (count_over_time({info}[{window}])) == 1"
    return (
        f"sum by (version, bin) (increase({compare.COMPARE}{{{selector}}}[{window}]) "
        f"* on (pod) group_left (version) (min_over_time({info}[{window}]) and on (pod) "
        f"({one_version})))"
    )


def _record_edges(namespace: str, name: str, *arms: tuple[str, RevisionWindow | None]) -> None:
    """What the runtime push's ``compare`` section needs: each revision's own output edges."""
    for revision, window in arms:
        if window is not None:
            compare.EDGES.record(namespace, name, revision, window.prediction_edges)


class PrometheusError(Exception):
    """A PromQL query failed (unreachable server, HTTP error, or an error answer)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PrometheusSource:
    """Runs PromQL over the Prometheus HTTP API (`/api/v1/query`).

    Series are selected by the target labels `namespace` and `pod` that roost's scrape config
    adds, and the serving labels `model` (the ModelDeployment's name) and `revision`. The
    window is `max(window_seconds, min_window_seconds)`: `increase()` and `rate()` need at
    least two scrapes inside it, so a window shorter than two scrape intervals sees nothing.
    """

    def __init__(
        self, url: str, *, timeout_seconds: float = 5.0, min_window_seconds: float = 30.0
    ) -> None:
        self.url = url.rstrip("/")
        self.min_window_seconds = min_window_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query(self, promql: str, at: datetime) -> list[tuple[dict[str, str], float]]:
        """Evaluate an instant query at `at`; (labels, value) per series of the vector."""
        params = {"query": promql, "time": f"{at.timestamp():.3f}"}
        try:
            async with self._client().get(f"{self.url}/api/v1/query", params=params) as r:
                body: Any = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise PrometheusError(f"{type(e).__name__}: {e}") from e
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(f"query {promql!r} failed: {error}")
        data = body["data"]
        if data.get("resultType") == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    async def revision_window(
        self, namespace: str, name: str, revision: str, window_seconds: float, at: datetime
    ) -> RevisionWindow:
        """Read what one revision did in the window ending at `at`."""
        sel = (
            f'namespace="{_escape(namespace)}",model="{_escape(name)}",'
            f'revision="{_escape(revision)}"'
        )
        w = f"{math.ceil(max(window_seconds, self.min_window_seconds))}s"
        # Request counts and latency: user traffic only, never roost's validation or copies.
        client = f'{sel},source!~"validation|shadow"'
        (
            requests,
            buckets,
            predictions,
            psi,
            rows,
            bins,
            reference,
            binning,
            edges,
            counts,
        ) = await asyncio.gather(
            self.query(f"sum by (code) (increase(roost_requests_total{{{client}}}[{w}]))", at),
            self.query(
                f"sum by (le) (increase(roost_request_duration_seconds_bucket{{{client}}}[{w}]))",
                at,
            ),
            self.query(f"sum by (bin) (increase(roost_predictions_total{{{sel}}}[{w}]))", at),
            self.query(f"roost_feature_psi{{{sel}}}", at),
            self.query(f"roost_drift_window_rows{{{sel}}}", at),
            self.query(
                f"sum by (feature, bin) (increase(roost_feature_bin_total{{{sel}}}[{w}]))", at
            ),
            self.query(f"max by (feature, bin) (roost_feature_reference_share{{{sel}}})", at),
            self.query(f"max by (feature, digest) (roost_feature_bins_info{{{sel}}})", at),
            self.query(f"max by (bin) (roost_prediction_bin_upper{{{sel}}})", at),
            self.query(compare_query(sel, w), at),
        )
        quality = await self._quality(sel, w, at)
        # Drift gauges are weighted per pod exactly as the pods source does it.
        per_pod: dict[str, dict[str, float]] = {}
        for labels, value in psi:
            pod = labels.get("pod") or labels.get("instance", "")
            per_pod.setdefault(pod, {})[labels.get("feature", "")] = value
        rows_by_pod: dict[str, float] = {}
        for labels, value in rows:
            pod = labels.get("pod") or labels.get("instance", "")
            rows_by_pod[pod] = rows_by_pod.get(pod, 0.0) + value
        cumulative = {labels.get("le", ""): v for labels, v in buckets if math.isfinite(v)}
        p99 = histogram_quantile(0.99, cumulative)
        return RevisionWindow(
            requests={labels.get("code", ""): v for labels, v in requests if math.isfinite(v)},
            p99_seconds=p99 if math.isfinite(p99) else None,
            predictions={labels.get("bin", ""): v for labels, v in predictions},
            feature_psi=weighted_feature_psi(
                [(features, rows_by_pod.get(pod, 0.0)) for pod, features in per_pod.items()]
            ),
            drift_rows=sum(rows_by_pod.values()),
            buckets={float(le): v for le, v in cumulative.items()},
            feature_bins=_nested(bins),
            reference=_nested(reference),
            binning={labels.get("feature", ""): labels.get("digest", "") for labels, _ in binning},
            prediction_edges={labels.get("bin", ""): v for labels, v in edges},
            compare=_by(counts, "version", "bin"),
            quality=quality,
        )

    async def _quality(self, sel: str, w: str, at: datetime) -> Quality:
        """The interval's horizon cohort (the accuracy and error gates' counts)."""

        def total(name: str) -> str:
            return f"sum(increase({name}{{{sel}}}[{w}]))"

        matured, labelled, correct, errors = await asyncio.gather(
            self.query(total(HORIZON_PREDICTIONS), at),
            self.query(total(HORIZON_LABELLED), at),
            self.query(total(HORIZON_CORRECT), at),
            self.query(f"sum by (le) (increase({HORIZON_ERROR_BUCKET}{{{sel}}}[{w}]))", at),
        )

        def value(series: list[tuple[dict[str, str], float]]) -> float:
            return sum(v for _, v in series if math.isfinite(v))

        return Quality(
            matured=value(matured),
            labelled=value(labelled),
            correct=value(correct),
            error_buckets={
                float(labels.get("le", "")): v for labels, v in errors if math.isfinite(v)
            },
        )

    async def analyse(
        self,
        *,
        namespace: str,
        name: str,
        canary_revision: str,
        stable_revision: str,
        canary_pods: Sequence[PodTarget],
        stable_pods: Sequence[PodTarget],
        window_seconds: float,
        spec: AnalysisSpec,
        evidence: Mapping[str, Any] | None,
        now: datetime,
        shadow: bool = False,
    ) -> AnalysisResult:
        """Query both revisions over the same interval and evaluate the gates.

        Intervals never overlap: the evidence records the end of the last judged one
        (``until``), and the next covers exactly the time since; an interval shorter than
        `min_window_seconds` waits, since `increase()` needs two scrapes inside it. The pod
        lists are not needed: Prometheus already knows the pods by their labels.
        """
        until = parse_time((evidence or {}).get("until"))
        span = (
            (now - until).total_seconds()
            if until is not None
            else max(window_seconds, self.min_window_seconds)
        )
        if span < self.min_window_seconds:
            return inconclusive(
                now, f"waiting for {self.min_window_seconds:g}s of scrapes since the last interval"
            )
        if shadow:
            try:
                window = f"{math.ceil(max(span, self.min_window_seconds))}s"
                selector = f'namespace="{_escape(namespace)}",model="{_escape(name)}"'
                counts = await prometheus_shadow_counts(
                    self.query, selector, stable_revision, canary_revision, window, now
                )
            except PrometheusError as e:
                return inconclusive(now, f"prometheus at {self.url}: {e}")
            judged = judge_shadow(spec, evidence, counts, now)
            assert judged.evidence is not None
            return replace(judged, evidence={**judged.evidence, "until": rfc3339_seconds(now)})
        try:
            canary, stable = await asyncio.gather(
                self.revision_window(namespace, name, canary_revision, span, now),
                self.revision_window(namespace, name, stable_revision, span, now),
            )
        except PrometheusError as e:
            return inconclusive(now, f"prometheus at {self.url}: {e}")
        _record_edges(namespace, name, (canary_revision, canary), (stable_revision, stable))
        result = evaluate(
            canary, stable if stable.total_requests > 0 else None, spec, now, (), evidence
        )
        if result.evidence is None:
            return result
        return replace(result, evidence={**result.evidence, "until": rfc3339_seconds(now)})


def _nested(series: list[tuple[dict[str, str], float]]) -> dict[str, dict[str, float]]:
    return _by(series, "feature", "bin")


def _by(
    series: list[tuple[dict[str, str], float]], outer: str, inner: str
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for labels, value in series:
        if math.isfinite(value):
            out.setdefault(labels.get(outer, ""), {})[labels.get(inner, "")] = value
    return out


class AnalysisSources:
    """One pods source and one Prometheus source per URL, shared by all ModelDeployments.

    Sharing keeps the pods source's baselines across analyses and one connection pool per
    Prometheus server.
    """

    def __init__(
        self, *, pods_timeout_seconds: float = 2.0, prometheus_min_window: float | None = None
    ) -> None:
        self.pods = PodsSource(timeout_seconds=pods_timeout_seconds)
        self._prometheus: dict[str, PrometheusSource] = {}
        # Shortest Prometheus interval: two scrapes must fit inside it. 30 s suits the usual
        # 15 s scrape interval; ROOST_OPERATOR_PROMETHEUS_MIN_WINDOW overrides it (e.g. for a
        # Prometheus scraping every 2 s, as the e2e tests run it).
        env = os.environ.get("ROOST_OPERATOR_PROMETHEUS_MIN_WINDOW")
        self._min_window = prometheus_min_window or (float(env) if env else 30.0)

    def for_spec(self, analysis: AnalysisSpec) -> AnalysisSource:
        """The source `spec.rollout.analysis` asks for (`spec.parse_spec` checked its URL)."""
        if analysis.source != "prometheus":
            return self.pods
        url = analysis.prometheus_url
        if url not in self._prometheus:
            self._prometheus[url] = PrometheusSource(url, min_window_seconds=self._min_window)
        return self._prometheus[url]

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept about one ModelDeployment."""
        self.pods.forget(namespace, name)
        compare.EDGES.forget(namespace, name)

    async def close(self) -> None:
        """Close every HTTP session."""
        await self.pods.close()
        for source in self._prometheus.values():
            await source.close()
