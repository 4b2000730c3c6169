#!/usr/bin/env bash
# A model CI/CD pipeline, runnable on a laptop or in CI (model-pipeline.yml runs this script):
#   train -> roost export -> roost profile -> roost validate (against the current stable)
#         -> register in MLflow (with the sha256 tags roost pins) -> move the alias.
# Moving the alias is the release: every ModelDeployment with `uri: models:/$MODEL@$ALIAS`
# resolves the new version at its next poll and rolls it out as a canary.
#
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5000 examples/ci/pipeline.sh WORKDIR [--kind forest]
#
# Environment: MLFLOW_TRACKING_URI (required), MODEL (wine), ALIAS (champion),
# MIN_AGREEMENT (0.9), ROOST (roost), PYTHON (python3). Exit status: 0 released,
# 1 validation failed (nothing registered), other: a step failed.
set -euo pipefail
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the MLflow tracking server}"
export MLFLOW_TRACKING_URI
work=${1:?usage: pipeline.sh WORKDIR [train.py options]}
shift
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-wine}
alias=${ALIAS:-champion}
roost=${ROOST:-roost}
python=${PYTHON:-python3}
mkdir -p "$work"

echo "== train"
"$python" "$here/train.py" "$work/candidate" "$@"
echo "== export"
"$roost" export "$work/candidate/model.joblib" --sample "$work/candidate/train.csv" \
  --exclude target -o "$work/candidate/model.onnx"
echo "== profile"
"$roost" profile "$work/candidate/train.csv" --model "$work/candidate/model.onnx" \
  --exclude target -o "$work/candidate/profile.json"
echo "== validate against $model@$alias"
rc=0
"$python" "$here/registry.py" fetch --model "$model" --alias "$alias" --to "$work/stable" || rc=$?
if [ "$rc" -eq 3 ]; then
  echo "first release of $model: nothing to validate against"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
else
  "$roost" validate --candidate "$work/candidate/model.onnx" --stable "$work/stable/model.onnx" \
    --golden "$work/candidate/golden.csv" --expected-column target \
    --min-agreement "${MIN_AGREEMENT:-0.9}" || { echo "== validation failed: not released"; exit 1; }
fi
echo "== register and move $model@$alias"
"$python" "$here/registry.py" register --model "$model" --dir "$work/candidate" --alias "$alias" \
  | tee "$work/register.log"
echo "== released $model@$alias = version $(tail -n 1 "$work/register.log")"
