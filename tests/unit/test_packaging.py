"""The distribution as a user installs it: one top-level package, importable beside an
Airflow deployment's own ``dags/`` folder.

The repository keeps one folder per stage; the wheel must map them under ``rtrec``. A
top-level ``dags`` or ``training`` package would collide with other distributions and with
every Airflow home, whose ``dags/`` folder is on ``sys.path`` while DAG files are parsed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

USER_DAG = """\
from datetime import UTC, datetime

from airflow.sdk import DAG
from rtrec.dags.operators import DriftCheckOperator

with DAG("users_own", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    DriftCheckOperator(task_id="drift_check", scores=False, alert=False)
"""

# Run inside the clean venv, from the Airflow home, with its dags/ folder on sys.path as
# Airflow's DAG processor puts it: the operators must come from the installed wheel, and
# the home's own `dags` package must stay the home's.
PROBE = """\
import importlib.util, json, runpy, sys
sys.path[:0] = ["dags", "."]
import dags
ns = runpy.run_path("dags/users_own.py")
import rtrec.dags.operators as ops
print(json.dumps({
    "operators": ops.__file__,
    "home_dags": dags.__file__,
    "operator_module": ns["DriftCheckOperator"].__module__,
    "stage_names": {n: importlib.util.find_spec(n) is not None
                    for n in ("features", "streaming", "training", "serving", "monitoring")},
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the source without build outputs: setuptools reuses ``build/``,
    where modules deleted since an earlier build would otherwise ship again."""
    source = tmp_path_factory.mktemp("source") / "rtrec"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".*_cache", ".hypothesis", "build", "dist", "*.egg-info"
    )
    shutil.copytree(ROOT, source, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("rtrec-*.whl")
    return built


def test_wheel_holds_no_top_level_package_but_rtrec(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"rtrec", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for stage in ("features", "streaming", "training", "serving", "monitoring", "dags"):
        assert f"rtrec/{stage}/__init__.py" in names, f"rtrec.{stage} missing from the wheel"
    assert "rtrec/dags/rtrec_training.py" in names, "the DAG files ship with the operators"
    assert "rtrec/dags/.airflowignore" in names, "Airflow would parse the library modules"
    # pyproject lists the packages one by one (package-dir cannot be searched): every
    # package and module of the source tree must reach the wheel under its mapped name.
    missing = [wheel_name for wheel_name in _source_modules() if wheel_name not in names]
    assert missing == [], f"not in the wheel (add the package to pyproject.toml): {missing}"


def _source_modules() -> list[str]:
    """Every .py file of the kernel and the stages, as its path inside the wheel."""
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "rtrec").rglob("*.py")]
    for stage in ("features", "streaming", "training", "serving", "monitoring", "dags"):
        found += [f"rtrec/{p.relative_to(ROOT)}" for p in (ROOT / stage).rglob("*.py")]
    return sorted(f for f in found if "__pycache__" not in f)


def test_operators_import_from_an_airflow_home_with_its_own_dags_package(
    wheel: Path, tmp_path: Path
) -> None:
    """A clean venv holding only the wheel (its dependencies come from this interpreter's
    site-packages through a path file, whose own path files — our editable install's finder
    among them — are not processed)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "outer_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", wheel],
        check=True,
        timeout=300,
    )
    home = tmp_path / "airflow_home"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "__init__.py").write_text('"""The deployment\'s own DAG package."""\n')
    (home / "dags" / "users_own.py").write_text(USER_DAG)
    done = subprocess.run(
        [py, "-c", PROBE], cwd=home, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["operators"].startswith(str(site)), seen
    assert seen["home_dags"] == str(home / "dags" / "__init__.py"), seen
    assert seen["operator_module"] == "rtrec.dags.operators"
    assert not any(seen["stage_names"].values()), seen
