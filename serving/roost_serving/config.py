"""Settings of one serving process (`roost serve`).

Every option is a command-line flag and a ``ROOST_*`` environment variable (the operator
configures pods through the environment); the names and defaults are the contract in
docs/architecture.md ("Serving process"). A flag given on the command line wins over the
environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roost_serving.limits import Limits

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("jsonl", "parquet")


class ConfigError(ValueError):
    """A setting has a value the server cannot run with; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """Everything one serving process needs to know; immutable once parsed."""

    model: str
    """URI or path of the ONNX model (``file://``, plain path, ``http(s)://``, ``s3://``, ``gs://``)."""
    profile: str | None = None
    """URI of the reference profile (profile.json); ``None`` turns drift tracking off."""
    name: str = "model"
    """Model name clients address in ``/v2/models/{name}``."""
    revision: str = ""
    """Revision label on every metric; also the model version the server reports."""
    sha256: str | None = None
    """Expected sha256 of the model file (hex); a mismatch refuses to start."""
    host: str = "127.0.0.1"
    """Address to listen on (pods: their pod IP)."""
    port: int = 8080
    """TCP port for the inference API and ``/metrics``."""
    grpc_port: int | None = None
    """TCP port of the Open Inference Protocol's gRPC service; ``None`` (unset or empty):
    no gRPC listener; 0: any free port."""
    max_batch_size: int = 32
    """Most rows coalesced into one onnxruntime run; 1 disables dynamic batching."""
    max_delay_ms: float = 2.0
    """Longest a request waits for others to share its batch, in milliseconds."""
    threads: int = 1
    """onnxruntime intra-op threads."""
    drift_window: int = 2000
    """Rows kept in the sliding window that drift statistics are computed over."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted; larger bodies get 413."""
    log_level: str = "info"
    """Log level of the server (critical, error, warning, info, debug, trace)."""
    drain_seconds: float = 0.0
    """After SIGTERM, keep serving this long with readiness false before closing the listener,
    so that load balancers stop sending traffic before connections are refused."""
    grace_seconds: float = 30.0
    """The pod's termination grace period: drain plus finishing in-flight requests plus exit
    always fit inside it (the operator sets it from terminationGracePeriodSeconds)."""
    max_elements: int = 16 * 1024 * 1024
    """Most tensor elements in one request (all inputs together); also the largest dimension."""
    max_response_bytes: int = 128 * 1024 * 1024
    """Largest response the server builds; larger ones are refused with 400 before encoding."""
    max_queue: int = 256
    """Most inference requests inside the server at once; beyond, 503 + Retry-After at once."""
    request_timeout: float = 30.0
    """Seconds a request may take inside the server (a client may ask for less); then 504."""
    max_connections: int = 1024
    """Most open client connections; beyond, new ones get 503 and are closed."""
    max_header_bytes: int = 32 * 1024
    """Largest request line plus headers; larger ones get 431 and the connection is closed."""
    header_timeout: float = 10.0
    """Seconds a client has to send a whole request head (slow-loris bound); then 408."""
    read_timeout: float = 30.0
    """Longest silence while a request body is being read; then the connection is closed."""
    fetch_timeout: float = 300.0
    """Bound on fetching the model and profile, all retries included; then exit 1 with the
    reason (within the operator's 5-minute startup probe)."""
    fetch_connect_timeout: float = 10.0
    """Seconds to establish one connection to the model's storage."""
    fetch_read_timeout: float = 30.0
    """Longest silence from the storage while reading, per attempt."""
    fetch_attempts: int = 4
    """Attempts per file on connection errors, timeouts and 5xx (backoff 0.5 s, doubling)."""
    log_uri: str | None = None
    """Inference log sink: a directory or fsspec URI (``s3://``, ``gs://``) for Parquet/JSON
    Lines files, or an ``http(s)://`` URL that receives CloudEvents batches; ``None``: off."""
    log_sample_rate: float = 1.0
    """Share of inference requests recorded in the inference log (0 to 1)."""
    log_format: str = "jsonl"
    """Format of inference log files: ``jsonl`` or ``parquet`` (needs pyarrow)."""
    log_redact: tuple[str, ...] = ()
    """Input tensors or profile feature columns whose values the log never holds."""
    log_buffer: int = 10000
    """Most inference log records waiting to be written; beyond, new ones are dropped."""
    log_rotate_seconds: float = 10.0
    """An inference log file is closed and written at least this often while records come."""
    log_rotate_bytes: int = 8 * 1024 * 1024
    """... and once its records reach about this many bytes (JSON-encoded size)."""
    label_horizon: float = 60.0
    """Seconds a label may take to arrive and still count for the accuracy gate: predictions
    enter the gate's cohort counters when they are this old (docs/analysis.md, "Accuracy")."""
    feedback_ttl: float = 3600.0
    """Seconds a prediction stays joinable with feedback (at least ``label_horizon``)."""
    feedback_max_ids: int = 100_000
    """Most request ids kept for the feedback join; the oldest is evicted first."""
    feedback_peers: tuple[str, ...] = ()
    """Base URLs (``http://ip:port``) of the other serving pods, where feedback for ids this
    pod never saw is forwarded; the operator's runtime ``peers`` section replaces it."""

    def __post_init__(self) -> None:
        """Reject values the server cannot run with, naming the option to fix."""
        if not self.model:
            raise ConfigError("--model / ROOST_MODEL is required (a path or URI of model.onnx)")
        if not self.name or "/" in self.name:
            raise ConfigError(f"--name must be a non-empty name without '/', got {self.name!r}")
        if self.sha256 is not None:
            digest = self.sha256.lower().removeprefix("sha256:")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError("--sha256 must be 64 hex characters (the model file's sha256)")
            object.__setattr__(self, "sha256", digest)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if self.grpc_port is not None:
            if not 0 <= self.grpc_port <= 65535:
                raise ConfigError(f"--grpc-port must be between 0 and 65535, got {self.grpc_port}")
            if self.grpc_port == self.port != 0:
                raise ConfigError(f"--grpc-port and --port are both {self.port}; give two ports")
        for field, minimum in (
            ("max_batch_size", 1),
            ("threads", 1),
            ("drift_window", 1),
            ("max_body_bytes", 1024),
            ("max_elements", 1),
            ("max_response_bytes", 1024),
            ("max_queue", 1),
            ("max_connections", 1),
            ("max_header_bytes", 1024),
            ("fetch_attempts", 1),
            ("feedback_max_ids", 1),
        ):
            if getattr(self, field) < minimum:
                flag = "--" + field.replace("_", "-")
                raise ConfigError(f"{flag} must be at least {minimum}, got {getattr(self, field)}")
        if self.max_delay_ms < 0 or self.drain_seconds < 0:
            raise ConfigError("--max-delay-ms and --drain-seconds must not be negative")
        for field in _POSITIVE_SECONDS:
            if not getattr(self, field) > 0:
                flag = "--" + field.replace("_", "-")
                raise ConfigError(f"{flag} must be a positive number of seconds")
        if self.drain_seconds + SHUTDOWN_MARGIN_S >= self.grace_seconds:
            raise ConfigError(
                f"--drain-seconds {self.drain_seconds:g} leaves no time to finish in-flight "
                f"requests inside --grace-seconds {self.grace_seconds:g} (keep it below "
                f"{self.grace_seconds - SHUTDOWN_MARGIN_S:g})"
            )
        if self.feedback_ttl < self.label_horizon:
            raise ConfigError(
                f"--feedback-ttl {self.feedback_ttl:g} must be at least --label-horizon "
                f"{self.label_horizon:g} (a label must be joinable for the whole horizon)"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        self._check_log()

    def _check_log(self) -> None:
        if not 0.0 <= self.log_sample_rate <= 1.0:
            raise ConfigError(
                f"--log-sample-rate must be between 0 and 1, got {self.log_sample_rate:g}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.log_buffer < 1 or self.log_rotate_bytes < 1024:
            raise ConfigError("--log-buffer must be at least 1 and --log-rotate-bytes 1024")
        if not self.log_rotate_seconds > 0:
            raise ConfigError("--log-rotate-seconds must be a positive number of seconds")

    def limits(self) -> Limits:
        """The per-request limits every front end checks."""
        return Limits(
            max_elements=self.max_elements,
            max_response_bytes=self.max_response_bytes,
            max_queue=self.max_queue,
            request_timeout_s=self.request_timeout,
        )

    @property
    def shutdown_budget(self) -> float:
        """Seconds in-flight requests get after the drain: the grace period's remainder."""
        return self.grace_seconds - self.drain_seconds - SHUTDOWN_MARGIN_S


SHUTDOWN_MARGIN_S = 2.0
"""Kept free at the end of the grace period for the lifespan shutdown and process exit."""

_POSITIVE_SECONDS = (
    "grace_seconds",
    "request_timeout",
    "header_timeout",
    "read_timeout",
    "fetch_timeout",
    "fetch_connect_timeout",
    "fetch_read_timeout",
    "label_horizon",
    "feedback_ttl",
)


def _optional_str(value: str) -> str | None:
    return value or None


def _optional_int(value: str) -> int | None:
    return int(value) if value.strip() else None


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _urls(value: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in value.split(",") if u.strip())


# field -> (parser of the env/flag text, help). The flag is --field-with-dashes and the
# environment variable ROOST_FIELD_UPPERCASE, so the two can never drift apart.
_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "model": (str, "path or URI of the ONNX model"),
    "profile": (_optional_str, "path or URI of the reference profile (drift off without)"),
    "name": (str, "model name served under /v2/models/NAME"),
    "revision": (str, "revision label on metrics, reported as the model version"),
    "sha256": (_optional_str, "expected sha256 of the model file; refuse to start otherwise"),
    "host": (str, "address to listen on"),
    "port": (int, "port to listen on"),
    "grpc_port": (_optional_int, "port of the gRPC inference service (off when unset)"),
    "max_batch_size": (int, "most rows per onnxruntime run (1 disables batching)"),
    "max_delay_ms": (float, "longest wait for a batch to fill, in milliseconds"),
    "threads": (int, "onnxruntime intra-op threads"),
    "drift_window": (int, "rows in the drift sliding window"),
    "max_body_bytes": (int, "largest request body accepted (413 above)"),
    "log_level": (str.lower, "log level: " + ", ".join(LOG_LEVELS)),
    "drain_seconds": (float, "after SIGTERM, serve this long with readiness false"),
    "grace_seconds": (float, "the pod's termination grace period; shutdown fits inside it"),
    "max_elements": (int, "most tensor elements per request"),
    "max_response_bytes": (int, "largest response built (400 above)"),
    "max_queue": (int, "most inference requests inside the server (503 above)"),
    "request_timeout": (float, "seconds a request may take inside the server (504 after)"),
    "max_connections": (int, "most open client connections (503 above)"),
    "max_header_bytes": (int, "largest request head (431 above)"),
    "header_timeout": (float, "seconds to send a whole request head (408 after)"),
    "read_timeout": (float, "longest silence while reading a request body"),
    "fetch_timeout": (float, "bound on fetching model and profile, retries included"),
    "fetch_connect_timeout": (float, "connect timeout per fetch attempt"),
    "fetch_read_timeout": (float, "read timeout (silence) per fetch attempt"),
    "fetch_attempts": (int, "attempts per file on transient fetch errors"),
    "log_uri": (_optional_str, "inference log: directory, fsspec URI or CloudEvents URL"),
    "log_sample_rate": (float, "share of requests written to the inference log"),
    "log_format": (str.lower, "inference log file format: " + ", ".join(LOG_FORMATS)),
    "log_redact": (_names, "comma-separated inputs / feature columns kept out of the log"),
    "log_buffer": (int, "most log records waiting to be written (dropped above)"),
    "log_rotate_seconds": (float, "longest a log file stays open while records come"),
    "log_rotate_bytes": (int, "log file size (JSON bytes) that closes it"),
    "label_horizon": (float, "seconds a label may take and still count for the accuracy gate"),
    "feedback_ttl": (float, "seconds a prediction stays joinable with feedback"),
    "feedback_max_ids": (int, "most request ids kept for the feedback join"),
    "feedback_peers": (_urls, "comma-separated http://ip:port of peer pods for feedback"),
}


def env_var(field: str) -> str:
    """The environment variable that sets ``field``: ``max_batch_size`` -> ROOST_MAX_BATCH_SIZE."""
    return "ROOST_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; unset flags stay ``None`` so the environment can fill them."""
    for field, (convert, text) in _OPTIONS.items():
        default = Settings.__dataclass_fields__[field].default
        shown = "required" if default is dataclasses.MISSING else repr(default)
        parser.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            type=convert,
            default=None,
            help=f"{text} (env {env_var(field)}; default {shown})",
        )


def settings_from(args: argparse.Namespace | None, environ: Mapping[str, str]) -> Settings:
    """Build settings from parsed flags, then the environment, then the defaults."""
    values: dict[str, Any] = {}
    for field, (convert, _) in _OPTIONS.items():
        given = getattr(args, field, None) if args is not None else None
        if given is not None:
            values[field] = given
            continue
        raw = environ.get(env_var(field))
        if raw is None or (raw == "" and field == "model"):
            continue
        try:
            values[field] = convert(raw)
        except ValueError:
            raise ConfigError(f"{env_var(field)}={raw!r} is not a valid value") from None
    if "model" not in values:
        raise ConfigError("--model / ROOST_MODEL is required (a path or URI of model.onnx)")
    return Settings(**values)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Parse ``roost serve`` arguments (without the subcommand) into settings."""
    parser = argparse.ArgumentParser(prog="roost serve")
    add_arguments(parser)
    return settings_from(parser.parse_args(list(argv)), os.environ if environ is None else environ)
