"""`spec.rollout.validation`: the checks a canary passes before it gets any traffic.

Pure (no Kubernetes, no I/O). The operator runs the checks (`roost_operator.validator`) once
the canary's containers are ready and before the operator opens the pods' traffic gate
(`roost.dev/traffic`); the rollout machine records the outcome in ``status.canary.validation``
and rolls the canary back with ``validation: <reason>`` when it fails. See docs/analysis.md,
"Validation before any weight".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roost_operator import times


class ValidationSpecError(ValueError):
    """A malformed `spec.rollout.validation` (the message says what to fix)."""


@dataclass(frozen=True)
class ValidationSpec:
    """What the canary must show before traffic: signature, sample answers, latency."""

    allow_interface_change: bool = False
    """The new model's inputs/outputs differ on purpose: report, do not refuse."""
    golden_uri: str | None = None
    """Rows with expected outputs (CSV or Parquet, fetched like the model); without it the
    rows sampled into the reference profile by `roost profile` are used."""
    expected_column: str | None = None
    """The golden column holding the expected label (others are features, in order)."""
    rows: int = 64
    """At most this many sample rows are sent to each revision."""
    min_agreement: float = 0.95
    """Classifiers: share of rows where the canary's label equals the reference's."""
    max_abs_error: float | None = None
    """Regressors (float outputs): largest tolerated absolute difference (None: unchecked)."""
    max_latency_seconds: float = 1.0
    """The slowest validation request to the canary (after the first, which warms it up)."""
    timeout_seconds: float = 10.0
    """Per request to a pod."""


def _float(raw: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValidationSpecError(
            f"spec.rollout.validation.{key} must be a number between {lo} and {hi}"
        )
    return float(value)


def parse_validation(raw: Any) -> ValidationSpec | None:
    """`spec.rollout.validation` (absent, null or ``enabled: false``: None)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValidationSpecError("spec.rollout.validation must be a map")
    if raw.get("enabled") is False:
        return None
    golden = raw.get("golden") or {}
    if not isinstance(golden, Mapping):
        raise ValidationSpecError("spec.rollout.validation.golden must be a map with a uri")
    uri = golden.get("uri")
    if uri is not None and (not isinstance(uri, str) or not uri):
        raise ValidationSpecError("spec.rollout.validation.golden.uri must be a non-empty string")
    rows = raw.get("rows", 64)
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 10_000:
        raise ValidationSpecError("spec.rollout.validation.rows must be between 1 and 10000")
    latency = raw.get("maxLatency", "1s")
    timeout = raw.get("timeout", "10s")
    try:
        latency_s = times.parse_duration(latency, "spec.rollout.validation.maxLatency")
        timeout_s = times.parse_duration(timeout, "spec.rollout.validation.timeout")
    except ValueError as e:
        raise ValidationSpecError(str(e)) from None
    agreement = _float(raw, "minAgreement", 0.0, 1.0)
    column = golden.get("expectedColumn")
    return ValidationSpec(
        allow_interface_change=bool(raw.get("allowInterfaceChange", False)),
        golden_uri=uri,
        expected_column=str(column) if column else None,
        rows=rows,
        min_agreement=0.95 if agreement is None else agreement,
        max_abs_error=_float(raw, "maxAbsError", 0.0, 1e12),
        max_latency_seconds=latency_s,
        timeout_seconds=timeout_s or 10.0,
    )
