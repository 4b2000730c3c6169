"""The routing check (sample-ratio mismatch of inputs): false pauses under random routing over
many looks, detection of a skewed split, and that it pauses instead of judging the model."""

from __future__ import annotations

from typing import Any

import numpy as np
from roost_operator.routing import ROUTING_ALPHA, check_routing
from roost_operator.spec import AnalysisSpec, parse_spec
from roost_operator.verdicts import Counts, judge_interval
from scipy.stats import beta

FEATURES = ("a", "b", "c")
SHARES = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
REFERENCE = {f: {str(i): float(s) for i, s in enumerate(SHARES)} for f in FEATURES}


def _rows(rng: np.random.Generator, n: int, shares: Any) -> dict[str, dict[str, float]]:
    return {
        f: {str(i): float(c) for i, c in enumerate(rng.multinomial(n, shares))} for f in FEATURES
    }


def _upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen `k` times in `n`."""
    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def _false_pauses(runs: int, looks: int, alpha: float, seed: int) -> int:
    rng = np.random.default_rng(seed)
    pauses = 0
    for _ in range(runs):
        evidence: dict[str, Any] = {}
        for _ in range(looks):
            # The realised split jitters around 20 % canary; both arms see the same traffic.
            n_c = int(rng.integers(20, 80))
            check = check_routing(
                evidence,
                _rows(rng, n_c, SHARES),
                REFERENCE,
                _rows(rng, 4 * n_c, SHARES),
                REFERENCE,
                alpha,
            )
            if check.mismatch:
                pauses += 1
                break
    return pauses


def test_random_routing_pauses_at_most_at_the_stated_rate_over_many_looks() -> None:
    # At a test-sized alpha the rate is measurable: its lower confidence bound stays below it.
    runs = 300
    pauses = _false_pauses(runs, 36, 0.05, seed=1)
    assert pauses / runs <= 0.05 + 0.03
    # At the shipped alpha (0.1 %) no rollout of 200 pauses: the upper bound is 1.5 %.
    assert _false_pauses(200, 36, ROUTING_ALPHA, seed=2) == 0
    assert _upper(0, 200) < 0.015


def test_a_skewed_split_pauses() -> None:
    rng = np.random.default_rng(3)
    skewed = np.array([0.2, 0.15, 0.25, 0.25, 0.15])  # the canary gets more of bin 0
    evidence: dict[str, Any] = {}
    looks = 0
    while looks < 60:
        looks += 1
        check = check_routing(
            evidence, _rows(rng, 200, skewed), REFERENCE, _rows(rng, 800, SHARES), REFERENCE
        )
        if check.mismatch:
            break
    assert check.mismatch, "a 10-point skew at 200 rows per interval was never seen"
    assert looks <= 30
    assert "rollout paused" in check.words
    assert "/0 share" in check.words
    assert check.features == 3


def test_features_with_other_profile_bins_are_skipped() -> None:
    rng = np.random.default_rng(4)
    other = {f: {str(i): 0.2 for i in range(5)} for f in FEATURES}  # a retrained profile
    evidence: dict[str, Any] = {}
    for _ in range(20):
        check = check_routing(
            evidence, _rows(rng, 200, [1, 0, 0, 0, 0]), other, _rows(rng, 800, SHARES), REFERENCE
        )
    assert (check.mismatch, check.features) == (False, 0)
    assert "no input feature" in check.words


def test_equal_shares_on_other_edges_are_skipped_by_the_pods_bins_digest() -> None:
    # Two profiles with quantile bins hold the same shares on other edges: only the digest the
    # pods export (roost_feature_bins_info) tells them apart. The same skew as above, which
    # pauses when both bin alike, is then no routing evidence.
    rng = np.random.default_rng(3)
    skewed = np.array([0.2, 0.15, 0.25, 0.25, 0.15])
    digests = dict.fromkeys(FEATURES, "edges-a")
    retrained = {**digests, FEATURES[0]: "edges-b"}
    evidence: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for _ in range(30):
        c, s = _rows(rng, 200, skewed), _rows(rng, 800, SHARES)
        skipped = check_routing(evidence, c, REFERENCE, s, REFERENCE, binning=(retrained, digests))
        alike = check_routing(other, c, REFERENCE, s, REFERENCE, binning=(digests, digests))
    assert skipped.features == len(FEATURES) - 1
    assert not skipped.mismatch or f"{FEATURES[0]}/" not in skipped.words
    assert alike.mismatch
    # A pod that says nothing of its bins (no digest) is never compared.
    unknown = check_routing({}, c, REFERENCE, s, REFERENCE, binning=({}, digests))
    assert unknown.features == 0


def _spec(gates: dict[str, object]) -> AnalysisSpec:
    raw = {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": {"gates": gates}}}
    return parse_spec(raw).rollout.analysis


def test_a_routing_mismatch_pauses_instead_of_judging_the_model() -> None:
    spec = _spec({"errorRate": {"margin": 0.005}})
    rng = np.random.default_rng(5)
    skewed = np.array([0.4, 0.1, 0.2, 0.2, 0.1])
    evidence: dict[str, Any] | None = None
    verdicts = []
    for _ in range(30):
        canary = Counts(
            requests={"200": 2000.0},
            feature_bins=_rows(rng, 2000, skewed),
            reference=REFERENCE,
        )
        stable = Counts(
            requests={"200": 8000.0},
            feature_bins=_rows(rng, 8000, SHARES),
            reference=REFERENCE,
        )
        judged = judge_interval(spec, evidence, canary, stable)
        evidence = judged.evidence
        verdicts.append(judged.verdict)
    # Without the skew the error gate passes on this evidence; with it, nothing is decided.
    assert "pass" not in verdicts
    assert "fail" not in verdicts
    assert judged.paused
    assert judged.message == judged.paused
    routing = next(g for g in judged.gates if g.name == "routing")
    assert (routing.mode, routing.verdict) == ("observe", "inconclusive")
    assert "rollout paused" in routing.words
    assert spec.alpha == 0.05  # the gates' alpha is untouched: the check has its own budget


def test_identical_traffic_lets_the_gates_decide() -> None:
    spec = _spec({"errorRate": {"margin": 0.005}})
    rng = np.random.default_rng(6)
    evidence: dict[str, Any] | None = None
    for _ in range(30):
        canary = Counts(
            requests={"200": 2000.0}, feature_bins=_rows(rng, 2000, SHARES), reference=REFERENCE
        )
        stable = Counts(
            requests={"200": 8000.0}, feature_bins=_rows(rng, 8000, SHARES), reference=REFERENCE
        )
        judged = judge_interval(spec, evidence, canary, stable)
        evidence = judged.evidence
    assert judged.verdict == "pass"
    assert not judged.paused
    assert "routing check: 3 input features" in next(
        g.words for g in judged.gates if g.name == "routing"
    )
