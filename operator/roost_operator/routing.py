"""The routing check: a sample-ratio mismatch test of the inputs canary and stable receive.

Canary and stable serve the *same* traffic, split at random by the router; whatever the model,
the share of rows falling into each bin of an input feature must then be the same on both
arms. If it is not, routing is not random (clients stuck to one pod, a load balancer that
sends some kind of request to one revision) and every canary-vs-stable comparison is suspect:
that pauses the rollout. It is never a model verdict and spends none of the rollout's `alpha`.

The test is the gates' sequential difference of proportions (`roost_operator.sequential`):
per feature bin, canary share minus stable share, two-sided against 0, with its own budget
`ROUTING_ALPHA` split by Bonferroni over every bin. It runs only on features whose profile
bins both revisions share: the same bin labels, the same reference shares and the same bins
(the pods' ``roost_feature_bins_info`` hash of the edges or categories); a retrained profile's
features with other bins are skipped and the check says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from roost_operator import sequential as sq

ROUTING_ALPHA = 0.001
"""Chance that random routing ever pauses a rollout, over all looks, features and bins.

Separate from `spec.rollout.analysis.alpha`: a false pause costs a person's look, not a good
model, so it is kept small rather than taken from the gates' budget."""

Bins = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class RoutingCheck:
    """The check's outcome on the evidence so far."""

    mismatch: bool
    """Input shares differ with confidence `1 - ROUTING_ALPHA`: pause the rollout."""
    words: str
    features: int
    """Features compared (0: nothing to compare)."""


def _same_profile(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return bool(a) and a.keys() == b.keys() and all(math.isclose(a[k], b[k]) for k in a)


def _interval_counts(
    canary: Bins,
    canary_ref: Bins,
    stable: Bins,
    stable_ref: Bins,
    binning: tuple[Mapping[str, str], Mapping[str, str]] | None,
) -> tuple[list[str], list[float], list[float], list[float], list[float]]:
    """Per shared bin: canary rows in it, canary rows of its feature, the same for stable."""
    labels: list[str] = []
    x_c: list[float] = []
    n_c: list[float] = []
    x_s: list[float] = []
    n_s: list[float] = []
    for feature in sorted(set(canary_ref) & set(stable_ref)):
        ref = canary_ref[feature]
        if not _same_profile(ref, stable_ref[feature]):
            continue
        # Equal shares do not make equal bins (quantile bins always hold the same shares):
        # where the pods say how they bin, both must bin alike.
        if binning is not None and (
            binning[0].get(feature) is None or binning[0].get(feature) != binning[1].get(feature)
        ):
            continue
        c, s = canary.get(feature) or {}, stable.get(feature) or {}
        rows_c = sum(v for b, v in c.items() if b in ref)
        rows_s = sum(v for b, v in s.items() if b in ref)
        for b in sorted(ref):
            labels.append(f"{feature}/{b}")
            x_c.append(c.get(b, 0.0))
            n_c.append(rows_c)
            x_s.append(s.get(b, 0.0))
            n_s.append(rows_s)
    return labels, x_c, n_c, x_s, n_s


def check_routing(
    evidence: dict[str, Any],
    canary: Bins,
    canary_ref: Bins,
    stable: Bins,
    stable_ref: Bins,
    alpha: float = ROUTING_ALPHA,
    binning: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
) -> RoutingCheck:
    """Add one interval's feature-bin counts of both arms to ``evidence["routing"]`` and test.

    `canary`/`stable`: rows per feature and bin in the interval; `*_ref`: each revision's
    profile shares (which bins exist, and whether both revisions share them); `binning`: each
    revision's hash of every feature's bins (``roost_feature_bins_info``), where known: a
    feature is then compared only when both hashes exist and agree.
    """
    labels, x_c, n_c, x_s, n_s = _interval_counts(canary, canary_ref, stable, stable_ref, binning)
    raw = evidence.get("routing") or {}
    known = [str(b) for b in raw.get("bins") or []]
    old = sq.DiffState.from_status(raw.get("state"), len(known))
    order = known + [b for b in labels if b not in known]
    grow = len(order) - len(known)
    state = sq.DiffState(*(np.concatenate([getattr(old, f), np.zeros(grow)]) for f in sq.FIELDS))
    pos = {b: i for i, b in enumerate(labels)}

    def aligned(values: list[float]) -> Any:
        return np.asarray([values[pos[b]] if b in pos else 0.0 for b in order])

    state = sq.update(state, aligned(x_c), aligned(n_c), aligned(x_s), aligned(n_s))
    evidence["routing"] = {"bins": order, "state": state.to_status()}
    features = len({b.rsplit("/", 1)[0] for b in order})
    if not order:
        return RoutingCheck(False, "routing: no input feature both revisions bin alike", 0)
    code, lower, upper = sq.judge_many(state, alpha, 0.0, 0.0)
    dev = np.maximum(np.nan_to_num(lower, nan=-np.inf), -np.nan_to_num(upper, nan=np.inf))
    worst = int(np.argmax(dev))
    est = float(state.estimate[worst])
    shown = f"{100 * est:+.2f} pp" if math.isfinite(est) else "n/a"
    lo, hi = float(lower[worst]), float(upper[worst])
    bounds = (
        f"[{100 * lo:+.2f}, {100 * hi:+.2f}] pp"
        if math.isfinite(lo) and math.isfinite(hi)
        else f"[interval after {sq.MIN_INTERVALS} intervals]"
    )
    if code == sq.FAIL:
        words = (
            f"routing check: canary and stable receive different inputs ({order[worst]} share, "
            f"canary minus stable {shown} {bounds}, {100 * (1 - alpha):.4g} % confidence); "
            "traffic is not split at random (sticky clients, load balancer?): rollout paused, "
            "no model verdict"
        )
        return RoutingCheck(True, words, features)
    words = f"routing check: {features} input features, largest share gap {shown} {bounds}"
    return RoutingCheck(False, words, features)
