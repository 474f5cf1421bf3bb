"""Every module of the package stays readable in one sitting and every function fits on a
screen: at most 350 lines per module and 60 lines per function (its ``def`` line through
its last line, docstring included). A module that grows past that is split by role and a
function into named steps; the failure lists every offender, not just the first.

Covers the kernel (``rtrec/``, the app layer included) and the six stage folders that
setuptools maps into the ``rtrec`` namespace; tests and benchmarks are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("rtrec", "features", "streaming", "training", "serving", "monitoring", "dags")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(
        path
        for folder in PACKAGE_DIRS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def _oversized(path: Path) -> list[str]:
    """One line per limit ``path`` exceeds: the module's length, each long function."""
    source = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix()
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: module has {lines} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(
                    f"{name}:{node.lineno}: function {node.name} has {length} lines "
                    f"(max {MAX_FUNCTION_LINES})"
                )
    return found


def test_the_walk_finds_every_package_folder() -> None:
    modules = _modules()
    folders = {path.relative_to(ROOT).parts[0] for path in modules}
    assert folders == set(PACKAGE_DIRS)
    assert ROOT / "rtrec" / "config.py" in modules


def test_no_module_or_function_is_oversized() -> None:
    offenders = [line for path in _modules() for line in _oversized(path)]
    assert not offenders, "split these by role or into named steps:\n" + "\n".join(offenders)
