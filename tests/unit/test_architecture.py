"""The architecture is checked, not only described: ``.ci/lint-imports`` (run by ``make test``)
keeps the repository's import contracts (``.importlinter``) and fails, naming the contract,
on a copy that breaks one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "lint-imports"
PACKAGES = ("rtrec", "features", "streaming", "training", "serving", "monitoring", "dags")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``.ci/lint-imports ROOT``: the contracts in ROOT, checked on the packages in ROOT."""
    return subprocess.run(
        [str(SCRIPT), str(root)], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package folders and the contracts, as in the repository."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_repository_keeps_every_contract() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
    # Every stage's API contract ran (a contract left out of the file would pass silently).
    for stage in ("features", "streaming", "training", "serving", "monitoring", "dags"):
        assert f"Other layers use rtrec.{stage} only through its package KEPT" in out.stdout


def test_a_kernel_module_importing_a_stage_breaks_the_kernel_and_layer_contracts(
    copy: Path,
) -> None:
    with (copy / "rtrec" / "config.py").open("a") as f:
        f.write("\nimport rtrec.serving  # noqa: E402\n")
    out = lint(copy)
    assert out.returncode != 0
    assert "The kernel imports no stage and no app module BROKEN" in out.stdout
    assert "kernel BROKEN" in out.stdout  # the layers contract's name ends with "kernel"
    assert "rtrec.config -> rtrec.serving" in out.stdout


def test_a_stage_importing_another_stages_submodule_breaks_that_stages_contract(
    copy: Path,
) -> None:
    (copy / "serving" / "uses_internals.py").write_text(
        "from rtrec.training.model import TwoTower  # noqa: F401\n"
    )
    out = lint(copy)
    assert out.returncode != 0
    assert "Other layers use rtrec.training only through its package BROKEN" in out.stdout
    assert "rtrec.serving.uses_internals -> rtrec.training.model" in out.stdout
    # The import goes downwards, so the layers contract itself still holds.
    assert "kernel KEPT" in out.stdout
