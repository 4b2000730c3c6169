"""Property tests against a real ``roost serve`` process: whatever a client sends, no 5xx.

Requests are generated, not listed: shapes (up to 70 dimensions, negative, zero-size with
dimensions up to 2**63-1), every datatype with matching or mismatching data, JSON and binary
encodings per input, ``Inference-Header-Content-Length`` values (thousands of digits too),
client deadline headers, and output lists with repeats, unknown names and binary flags. Every
answer must be 200 or a 4xx with the Open Inference Protocol error body. The status histogram
is printed at the end of the module (the counts the issue asks for).
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roost_serving.protocol import DTYPES

ServeProcess = Any
STATUSES: Counter[int] = Counter()
# Headers httpx itself sets from the request; a conflicting copy would be the client's fault.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"}
DATATYPES = list(DTYPES)


@pytest.fixture(scope="module", autouse=True)
def _histogram(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"fuzz: {sum(STATUSES.values())} requests, statuses {dict(sorted(STATUSES.items()))}"
    if reporter is not None:
        reporter.write_line(line)


@pytest.fixture(scope="module")
def client(identity_process: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=identity_process.url, timeout=20) as session:
        yield session


def _values(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=6)
    if datatype.startswith("FP"):
        return st.floats(width=16 if datatype == "FP16" else 32, allow_nan=False)
    info = np.iinfo(np.dtype(datatype.lower()))
    return st.integers(min_value=int(info.min), max_value=int(info.max))


junk = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4)
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)
dims = st.one_of(
    st.integers(min_value=0, max_value=4),
    st.sampled_from([-1, 2**31, 2**62, 2**63 - 1, 2**64]),
)
odd_shapes = st.one_of(
    st.lists(dims, max_size=4),
    st.lists(st.integers(0, 1), min_size=60, max_size=70),
    st.lists(st.sampled_from([0, 2**62]), min_size=1, max_size=3),
)


def _binary(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    dtype = np.dtype(np.bool_ if datatype == "BOOL" else datatype.lower().replace("fp", "float"))
    return np.array(values, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()


@st.composite
def tensors(draw: st.DrawFn, name: str, rows: int, mutate: bool) -> tuple[dict[str, Any], bytes]:
    """One input tensor: right for the identity model, or (``mutate``) wrong in some ways."""
    datatype = name.removeprefix("in_")
    if mutate and draw(st.booleans()):
        datatype = draw(st.sampled_from([*DATATYPES, "FP8", ""]))
    shape: list[int] = draw(odd_shapes) if mutate and draw(st.booleans()) else [rows, 2]
    count = int(np.prod(shape)) if all(0 <= d < 1000 for d in shape) and len(shape) < 10 else 4
    strategy = _values(datatype) if datatype in DTYPES else junk
    values = draw(st.lists(strategy, min_size=min(count, 8), max_size=min(count, 8)))
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if datatype in DTYPES and draw(st.booleans()):
        try:
            chunk = _binary(datatype, values)
        except (OverflowError, ValueError):
            chunk = b"\x00" * 8
        chunk = draw(st.binary(max_size=12)) if mutate and draw(st.booleans()) else chunk
        entry["parameters"] = {"binary_data_size": len(chunk)}
        return entry, chunk
    entry["data"] = draw(junk) if mutate and draw(st.booleans()) else values
    return entry, b""


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    rows = draw(st.integers(0, 3))
    names = [f"in_{d}" for d in DATATYPES]
    if draw(st.integers(0, 4)) == 0:
        names = draw(st.lists(st.sampled_from([*names, "nope"]), max_size=14))
    # At most one tensor is broken, so valid requests (200) are generated too.
    broken = draw(st.integers(-len(names) - 1, len(names)))
    drawn = [draw(tensors(name, rows, i == broken)) for i, name in enumerate(names)]
    doc: dict[str, Any] = {"inputs": [entry for entry, _ in drawn]}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["out_FP32", "out_BYTES", "out_INT64", "zz"])},
                    optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans()})},
                ),
                max_size=4,
            )
        )
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        doc["id"] = draw(st.one_of(st.text(max_size=3), st.integers()))
    header = json.dumps(doc).encode()  # the stdlib encoder: integers beyond 64 bits too
    binary = b"".join(chunk for _, chunk in drawn)
    headers: dict[str, str] = {}
    if binary or draw(st.integers(0, 5)) == 0:
        headers["Inference-Header-Content-Length"] = draw(
            st.one_of(
                st.just(str(len(header))),
                st.sampled_from(["", "-1", "0x10", "9" * 5000, str(2**64), "+12"]),
                st.integers(0, len(header) + len(binary) + 4).map(str),
            )
        )
    if draw(st.integers(0, 5)) == 0:
        headers["Roost-Request-Timeout-Ms"] = draw(st.sampled_from(["1", "0", "-5", "x", "9" * 40]))
    return header + binary, headers


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_generated_requests_never_get_a_5xx(
    client: httpx.Client, request: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = request
    response = client.post("/v2/models/id/infer", content=body, headers=headers)
    STATUSES[response.status_code] += 1
    # 504 is the client's own 1 ms deadline passing: an answer, not a server fault.
    assert response.status_code < 500 or response.status_code == 504, response.text[:300]
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=documents, trailing=st.binary(max_size=16), header=st.booleans())
def test_arbitrary_documents_never_get_a_5xx(
    client: httpx.Client, body: Any, trailing: bytes, header: bool
) -> None:
    raw = json.dumps(body).encode()
    headers = {"Inference-Header-Content-Length": str(len(raw))} if header else {}
    response = client.post(
        "/v2/models/id/infer", content=raw + (trailing if header else b""), headers=headers
    )
    STATUSES[response.status_code] += 1
    assert response.status_code == 400, response.text
    assert response.json()["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
    path=st.sampled_from(
        ["/v2", "/v2/health/ready", "/v2/models/id", "/v2/models/id/infer", "/metrics", "/x%00"]
    ),
    name=st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z").filter(
        lambda n: n.lower() not in FRAMING
    ),
    # Printable ASCII without surrounding blanks: what httpx itself agrees to send.
    value=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip),
)
def test_arbitrary_methods_and_headers_never_get_a_5xx(
    client: httpx.Client, method: str, path: str, name: str, value: str
) -> None:
    response = client.request(method, path, headers={name: value}, content=b"{}")
    STATUSES[response.status_code] += 1
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.content:
        assert response.json()["error"]
    if response.status_code == 405:
        assert response.headers["allow"]
