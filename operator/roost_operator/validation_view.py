"""`kubectl roost status`: the validation before any traffic, in words (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from roost_operator.timeline import get_path as _get


def validating(spec: Mapping[str, Any], canary: Mapping[str, Any]) -> bool:
    """A canary still waiting for `spec.rollout.validation` (its pods take no traffic)."""
    wanted = _get(spec, "rollout", "validation")
    if not isinstance(wanted, Mapping) or wanted.get("enabled") is False:
        return False
    return bool(canary.get("revision")) and not canary.get("validation")


def validation_lines(
    status: Mapping[str, Any], canary: Mapping[str, Any], validating: bool
) -> list[str]:
    """The validation before any traffic: pending, the canary's result, or the last refusal."""
    record = canary.get("validation")
    if validating:
        return ["", "Validation: pending; the canary takes no traffic until it passes"]
    if isinstance(record, Mapping):
        figures = [
            f"{key} {record[key]}"
            for key in ("rows", "agreement", "maxAbsError", "canaryLatencySeconds")
            if record.get(key) is not None
        ]
        extra = f" [{', '.join(figures)}]" if figures else ""
        return [
            "",
            f"Validation {record.get('time', '-')}: {record.get('result', '-')}: "
            f"{record.get('message', '')}{extra}",
        ]
    history = status.get("history") or []
    refused = next(
        (h for h in reversed(history) if str(h.get("reason", "")).startswith("validation:")),
        None,
    )
    if refused is not None and refused.get("revision") == status.get("failedRevision"):
        return [
            "",
            f"Validation {refused.get('finishedAt', '-')}: failed: revision "
            f"{refused.get('revision')} was refused before any traffic "
            f"({refused.get('reason')})",
        ]
    return []
