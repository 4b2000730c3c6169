"""Fetching the model and profile: bounded in time, retried with backoff, honest about why not.

``http(s)://`` is read with the standard library's ``http.client``, so a connect timeout and a
read timeout (longest silence between bytes) apply to every attempt and the error says what
happened: refused, timed out, HTTP 404, ... ``s3://`` goes through s3fs with botocore's own
connect/read timeouts; other schemes (``file``, plain paths, ``gs``, ``memory``) through fsspec.
Transient failures (refused, reset, timeouts, HTTP 5xx and 429) are retried with exponential
backoff; a missing file or a 403 is not. :func:`fetch_within` bounds the whole fetch, retries
included, on a daemon thread: a storage that trickles bytes forever cannot keep a pod
unready forever. Every message passes through :func:`~roost_serving.redact.scrub`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import fsspec

from roost_serving.errors import RoostError
from roost_serving.redact import redact_uri, scrub

log = logging.getLogger("roost.fetch")

T = TypeVar("T")

_CHUNK = 1 << 20
_MAX_REDIRECTS = 5
_EXTRAS = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}


class FetchError(RoostError):
    """A file could not be fetched; ``transient`` ones are worth another attempt."""

    def __init__(self, message: str, transient: bool = False) -> None:
        """``message`` says why (already free of credentials)."""
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class FetchPolicy:
    """Timeouts and retries for one file."""

    connect_timeout: float = 10.0
    """Seconds to establish a connection."""
    read_timeout: float = 30.0
    """Longest silence while waiting for the answer or the next bytes."""
    attempts: int = 4
    """Attempts in all; transient failures only are retried."""
    backoff: float = 0.5
    """Seconds before the second attempt; doubles each time, at most 10 s."""


def fetch_bytes(uri: str, policy: FetchPolicy, what: str = "file") -> bytes:
    """Read a whole file, retrying transient failures; raise :class:`FetchError` saying why."""
    shown = redact_uri(uri)
    for attempt in range(1, policy.attempts + 1):
        try:
            return _read_once(uri, policy)
        except FetchError as exc:
            if not exc.transient or attempt == policy.attempts:
                tried = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise FetchError(f"cannot read {what} {shown}: {exc.message}{tried}") from None
            delay = min(policy.backoff * 2 ** (attempt - 1), 10.0)
            log.warning(
                "fetching %s %s failed (attempt %d of %d): %s; retrying in %.1f s",
                what,
                shown,
                attempt,
                policy.attempts,
                exc.message,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_once(uri: str, policy: FetchPolicy) -> bytes:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    try:
        if scheme in ("http", "https"):
            return _read_http(uri, policy)
        return _read_fsspec(uri, scheme, policy)
    except FetchError:
        raise
    except Exception as exc:  # every backend has its own types; classify by the chain
        raise _classify(exc, uri, policy) from None


def _read_fsspec(uri: str, scheme: str, policy: FetchPolicy) -> bytes:
    options: dict[str, object] = {}
    if scheme == "s3":
        options["config_kwargs"] = {
            "connect_timeout": policy.connect_timeout,
            "read_timeout": policy.read_timeout,
            "retries": {"max_attempts": 1},  # retried here, with the same backoff as http
        }
    with fsspec.open(uri, "rb", **options) as handle:
        data: bytes = handle.read()
    return data


def _read_http(uri: str, policy: FetchPolicy) -> bytes:
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(uri)
        host = parts.hostname or ""
        if parts.scheme == "https":
            tls = ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port, timeout=policy.connect_timeout, context=tls
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=policy.connect_timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(policy.read_timeout)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            headers = {"Accept-Encoding": "identity"}
            if parts.username is not None:
                headers["Authorization"] = _basic_auth(parts.username, parts.password or "")
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                uri = urljoin(uri, response.getheader("Location", ""))
                continue
            if response.status != 200:
                raise _http_status(response.status, response.reason)
            chunks: list[bytes] = []
            while chunk := response.read(_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            conn.close()
    raise FetchError(f"more than {_MAX_REDIRECTS} redirects")


def _basic_auth(user: str, password: str) -> str:
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return f"Basic {token}"


def _http_status(status: int, reason: str) -> FetchError:
    if status == 404:
        return FetchError("not found (HTTP 404)")
    transient = status >= 500 or status in (408, 429)
    return FetchError(f"HTTP {status} {reason}".strip(), transient=transient)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _classify(exc: BaseException, uri: str, policy: FetchPolicy) -> FetchError:
    """Turn a backend's exception into a message an operator can act on."""
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, ConnectionRefusedError):
            return FetchError(f"connection refused{_where(uri)}", transient=True)
        if isinstance(link, TimeoutError | socket.timeout):
            return FetchError(
                f"timed out{_where(uri)} (connect {policy.connect_timeout:g} s, "
                f"read {policy.read_timeout:g} s without data)",
                transient=True,
            )
        if isinstance(link, socket.gaierror):
            return FetchError(f"cannot resolve host{_where(uri)}: {link}", transient=True)
        if isinstance(link, ConnectionError | http.client.RemoteDisconnected):
            detail = scrub(str(link) or type(link).__name__, uri)
            return FetchError(f"connection failed{_where(uri)}: {detail}", transient=True)
        if isinstance(link, ImportError):
            extra = _EXTRAS.get(uri.split("://", 1)[0])
            hint = f"; install roost[{extra}]" if extra else ""
            return FetchError(f"{scrub(str(link), uri)}{hint}")
    if isinstance(exc, FileNotFoundError) and len(chain) == 1:
        return FetchError("no such file")
    if isinstance(exc, IsADirectoryError | PermissionError):
        return FetchError(type(exc).__name__)
    return FetchError(f"{type(exc).__name__}: {scrub(str(exc), uri)}")


def _where(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        return f" by {parts.hostname}:{parts.port}" if parts.hostname and parts.port else ""
    except ValueError:
        return ""


async def fetch_within(seconds: float, what: str, work: Callable[[], T]) -> T:
    """Run blocking ``work`` on a daemon thread; :class:`FetchError` if it takes longer.

    A daemon thread (not the default executor) because a fetch stuck in a read must not
    keep the process from exiting once we have given up on it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: object) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            future.set_exception(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result: object = work()
            ok = True
        except BaseException as exc:  # delivered to the awaiting task
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, ok, result)

    threading.Thread(target=run, name="roost-fetch", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(future), seconds)
    except TimeoutError:
        raise FetchError(
            f"fetching the {what} did not finish within --fetch-timeout {seconds:g} s"
        ) from None
