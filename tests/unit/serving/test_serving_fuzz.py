"""Property test: whatever a client sends to infer, the server answers without a 5xx or a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roost_serving.protocol import DTYPES

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
data = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=30)
names = st.sampled_from(["X", "in_FP32", "in_BYTES", "nope", ""])
shapes = st.lists(st.integers(min_value=-2, max_value=6), max_size=3)
tensor = st.fixed_dictionaries(
    {"name": names, "datatype": st.sampled_from([*DTYPES, "FP8"]), "shape": shapes},
    optional={
        "data": data,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(min_value=-1, max_value=64)}
        ),
    },
)
requests = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=3)},
        optional={
            "id": st.one_of(st.text(max_size=4), st.integers()),
            "outputs": st.lists(st.fixed_dictionaries({"name": names}), max_size=2),
            "parameters": st.dictionaries(st.text(max_size=3), scalars, max_size=2),
        },
    ),
    data,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=requests, trailing=st.binary(max_size=16), header=st.booleans())
def test_infer_never_answers_5xx(
    forest_server: Any, body: Any, trailing: bytes, header: bool
) -> None:
    # The stdlib encoder, so integers beyond 64 bits reach the server too.
    raw = json.dumps(body).encode()
    headers = {"Inference-Header-Content-Length": str(len(raw))} if header else {}
    response = httpx.post(
        forest_server.url + "/v2/models/forest/infer",
        content=raw + (trailing if header else b""),
        headers=headers,
        timeout=10,
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]
