"""Ground-truth feedback: ``POST /v2/models/{name}/feedback``, joined here or at a peer pod.

Body (JSON), one item or a batch::

    {"id": "<request id>", "truth": 1}
    {"feedback": [{"id": "a1", "truth": "cat"}, {"id": "b2", "truth": [0.5, 1.25]}]}

``truth`` is the class label (classifiers) or the target value (regressors), or a list with
one value per row for a request of several rows. The answer counts every outcome::

    {"model_name": "wine", "items": 2, "outcomes": {"joined": 1, "unknown": 1, ...}}

Behind a Service the feedback lands on a random pod, not necessarily the one that answered.
Items whose id this pod has never seen are forwarded, in one request per peer, to the other
serving pods of the ModelDeployment (the runtime config's ``peers`` section, or
``--feedback-peers``); each peer answers per item, and the best outcome wins (a pod that
joined it beats pods that never saw it). A forwarded request carries
``roost-feedback-forwarded: 1`` and is never forwarded again, so feedback cannot loop; fan-out
is bounded by :data:`MAX_PEERS` and each peer by :data:`FORWARD_TIMEOUT_S` (a peer that does
not answer in time leaves its items ``unknown``). Unknown, duplicate, expired, late and
invalid items are counted and reported, never errors; a malformed body is a 400 with the OIP
error body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from roost_serving.errors import BadRequestError
from roost_serving.quality import OUTCOMES, Outcome, PredictionTable

log = logging.getLogger("roost.feedback")

FORWARDED_HEADER = b"roost-feedback-forwarded"
MAX_ITEMS = 10_000
"""Most feedback items in one request (the body limit, ``--max-body-bytes``, also applies)."""
MAX_ID_CHARS = 256
MAX_PEERS = 32
"""Most peers one request is forwarded to (a ModelDeployment rarely has more pods)."""
FORWARD_TIMEOUT_S = 2.0
"""Per peer: connect, send and answer; a slow peer never holds the answer up for longer."""

# When peers disagree, the outcome that says most wins: a pod that joined the item beats one
# that says it is a duplicate, which beats "expired" and "never seen here".
_RANK: dict[Outcome, int] = {
    "joined": 5, "late": 5, "invalid": 4, "duplicate": 3, "expired": 2, "unknown": 0,
}  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One feedback item: a request id and its ground truth."""

    id: str
    truth: Any


