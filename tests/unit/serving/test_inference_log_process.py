"""The inference log of a real server: ``roost serve`` processes stopped by a real SIGTERM
(every accepted record is written to a healthy sink; a stalled sink's records are reported
lost), and REST and gRPC requests, answered or refused, in the records."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as triton
from log_peers import BlackHole
from roost_serving.config import Settings
from roost_serving.log_reader import examples, read_log

ROW = '{"id":"%s","inputs":[{"name":"X","datatype":"FP32","shape":[1,5],"data":[0.5,-1,0.25,2,0]}]}'


def _serve(serve_process: Any, model: Path, log_uri: str) -> Any:
    return serve_process(
        {
            "ROOST_MODEL": str(model),
            "ROOST_NAME": "forest",
            "ROOST_REVISION": "r7",
            "ROOST_LOG_URI": log_uri,
            "ROOST_LOG_ROTATE_SECONDS": "3600",  # nothing is written before the signal
            "ROOST_GRACE_SECONDS": "5",
            "ROOST_DRAIN_SECONDS": "1",
            "ROOST_LOG_LEVEL": "info",
            "POD_NAME": "forest-pod-1",
        }
    )


def _infer(server: Any, ids: list[str]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for request_id in ids:
            response = client.post("/v2/models/forest/infer", content=ROW % request_id)
            assert response.status_code == 200, response.text


def test_sigterm_writes_every_accepted_record_to_a_healthy_sink(
    tmp_path: Path, serving_models: dict[str, Path], serve_process: Any
) -> None:
    server = _serve(serve_process, serving_models["forest"], str(tmp_path / "log"))
    _infer(server, [f"before-{i}" for i in range(40)])
    # Without a body id the log has the X-Request-Id header's, as the response does.
    body = ROW.replace('"id":"%s",', "")
    headers = {"X-Request-Id": "from-header"}
    response = httpx.post(f"{server.url}/v2/models/forest/infer", content=body, headers=headers)
    assert response.headers["x-request-id"] == "from-header"
    server.proc.send_signal(signal.SIGTERM)
    # Requests during the drain are answered, and logged, too.
    _infer(server, [f"drain-{i}" for i in range(5)])
    _, stderr = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 0, stderr
    assert "every accepted record was written" in stderr
    frame = read_log(str(tmp_path / "log"))
    assert sorted(frame["id"]) == sorted(
        [f"before-{i}" for i in range(40)] + ["from-header"] + [f"drain-{i}" for i in range(5)]
    )
    assert set(frame["revision"]) == {"r7"}
    assert set(frame["pod"]) == {"forest-pod-1"}
    assert set(frame["status"]) == {200}


def test_sigterm_with_a_stalled_sink_reports_the_lost_records_and_exits_in_time(
    serving_models: dict[str, Path], serve_process: Any
) -> None:
    with BlackHole() as hole:
        server = _serve(serve_process, serving_models["forest"], hole.url)
        _infer(server, [f"r{i}" for i in range(20)])
        server.proc.send_signal(signal.SIGTERM)
        _, stderr = server.proc.communicate(timeout=60)
    # Exit 0, not the watchdog's 1: the flush gave up inside the grace period.
    assert server.proc.returncode == 0, stderr
    assert "overran the grace period" not in stderr
    assert "20 accepted records were not written" in stderr


def test_rest_and_grpc_requests_are_logged_answered_or_refused_but_not_validation(
    tmp_path: Path, serving_models: dict[str, Path], start_server: Any
) -> None:
    log_dir = tmp_path / "log"
    server = start_server(
        Settings(
            model=str(serving_models["forest"]),
            name="forest",
            revision="r2",
            grpc_port=0,
            log_uri=str(log_dir),
            log_rotate_seconds=3600.0,
        )
    )
    url = f"{server.url}/v2/models/forest/infer"
    assert httpx.post(url, content=ROW % "rest-1").status_code == 200
    bad = ROW.replace("[1,5]", "[1,4]").replace(",0]", "]") % "rest-bad"
    assert httpx.post(url, content=bad).status_code == 400
    # The operator's validation requests never reach the log.
    validation = httpx.post(url, content=ROW % "val-1", headers={"Roost-Source": "validation"})
    assert validation.status_code == 200
    client = triton.InferenceServerClient(f"127.0.0.1:{server.plane.grpc_port}")
    tensor = triton.InferInput("X", [2, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 5), np.float32))
    client.infer("forest", [tensor], request_id="grpc-1")
    client.close()
    assert server.plane.inference_log.close(timeout=30.0) == 0
    frame = read_log(str(log_dir)).set_index("id")
    assert sorted(frame.index) == ["grpc-1", "rest-1", "rest-bad"]
    assert (frame.loc["rest-1", "status"], frame.loc["rest-1", "protocol"]) == (200, "rest")
    assert frame.loc["rest-bad", "status"] == 400
    assert "shape" in frame.loc["rest-bad", "error"]
    assert frame.loc["rest-bad", "outputs"] is None
    assert frame.loc["grpc-1", "protocol"] == "grpc"
    assert len(frame.loc["grpc-1", "outputs"]["label"]) == 2
    assert set(frame["revision"]) == {"r2"}
    assert (frame["latency_s"] > 0).all()


def test_an_unknown_redacted_name_refuses_to_start(
    tmp_path: Path, serving_models: dict[str, Path], serve_process: Any
) -> None:
    server = serve_process(
        {
            "ROOST_MODEL": str(serving_models["forest"]),
            "ROOST_LOG_URI": str(tmp_path / "log"),
            "ROOST_LOG_REDACT": "X,nope",
        },
        wait_ready=False,
    )
    _, stderr = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("roost: error: cannot open the inference log: --log-redact 'nope'")


def test_feedback_lands_in_the_log_under_the_answers_id(
    tmp_path: Path, serving_models: dict[str, Path], serve_process: Any
) -> None:
    server = _serve(serve_process, serving_models["forest"], str(tmp_path / "log"))
    _infer(server, ["a", "b"])
    feedback = {
        "feedback": [{"id": "a", "truth": 2}, {"id": "b", "truth": 0}, {"id": "zz", "truth": 1}]
    }
    response = httpx.post(f"{server.url}/v2/models/forest/feedback", json=feedback)
    assert response.status_code == 200, response.text
    server.proc.send_signal(signal.SIGTERM)
    _, stderr = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 0, stderr
    truth = read_log(str(tmp_path / "log"), kind="feedback")
    # Every item once, the unknown one too (its outcome says so), on the pod that answered.
    assert dict(zip(truth["id"], truth["outcome"], strict=True)) == {
        "a": "joined",
        "b": "joined",
        "zz": "unknown",
    }
    assert set(truth["pod"]) == {"forest-pod-1"}
    assert set(truth["revision"]) == {"r7"}
    joined = examples(read_log(str(tmp_path / "log")))
    assert sorted(zip(joined["id"], joined["ground_truth"], strict=True)) == [("a", 2), ("b", 0)]
