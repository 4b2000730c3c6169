#!/usr/bin/env bash
# Copy the ModelDeployment CRD (crds/, the source of truth) into the Helm chart's crds/ directory.
# Helm installs charts/roost/crds/* before the templates and never templates or upgrades them,
# so that copy must be byte-identical to crds/ (tests/unit/chart/test_chart_crds.py enforces it).
# Usage: hack/sync-crds.sh          copy
#        hack/sync-crds.sh --check  exit 1 (and print a diff) when the copy is stale
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/crds"
dst="$root/charts/roost/crds"
status=0
for file in "$src"/*.yaml; do
    target="$dst/$(basename "$file")"
    if [[ "${1:-}" == "--check" ]]; then
        if ! cmp -s "$file" "$target"; then
            echo "stale: ${target#"$root"/} differs from ${file#"$root"/}" >&2
            diff -u "$file" "$target" >&2 || true
            status=1
        fi
    else
        mkdir -p "$dst"
        cp "$file" "$target"
        echo "synced ${file#"$root"/} -> ${target#"$root"/}"
    fi
done
# A CRD removed from crds/ must not linger in the chart.
for target in "$dst"/*.yaml; do
    [[ -e "$src/$(basename "$target")" ]] && continue
    if [[ "${1:-}" == "--check" ]]; then
        echo "orphan: ${target#"$root"/} has no source in crds/" >&2
        status=1
    else
        rm -f "$target"
        echo "removed ${target#"$root"/}"
    fi
done
exit "$status"
