"""Pipeline steps against the MLflow Model Registry (uses the `mlflow` client package).

    python examples/ci/registry.py fetch --model wine --alias champion --to DIR
        Download the version the alias points at (model.onnx, profile.json) into DIR and check
        the file against its roost.sha256 tag. Exit status 3 when the alias does not exist yet
        (the first release: there is nothing to validate against).
    python examples/ci/registry.py register --model wine --dir DIR [--alias champion]
        Log DIR/model.onnx and DIR/profile.json as artifacts of a new run, register them as a
        new model version tagged roost.sha256 / roost.profile_sha256 (the digests roost pins
        and every serving pod verifies), and optionally move the alias to it. Prints the
        version number on the last line.

MLFLOW_TRACKING_URI says which server (e.g. http://127.0.0.1:5000).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException

SHA256_TAG, PROFILE_TAG = "roost.sha256", "roost.profile_sha256"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(client: MlflowClient, model: str, alias: str, to: Path) -> int:
    try:
        version = client.get_model_version_by_alias(model, alias)
    except MlflowException as e:
        print(f"no version of {model} has alias {alias} yet: {e.message}", file=sys.stderr)
        return 3
    to.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "profile.json"):
        download_artifacts(artifact_uri=f"{version.source}/{name}", dst_path=str(to))
    want = version.tags.get(SHA256_TAG)
    got = sha256(to / "model.onnx")
    if want and want != got:
        print(f"{model} version {version.version}: sha256 {got} != tag {want}", file=sys.stderr)
        return 1
    print(f"fetched {model}@{alias} = version {version.version} (run {version.run_id})")
    return 0


def register(client: MlflowClient, model: str, directory: Path, alias: str | None) -> int:
    experiment = client.get_experiment_by_name(model)
    exp_id = experiment.experiment_id if experiment else client.create_experiment(model)
    run = client.create_run(exp_id, tags={"mlflow.source.name": "examples/ci"})
    run_id = run.info.run_id
    for name in ("model.onnx", "profile.json"):
        client.log_artifact(run_id, str(directory / name), artifact_path="model")
    client.set_terminated(run_id)
    try:
        client.create_registered_model(model)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {SHA256_TAG: sha256(directory / "model.onnx")}
    tags[PROFILE_TAG] = sha256(directory / "profile.json")
    version = client.create_model_version(
        model, f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags
    )
    if alias:
        client.set_registered_model_alias(model, alias, version.version)
    moved = f", alias {alias} -> {version.version}" if alias else ""
    print(f"registered {model} version {version.version} (run {run_id}){moved}")
    print(version.version)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--model", required=True)
    f.add_argument("--alias", required=True)
    f.add_argument("--to", type=Path, required=True)
    r = sub.add_parser("register")
    r.add_argument("--model", required=True)
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--alias")
    args = parser.parse_args()
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI"))
    if args.command == "fetch":
        return fetch(client, args.model, args.alias, args.to)
    return register(client, args.model, args.dir, args.alias)


if __name__ == "__main__":
    sys.exit(main())