def parse_feedback(body: bytes) -> list[Item]:
    """Parse a feedback body; raises `BadRequestError` saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"feedback body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError('feedback body must be an object: {"id": ..., "truth": ...} or '
                              '{"feedback": [...]}')  # fmt: skip
    raw = doc.get("feedback", [doc])
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("feedback must be a non-empty list of {id, truth} items")
    if len(raw) > MAX_ITEMS:
        raise BadRequestError(
            f"{len(raw)} feedback items in one request; at most {MAX_ITEMS} are allowed"
        )
    items = []
    for i, entry in enumerate(raw):
        where = f"feedback[{i}]"
        if not isinstance(entry, dict):
            raise BadRequestError(f"{where} must be an object with id and truth")
        rid = entry.get("id")
        if not isinstance(rid, str) or not rid or len(rid) > MAX_ID_CHARS:
            raise BadRequestError(f"{where}.id must be a request id of 1 to {MAX_ID_CHARS} chars")
        if "truth" not in entry or entry["truth"] is None:
            raise BadRequestError(f"{where}.truth is missing (a label, a target or a list)")
        items.append(Item(rid, entry["truth"]))
    return items


def count(outcomes: Iterable[str]) -> dict[str, int]:
    """Counts per outcome, every outcome present (0 when none)."""
    out = dict.fromkeys((*OUTCOMES, "forwarded"), 0)
    for o in outcomes:
        out[o] += 1
    return out


Peers = Callable[[], Sequence[str]]
"""The base URLs (``http://ip:port``) of the other serving pods, read at each request."""


def peer_urls(section: Mapping[str, Any] | None) -> list[str] | None:
    """The pods' URLs in the runtime config's ``peers`` section
    (``{"pods": [{"pod", "revision", "role", "url"}]}``); None without a section."""
    if section is None:
        return None
    pods = section.get("pods")
    if not isinstance(pods, list):
        log.warning("runtime section peers has no pods list; feedback is not forwarded")
        return []
    return [p["url"] for p in pods if isinstance(p, Mapping) and isinstance(p.get("url"), str)]


TruthHook = Callable[[str, Any, Outcome], None]
"""Called with (request id, ground truth, outcome) once per feedback item, on one pod only."""


class FeedbackService:
    """Joins feedback here and forwards what this pod never saw to its peers."""

    def __init__(self, table: PredictionTable, model: str, peers: Peers, own_url: str) -> None:
        """``own_url`` (this pod's ``http://host:port``) is left out of the peers."""
        self.table = table
        self.model = model
        self.peers = peers
        self.own = own_url.rstrip("/")
        self.on_truth: list[TruthHook] = []
        """Hooks that hear of every item once, across all pods: the pod that joined it calls
        them, and the receiving pod for items nobody joined (the inference log appends a
        ``feedback`` record here, so the log joins offline on the id)."""

    async def handle(self, body: bytes, forwarded: bool) -> bytes:
        """Answer one feedback request (body in, JSON answer out)."""
        items = parse_feedback(body)
        results: list[Outcome] = []
        for item in items:
            # Ids this pod never saw are left for the peers (a join here is exact and final).
            results.append(self.table.join(item.id, item.truth))
        missing = [i for i, r in enumerate(results) if r == "unknown"]
        forwarded_to = 0
        joined_elsewhere: set[int] = set()
        if missing and not forwarded:
            peer_results, forwarded_to = await self._forward([items[i] for i in missing])
            for i, outcome in zip(missing, peer_results, strict=True):
                results[i] = outcome
                if outcome in ("joined", "late"):
                    joined_elsewhere.add(i)  # that peer told its own hooks
        for i, (item, outcome) in enumerate(zip(items, results, strict=True)):
            if i in joined_elsewhere or (forwarded and outcome not in ("joined", "late")):
                continue
            for hook in self.on_truth:
                try:
                    hook(item.id, item.truth, outcome)
                except Exception:  # a consumer's bug must not fail the feedback request
                    log.exception("feedback hook failed (request id %s)", item.id)
        metrics = self.table.metrics
        for outcome in results:
            metrics.feedback.labels(*metrics.label_values, outcome).inc()
        answer: dict[str, Any] = {
            "model_name": self.model,
            "items": len(items),
            "outcomes": count(results),
        }
        if forwarded_to:
            answer["outcomes"]["forwarded"] = sum(1 for i in missing if results[i] != "unknown")
            metrics.feedback.labels(*metrics.label_values, "forwarded").inc(
                answer["outcomes"]["forwarded"]
            )
            answer["peers"] = forwarded_to
        if forwarded:
            answer["results"] = results  # the asking pod merges per item
        return orjson.dumps(answer)

    async def _forward(self, items: list[Item]) -> tuple[list[Outcome], int]:
        urls = [u.rstrip("/") for u in self.peers() if u.rstrip("/") != self.own][:MAX_PEERS]
        best: list[Outcome] = ["unknown"] * len(items)
        if not urls:
            return best, 0
        body = orjson.dumps({"feedback": [{"id": i.id, "truth": i.truth} for i in items]})
        path = f"/v2/models/{self.model}/feedback"
        answers = await asyncio.gather(*(_post(u, path, body) for u in urls))
        for url, answer in zip(urls, answers, strict=True):
            results = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(results, list) or len(results) != len(items):
                if answer is not None:
                    log.warning("peer %s answered feedback without per-item results", url)
                continue
            for i, r in enumerate(results):
                if r in _RANK and _RANK[r] > _RANK[best[i]]:
                    best[i] = r
        return best, len(urls)


async def _post(base: str, path: str, body: bytes) -> Any:
    """POST ``body`` to a peer; its decoded JSON answer, or None (logged) on any failure."""
    parts = urlsplit(base)
    if parts.scheme != "http" or not parts.hostname:
        log.warning("peer %r is not an http://host:port URL; not forwarded", base)
        return None
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{FORWARDED_HEADER.decode()}: 1\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            writer.write(head + body)
            await writer.drain()
            raw = await reader.read(-1)
    except (OSError, TimeoutError) as exc:
        log.warning("forwarding feedback to %s failed: %s", base, exc or type(exc).__name__)
        return None
    finally:
        if writer is not None:
            writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    if status_line.split(b" ")[1:2] != [b"200"]:
        log.warning("peer %s answered feedback with %r", base, status_line[:80])
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        # uvicorn answers with Content-Length; a chunked answer would not parse here.
        log.warning("peer %s answered feedback with a body that is not JSON", base)
        return None
