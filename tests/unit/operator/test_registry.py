"""`roost_operator.registry`: references, artifact URLs, the registry spec, digest tags."""

from __future__ import annotations

import pytest
from roost_operator import registry
from roost_operator.registry import ModelReference, Resolution
from roost_operator.spec import SpecError

TRACKING = "http://mlflow.mlflow.svc:5000"


@pytest.mark.parametrize(
    ("uri", "ref"),
    [
        ("models:/wine@champion", ModelReference("wine", alias="champion")),
        ("models:/wine/7", ModelReference("wine", version="7")),
        (
            "models:/fraud-detector.v2@roost-prod_1",
            ModelReference("fraud-detector.v2", alias="roost-prod_1"),
        ),
    ],
)
def test_references_parse_and_print_back(uri: str, ref: ModelReference) -> None:
    assert registry.parse_reference(uri) == ref
    assert str(ref) == uri


@pytest.mark.parametrize(
    "uri", ["models:/wine", "models:/wine/0", "models:/wine/latest", "models:/@x", "models:/a/b/1"]
)
def test_bad_references_say_what_is_accepted(uri: str) -> None:
    with pytest.raises(SpecError, match=r"models:/NAME@ALIAS or models:/NAME/VERSION"):
        registry.parse_reference(uri)


def test_mlflow_artifacts_go_through_the_tracking_servers_proxy() -> None:
    src = "mlflow-artifacts:/1/abc123/artifacts/model"
    assert registry.artifact_url(TRACKING + "/", src, "model.onnx") == (
        f"{TRACKING}/api/2.0/mlflow-artifacts/artifacts/1/abc123/artifacts/model/model.onnx"
    )
    # The host form names the server that wrote it; the path is what the proxy serves.
    assert registry.artifact_url(TRACKING, "mlflow-artifacts://other:5000/1/x", "a b.json") == (
        f"{TRACKING}/api/2.0/mlflow-artifacts/artifacts/1/x/a%20b.json"
    )


def test_store_uris_pass_through_and_unknown_schemes_are_refused() -> None:
    assert (
        registry.artifact_url(TRACKING, "s3://bucket/m/", "model.onnx")
        == "s3://bucket/m/model.onnx"
    )
    assert registry.artifact_url(TRACKING, "/mnt/models/1", "") == "file:///mnt/models/1"
    with pytest.raises(ValueError, match="dbfs:/x"):
        registry.artifact_url(TRACKING, "dbfs:/x", "model.onnx")


def test_registry_spec_defaults_and_errors() -> None:
    spec = registry.registry_spec({"registry": {"trackingUri": TRACKING + "/"}})
    assert spec.tracking_uri == TRACKING
    assert (spec.poll_seconds, spec.model_file, spec.profile_file) == (
        30.0,
        "model.onnx",
        "profile.json",
    )
    assert (
        registry.registry_spec(
            {"registry": {"trackingUri": TRACKING, "pollInterval": "5s", "profilePath": ""}}
        ).profile_file
        is None
    )
    with pytest.raises(SpecError, match="trackingUri is required"):
        registry.registry_spec({})
    with pytest.raises(SpecError, match="at least 1s"):
        registry.registry_spec({"registry": {"trackingUri": TRACKING, "pollInterval": "500ms"}})


def test_digest_tags() -> None:
    version = {"tags": [{"key": "roost.sha256", "value": "a" * 64}, {"key": "other", "value": "x"}]}
    tags = registry.version_tags(version)
    assert registry.digest_tag(tags, registry.SHA256_TAG) == "a" * 64
    assert registry.digest_tag(tags, registry.PROFILE_SHA256_TAG) is None
    with pytest.raises(ValueError, match="64 lowercase hex"):
        registry.digest_tag({"roost.sha256": "ABC"}, registry.SHA256_TAG)


def test_resolution_round_trips_through_status() -> None:
    res = Resolution(
        "models:/wine@champion",
        "wine",
        "3",
        "run1",
        "mlflow-artifacts:/1/run1/artifacts/model",
        f"{TRACKING}/x/model.onnx",
        "b" * 64,
        f"{TRACKING}/x/profile.json",
        "c" * 64,
        "2026-12-01T07:00:00Z",
    )
    assert Resolution.from_status(res.to_status()) == res
    assert Resolution.from_status({"version": "3"}) is None
    assert Resolution.from_status(None) is None


def test_alias_and_tag_names_are_valid_mlflow_names() -> None:
    assert registry.stable_alias("team.a", "wine") == "roost-team-a-wine-stable"
    assert registry.tag_prefix("prod", "wine") == "roost/prod/wine"


def test_credentials_become_auth_headers() -> None:
    from roost_operator.registry_client import auth_headers

    assert auth_headers({"token": "t0k"}) == {"Authorization": "Bearer t0k"}
    # base64("ci:s3cret")
    assert auth_headers({"username": "ci", "password": "s3cret"}) == {
        "Authorization": "Basic Y2k6czNjcmV0"
    }
    assert auth_headers(None) == {}


def test_webhook_signature_matches_mlflows_own() -> None:
    import time

    from mlflow.webhooks.delivery import _generate_hmac_signature
    from roost_operator.registry_webhook import model_of, signature_ok

    body = '{"entity": "model_version_alias", "action": "created", "data": {"name": "wine"}}'
    now = time.time()
    ts = str(int(now))
    sig = _generate_hmac_signature("s3cret", "d1", ts, body)
    assert signature_ok("s3cret", "d1", ts, body.encode(), sig, now)
    assert not signature_ok("other", "d1", ts, body.encode(), sig, now)
    assert not signature_ok("s3cret", "d2", ts, body.encode(), sig, now)
    assert not signature_ok("s3cret", "d1", ts, body.encode(), sig, now + 3600)  # replayed later
    assert model_of({"entity": "model_version_alias", "data": {"name": "wine"}}) == "wine"
    assert model_of({"entity": "prompt_alias", "data": {"name": "p"}}) is None
