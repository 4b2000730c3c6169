"""The ground-truth side of a data plane: recent predictions, feedback, peers and the log.

:class:`GroundTruth` keeps each client prediction for the feedback join
(:class:`roost_serving.quality.PredictionTable`), answers ``POST .../feedback``
(:class:`roost_serving.feedback.FeedbackService`), forwards ids it never saw to the peer pods
the operator pushes in the runtime ``peers`` section (``--feedback-peers`` before a push), and
appends every feedback item once, across pods, to the inference log as a ``feedback`` record
under the answer's id, so the log joins offline.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from roost_serving.config import Settings
from roost_serving.feedback import FeedbackService, peer_urls
from roost_serving.inference_log import InferenceLog, feedback_record
from roost_serving.model import LoadedModel
from roost_serving.profile import Profile
from roost_serving.quality import PredictionTable, QualityMetrics
from roost_serving.requestid import Inference
from roost_serving.runtime import RuntimeConfig


class GroundTruth:
    """Predictions kept for labels, the feedback endpoint and where its items go."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, runtime: RuntimeConfig
    ) -> None:
        self.settings = settings
        self.table = PredictionTable(
            QualityMetrics(registry, settings.name, settings.revision),
            horizon=settings.label_horizon,
            ttl=settings.feedback_ttl,
            max_ids=settings.feedback_max_ids,
        )
        """Recent predictions by request id, for the feedback join (roost_serving.quality)."""
        self.peer_urls: list[str] = list(settings.feedback_peers)
        """Base URLs of the other serving pods, where feedback for unknown ids is forwarded:
        the runtime config's ``peers`` section once pushed, else ``--feedback-peers``."""
        self.feedback = FeedbackService(
            self.table,
            settings.name,
            lambda: self.peer_urls,
            f"http://{settings.host}:{settings.port}",
        )
        runtime.subscribe("peers", self._peers_changed)
        self.prediction_output: str | None = None
        """The output whose values feedback is joined with (the profile's, else the first)."""
        self.log: InferenceLog | None = None

    def model_loaded(
        self, model: LoadedModel, profile: Profile | None, log: InferenceLog | None
    ) -> None:
        """Join on the profile's prediction output (else the model's first); log to `log`."""
        if profile is not None and profile.prediction is not None:
            self.prediction_output = profile.prediction.output
        else:
            self.prediction_output = model.output_names[0] if model.output_names else None
        if log is not None and self.log is None:
            self.log = log
            self.feedback.on_truth.append(self._log_truth)

    def remember(self, done: Inference) -> None:
        """Keep a client request's prediction for the feedback join (an inference observer)."""
        name = self.prediction_output
        if done.source == "client" and name is not None and name in done.outputs:
            self.table.record(done.request_id, done.outputs[name])

    def _peers_changed(self, section: dict[str, Any] | None) -> None:
        pushed = peer_urls(section)
        self.peer_urls = list(self.settings.feedback_peers) if pushed is None else pushed

    def _log_truth(self, request_id: str, truth: Any, outcome: str) -> None:
        if self.log is not None:
            record = feedback_record(
                request_id,
                truth,
                model=self.settings.name,
                revision=self.settings.revision,
                pod=self.log.config.pod,
                outcome=outcome,
            )
            self.log.append(record)
