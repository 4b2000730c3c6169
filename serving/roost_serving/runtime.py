"""Runtime configuration a serving pod learns while it runs (``PUT /v2/roost/runtime``).

A pod-template change restarts pods, so what a running pod must learn during a rollout (where
its peers are, whether to shadow requests to a canary, the stable's prediction bin edges) is
pushed by the operator instead: ``PUT /v2/roost/runtime`` with ``Authorization: Bearer
<token>`` and ``{"version": "<hash>", "sections": {"<name>": {...}}}``. The token comes from
``ROOST_RUNTIME_TOKEN`` (the operator sets it from a per-ModelDeployment Secret); without one
the endpoint refuses every request. ``GET /v2/roost/runtime`` answers the document held, and
``roost_runtime_config_info{version}`` exposes its version, so the operator re-pushes to a pod
that restarted and forgot (docs/architecture.md, "Runtime configuration").

Features read their section through :class:`RuntimeConfig`: ``section(name)`` now, and
``subscribe(name, callback)`` to hear of every change of it.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Gauge

from roost_serving.errors import BadRequestError, PayloadTooLargeError, RoostError

log = logging.getLogger("roost.runtime")

TOKEN_ENV = "ROOST_RUNTIME_TOKEN"
PATH = "/v2/roost/runtime"
MAX_DOCUMENT_BYTES = 1024 * 1024
"""Largest runtime document accepted: peers of a few thousand pods fit many times over."""
MAX_VERSION_LENGTH = 128

Section = dict[str, Any]
Callback = Callable[[Section | None], None]


class UnauthorizedError(RoostError):
    """No or the wrong bearer token (401)."""

    status_code = 401


class ForbiddenError(RoostError):
    """Runtime configuration is off: the pod has no token to check against (403)."""

    status_code = 403


class RuntimeConfig:
    """The runtime document a pod holds, its version metric, and who listens to which section."""

    def __init__(
        self,
        registry: CollectorRegistry,
        model: str,
        revision: str,
        token: str | None = None,
    ) -> None:
        """``token`` None reads ``ROOST_RUNTIME_TOKEN``; empty or unset turns the endpoint off."""
        self.token = (os.environ.get(TOKEN_ENV) if token is None else token) or None
        self.version: str | None = None
        self._sections: dict[str, Section] = {}
        self._subscribers: dict[str, list[Callback]] = {}
        self._labels = (model, revision)
        self._info = Gauge(
            "roost_runtime_config_info",
            "The runtime configuration version this pod holds (always 1; absent before the "
            "first push).",
            ("model", "revision", "version"),
            registry=registry,
        )

    def section(self, name: str) -> Section | None:
        """The section ``name`` of the document held, or None."""
        return self._sections.get(name)

    def subscribe(self, name: str, callback: Callback) -> None:
        """Call ``callback(section or None)`` now and whenever section ``name`` changes."""
        self._subscribers.setdefault(name, []).append(callback)
        callback(self._sections.get(name))

    def document(self) -> dict[str, Any]:
        """What ``GET /v2/roost/runtime`` answers."""
        return {"version": self.version, "sections": self._sections}

    def authorize(self, header: str | None) -> None:
        """Raise unless ``header`` is ``Bearer <the pod's token>`` (compared in constant time)."""
        if self.token is None:
            raise ForbiddenError(
                f"runtime configuration is off: {TOKEN_ENV} is not set on this server"
            )
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise UnauthorizedError("runtime configuration needs Authorization: Bearer <token>")

    def apply(self, document: Any) -> None:
        """Replace the document held with ``document`` (checked first; nothing changes on error).

        Subscribers of each section that changed (added, edited or removed) are called with the
        new section; one that raises is logged and does not stop the others.
        """
        version, sections = parse_document(document)
        old, self._sections = self._sections, sections
        if self.version != version:
            if self.version is not None:
                self._info.remove(*self._labels, self.version)
            self._info.labels(*self._labels, version).set(1)
            self.version = version
        for name in sorted(set(old) | set(sections)):
            if old.get(name) != sections.get(name):
                for callback in self._subscribers.get(name, []):
                    try:
                        callback(sections.get(name))
                    except Exception:  # one feature's bug must not undo another's section
                        log.exception("runtime section %r: subscriber failed", name)
        log.info("runtime configuration %s applied (sections: %s)", version, ",".join(sections))


def parse_document(document: Any) -> tuple[str, dict[str, Section]]:
    """``(version, sections)`` of a runtime document, or :class:`BadRequestError` saying why."""
    if not isinstance(document, Mapping):
        raise BadRequestError('runtime document must be an object {"version", "sections"}')
    version = document.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_LENGTH:
        raise BadRequestError(
            f"runtime document: version must be a string of 1 to {MAX_VERSION_LENGTH} characters"
        )
    sections = document.get("sections", {})
    if not isinstance(sections, Mapping):
        raise BadRequestError("runtime document: sections must be an object of objects")
    out: dict[str, Section] = {}
    for name, value in sections.items():
        if not isinstance(value, Mapping):
            raise BadRequestError(f"runtime document: section {name!r} must be an object")
        out[str(name)] = dict(value)
    return version, out


def install_routes(app: FastAPI, config: RuntimeConfig) -> None:
    """``GET`` and ``PUT /v2/roost/runtime`` on ``app`` (errors: the app's OIP error body)."""

    @app.get(PATH, include_in_schema=False)
    async def get_runtime(request: Request) -> Response:
        config.authorize(request.headers.get("authorization"))
        return Response(orjson.dumps(config.document()), media_type="application/json")

    @app.put(PATH, include_in_schema=False)
    async def put_runtime(request: Request) -> Response:
        config.authorize(request.headers.get("authorization"))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise PayloadTooLargeError(
                    f"runtime document exceeds the limit of {MAX_DOCUMENT_BYTES} bytes"
                )
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(f"runtime document is not valid JSON: {exc}") from None
        config.apply(document)
        return Response(orjson.dumps({"version": config.version}), media_type="application/json")
