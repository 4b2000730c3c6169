"""Same prediction bins for canary and stable: the ``compare`` runtime section and its counts.

Pure (no I/O). A regressor's pods bin predictions with their own profile's output edges, so
after a retrain bin ``i`` of the canary is not bin ``i`` of the stable. The operator pushes
the *stable's* edges (read from the stable pods' ``roost_prediction_bin_upper``) to every pod
of every revision as the runtime section ``compare`` (`section`); each pod then also counts
its predictions on those edges (``roost_prediction_compare_total{bin}``) and says which edges
it holds (``roost_prediction_compare_info{version}``, see ``roost_serving.compare``). The
divergence gate compares canary and stable on those counts, for the version of the stable's
own edges only (`version`).

A pod's interval counts are used only when it held that version at both scrapes that bound
the interval (`tag_deltas`): counts from before a push were binned on other edges.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

COMPARE = "roost_prediction_compare_total"
COMPARE_INFO = "roost_prediction_compare_info"
SECTION = "compare"
"""The runtime section's name (``PUT /v2/roost/runtime`` body ``sections.compare``)."""

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]


def edges_from_uppers(uppers: Mapping[str, float]) -> list[float]:
    """The inner edges of a regressor's bins from ``roost_prediction_bin_upper{bin}``.

    Bins are ``0..n`` by index; the last one's upper bound is ``+Inf`` and is no edge. Labels
    that are not indices (``other``) are ignored. Empty for a classifier (no uppers).
    """
    indexed = sorted((int(b), float(u)) for b, u in uppers.items() if b.isdigit())
    return [u for _, u in indexed if math.isfinite(u)]


def version(edges: Sequence[float]) -> str:
    """A short hash naming one set of edges; pods report it back with their counts."""
    text = json.dumps([float(e) for e in edges], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def section(edges: Sequence[float]) -> dict[str, Any]:
    """The ``compare`` runtime section for the stable's `edges`."""
    values = [float(e) for e in edges]
    return {"version": version(values), "edges": values}


def section_for_stable(uppers: Mapping[str, float]) -> dict[str, Any] | None:
    """The section from a stable pod's ``roost_prediction_bin_upper`` samples, or None when
    the stable is no regressor (classes are the same labels on every revision)."""
    if not uppers:
        return None
    return section(edges_from_uppers(uppers))


def pod_version(gauges: Mapping[SeriesKey, float]) -> str | None:
    """The version of the edges one pod's scrape says it counts on (None: no push yet)."""
    for (name, labels), value in gauges.items():
        if name == COMPARE_INFO and value == 1:
            return dict(labels).get("version")
    return None


def tag_deltas(
    deltas: Mapping[SeriesKey, float],
    before: Mapping[SeriesKey, float],
    after: Mapping[SeriesKey, float],
) -> dict[SeriesKey, float]:
    """One pod's counter deltas with its compare series labelled by the version they were
    binned on, or dropped when the pod changed (or had no) version between the two scrapes
    `before` and `after` (their gauges)."""
    held = pod_version(after)
    keep = held is not None and pod_version(before) == held
    out: dict[SeriesKey, float] = {}
    for (name, labels), value in deltas.items():
        if name != COMPARE:
            out[(name, labels)] = value
        elif keep:
            assert held is not None  # keep implies it
            out[(name, tuple(sorted((*labels, ("version", held)))))] = value
    return out


class RevisionEdges:
    """Output bin uppers per (namespace, ModelDeployment, revision), as its pods exported them.

    Filled by the analysis sources from every scrape of either arm, read by the runtime push's
    ``compare`` builder for the stable revision. Kept in memory only: it is a fact about the
    pods (their profile), read again at the first analysis after an operator restart, and the
    gates never judge counts of edges the stable's own pods did not confirm (`version`).
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._edges: dict[tuple[str, str, str], dict[str, float]] = {}

    def record(self, namespace: str, name: str, revision: str, uppers: Mapping[str, float]) -> None:
        """Remember one revision's uppers (a classifier's empty map is not recorded)."""
        if not uppers or not revision:
            return
        key = (namespace, name, revision)
        self._edges.pop(key, None)
        self._edges[key] = dict(uppers)
        while len(self._edges) > self._limit:  # oldest first: dicts keep insertion order
            del self._edges[next(iter(self._edges))]

    def section(self, namespace: str, name: str, revision: str) -> dict[str, Any] | None:
        """The ``compare`` section for `revision` as the stable, or None while unknown."""
        uppers = self._edges.get((namespace, name, revision))
        return section_for_stable(uppers) if uppers else None

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is known of one ModelDeployment (deleted)."""
        for key in [k for k in self._edges if k[:2] == (namespace, name)]:
            del self._edges[key]


EDGES = RevisionEdges()
"""The operator process's one table (the sources write, the push reads)."""
