"""What the operator says about interruptions: a rollout picked up from status by this process
(after a restart or a leader failover), and reconciliations that work again after failing (an
API server that was unreachable). Both become events on the ModelDeployment."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import kopf

Key = tuple[str, str]


@dataclass
class Continuity:
    """Per-process memory of interruptions, one entry per ModelDeployment."""

    failing: dict[Key, tuple[float, int, str]] = field(default_factory=dict)
    """ModelDeployments whose reconciliations fail: (since, how many, the last error)."""
    resumed: set[Key] = field(default_factory=set)
    """ModelDeployments whose rollout this process has picked up (one event each)."""

    def picked_up(self, body: kopf.Body, identity: str) -> None:
        """A `RolloutResumed` event the first time this process sees a rollout in progress."""
        key = (str(body.metadata.namespace), str(body.metadata.name))
        canary: dict[str, Any] = (body.get("status") or {}).get("canary") or {}
        if key in self.resumed or not canary.get("revision"):
            return
        self.resumed.add(key)
        kopf.event(
            body,
            type="Normal",
            reason="RolloutResumed",
            message=f"{identity} resumed the rollout of {canary['revision']} from status at "
            f"step {canary.get('step', '?')} after {canary.get('analysisCount', 0)} analyses",
        )

    def failed(self, key: Key, reason: str) -> None:
        """A reconciliation failed (nothing was decided: no status was written)."""
        since, count, _ = self.failing.get(key, (time.monotonic(), 0, ""))
        self.failing[key] = (since, count + 1, reason)

    def succeeded(self, body: kopf.Body, key: Key) -> None:
        """A `Reconciled` event when a reconciliation succeeds after failing ones."""
        failing = self.failing.pop(key, None)
        if failing is None:
            return
        since, count, reason = failing
        kopf.event(
            body,
            type="Normal",
            reason="Reconciled",
            message=f"reconciling again after {count} failed attempts over "
            f"{time.monotonic() - since:.0f} s (last error: {reason}); decisions were paused",
        )

    def forget(self, key: Key) -> None:
        """The ModelDeployment is gone."""
        self.failing.pop(key, None)
        self.resumed.discard(key)
