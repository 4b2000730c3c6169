"""Schemathesis over the server's own OpenAPI document, against a real ``roost serve``.

Every operation in the document is called with inputs schemathesis generates from it; no
answer may be a 5xx, and every error answer must be the documented error body. (Driven
through hypothesis directly: schemathesis' pytest plugin does not load under pytest 9.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

ServeProcess = Any


def test_every_documented_operation_answers_without_a_5xx(identity_process: ServeProcess) -> None:
    schema = schemathesis.openapi.from_url(identity_process.url + "/openapi.json")
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            if case.path_parameters and "name" in case.path_parameters:
                # The served model, so request bodies reach the decoder rather than a 404.
                case.path_parameters["name"] = "id"
            response = case.call(timeout=20)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400 and response.content:
                # schemathesis' own Response keeps every header as a list of values.
                assert response.headers["content-type"] == ["application/json"]
                assert isinstance(response.json()["error"], str)

        call()
    print(f"schemathesis: {len(operations)} operations, statuses {dict(sorted(statuses.items()))}")
    assert statuses
