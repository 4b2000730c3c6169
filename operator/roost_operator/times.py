"""Durations and timestamps, the one place roost parses and formats them.

Durations are Go-style (``30s``, ``1m30s``, ``500ms``, ``1h``), as Kubernetes and the CRD write
them; timestamps are RFC 3339 in UTC (``...Z``), as the API server writes them. Pure: no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)"
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, where: str = "duration") -> float:
    """Seconds in a Go-style duration (a bare number is seconds); `ValueError` names `where`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip() if isinstance(value, str) else ""
    if text == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_DURATION_PART})+", text):
        raise ValueError(f"{where} must be a duration such as 30s, 2m or 1h30m, got {value!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in re.findall(_DURATION_PART, text))


def utc(t: datetime) -> datetime:
    """`t` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC (``...Z``); fractions only when present, so parsing gives `t` back."""
    t = utc(t)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def rfc3339_seconds(t: datetime) -> str:
    """RFC 3339 in UTC with second precision, the form Kubernetes writes timestamps in."""
    return utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 string as an aware UTC datetime; None when missing or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return utc(datetime.fromisoformat(value))
    except ValueError:
        return None
