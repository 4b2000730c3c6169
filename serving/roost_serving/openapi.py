"""The OpenAPI document of the fast path's infer routes, which FastAPI registers no handler for.

A handler that skipped the fast path's metrics could only drift from it, so the routes are
described here instead: request, response and error schemas (400, 404, 413, 500, 503, 504), and
FastAPI's automatic 422 dropped (path parameters are plain strings, it never happens).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from roost_serving.protocol import ErrorResponse, InferenceRequest, InferenceResponse


def _drop_validation_errors(schema: dict[str, Any]) -> None:
    """Remove FastAPI's automatic 422: path parameters are plain strings, it never happens."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def document_infer(app: FastAPI) -> None:
    """Describe the fast path's infer routes in the OpenAPI document (no handler behind them)."""
    components: dict[str, type[BaseModel]] = {
        "InferenceRequest": InferenceRequest,
        "InferenceResponse": InferenceResponse,
        "ErrorResponse": ErrorResponse,
    }

    def ref(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    def operation(summary: str, params: list[str]) -> dict[str, Any]:
        errors = {
            str(code): {"description": phrase, "content": ref("ErrorResponse")}
            for code, phrase in (
                (400, "Bad Request"),
                (404, "Not Found"),
                (413, "Payload Too Large"),
                (500, "Internal Server Error"),
                (503, "Service Unavailable"),
                (504, "Gateway Timeout"),
            )
        }
        return {
            "summary": summary,
            "operationId": summary.lower().replace(" ", "_"),
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ],
            "requestBody": {"required": True, "content": ref("InferenceRequest")},
            "responses": {
                "200": {"description": "Successful Response", "content": ref("InferenceResponse")},
                **errors,
            },
        }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in components.items():
                document = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for key, value in document.pop("$defs", {}).items():
                    schemas.setdefault(key, value)
                schemas[name] = document
            paths = schema.setdefault("paths", {})
            paths["/v2/models/{name}/infer"] = {"post": operation("Infer", ["name"])}
            paths["/v2/models/{name}/versions/{version}/infer"] = {
                "post": operation("Infer Version", ["name", "version"])
            }
            _drop_validation_errors(schema)
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]
