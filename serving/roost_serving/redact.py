"""Keep credentials in model and profile URIs out of metrics, logs, errors and status.

A URI may carry a secret two ways: userinfo (``https://user:password@host/...``) and query
parameters of signed URLs (``X-Amz-Signature``, ``X-Goog-Signature``, SAS ``sig``, ``token``,
...). :func:`redact_uri` keeps what tells an operator *which* file it is (scheme, host, path,
the query's parameter names) and replaces every secret-bearing part with ``***``; every query
value is masked, because signed-URL schemes differ in which parameters are secret.
:func:`scrub` does the same to free text (exception messages quote the URL they failed on).
Pure standard library, so the operator can use it for ``status`` and events too.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"


def redact_uri(uri: str) -> str:
    """``uri`` with userinfo and query values replaced by ``***``; plain paths unchanged."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return f"{uri.split('://', 1)[0]}://{MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{key}={MASK}" for key, _ in pairs) if pairs else MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(uri: str) -> list[str]:
    """The substrings of ``uri`` that must never be shown, longest first."""
    if "://" not in uri:
        return []
    try:
        parts = urlsplit(uri)
    except ValueError:
        return [uri]
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.append(userinfo)
        # Short pieces ("a", "1") would mask unrelated text; the whole userinfo still goes.
        found.extend(piece for piece in userinfo.split(":") if len(piece) >= 4)
    if parts.query:
        found.append(parts.query)
        found.extend(value for _, value in parse_qsl(parts.query) if len(value) >= 4)
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, *uris: str) -> str:
    """``text`` with every secret of ``uris`` (and the URIs themselves) masked."""
    for uri in uris:
        text = text.replace(uri, redact_uri(uri))
        for secret in _secrets(uri):
            text = text.replace(secret, MASK)
    return text
