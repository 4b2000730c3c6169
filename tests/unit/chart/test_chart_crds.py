"""The chart ships the CRD byte-identical to crds/ (Helm installs charts/roost/crds/* as is)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SYNC = REPO / "hack" / "sync-crds.sh"


def test_chart_crds_are_identical_to_top_level_crds() -> None:
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (REPO / "charts/roost/crds").glob("*.yaml"))
    assert sources == copies
    for name in sources:
        assert (REPO / "crds" / name).read_bytes() == (
            REPO / "charts/roost/crds" / name
        ).read_bytes(), f"charts/roost/crds/{name} is stale: run hack/sync-crds.sh"


def test_sync_script_detects_and_repairs_a_stale_copy(tmp_path: Path) -> None:
    # Run the real script on a copy of the layout, so the checkout is never touched.
    (tmp_path / "hack").mkdir()
    shutil.copy2(SYNC, tmp_path / "hack" / "sync-crds.sh")
    shutil.copytree(REPO / "crds", tmp_path / "crds")
    shutil.copytree(REPO / "charts/roost/crds", tmp_path / "charts/roost/crds")
    script = str(tmp_path / "hack" / "sync-crds.sh")
    assert subprocess.run([script, "--check"], capture_output=True, check=False).returncode == 0

    stale = tmp_path / "charts/roost/crds/modeldeployment.yaml"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    (tmp_path / "charts/roost/crds/orphan.yaml").write_text("kind: CustomResourceDefinition\n")
    check = subprocess.run([script, "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 1
    assert "stale: charts/roost/crds/modeldeployment.yaml" in check.stderr
    assert "orphan: charts/roost/crds/orphan.yaml" in check.stderr

    subprocess.run([script], capture_output=True, check=True)
    assert stale.read_bytes() == (tmp_path / "crds/modeldeployment.yaml").read_bytes()
    assert not (tmp_path / "charts/roost/crds/orphan.yaml").exists()
    assert subprocess.run([script, "--check"], capture_output=True, check=False).returncode == 0
