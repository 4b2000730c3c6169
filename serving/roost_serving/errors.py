"""The errors a client can see: each carries the HTTP status it is answered with.

Every transport answers them the same way: ``{"error": message}`` (the Open Inference
Protocol error body) with :attr:`RoostError.status_code`.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "NotFoundError",
    "NotReadyError",
    "PayloadTooLargeError",
    "RoostError",
]


class RoostError(Exception):
    """Base of every error a client sees; the HTTP layer answers ``{"error": message}``."""

    status_code = 500

    def __init__(self, message: str) -> None:
        """Keep the message a client will read; it should say what is wrong and how to fix it."""
        super().__init__(message)
        self.message = message


class BadRequestError(RoostError):
    """The request does not fit the protocol or the model's signature."""

    status_code = 400


class NotFoundError(RoostError):
    """Unknown model name or version."""

    status_code = 404


class PayloadTooLargeError(RoostError):
    """The body is larger than the configured limit."""

    status_code = 413


class NotReadyError(RoostError):
    """The model is not loaded yet, or the server is shutting down."""

    status_code = 503
