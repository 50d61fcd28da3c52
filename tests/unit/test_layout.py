"""The package layout and its one direction of dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> set[tuple[str, str]]:
    """(file, top-level package) for every absolute import under ``package``."""
    return {(f, m.split(".")[0]) for f, m in _imports_full(package)}


def test_health_imports_neither_gateway_nor_policies() -> None:
    """health/ depends on nothing of ours."""
    bad = {(f, m) for f, m in _imports("health") if m in ("gateway", "policies")}
    assert bad == set()


def test_policies_never_imports_gateway() -> None:
    """policies/ may read health snapshots but never reaches into gateway/."""
    bad = {(f, m) for f, m in _imports("policies") if m == "gateway"}
    assert bad == set()


def test_litellm_is_imported_only_by_its_provider() -> None:
    """No module but the litellm provider names litellm (it costs seconds and ~200 MB)."""
    users = {f for f, m in _imports("gateway") if m == "litellm"}
    assert users <= {"gateway/providers/litellm.py"}


def test_the_chaos_suite_stays_off_the_serving_path() -> None:
    """Only the command line reaches gateway.chaos, and only gateway.chaos.report reaches
    matplotlib (an optional extra: the sidecar image does not carry it)."""
    chaos_users = {
        f
        for package in ("gateway", "policies", "health")
        for f, m in _imports_full(package)
        if m.startswith("gateway.chaos") and not f.startswith("gateway/chaos/")
    }
    assert chaos_users <= {"gateway/cli.py"}
    plotters = {f for f, m in _imports("gateway") if m == "matplotlib"}
    assert plotters <= {"gateway/chaos/report.py"}


def test_serving_imports_neither_the_chaos_suite_nor_matplotlib() -> None:
    """What `gateway serve` imports (the app and its config) loads no chaos module."""
    import subprocess
    import sys

    code = (
        "import sys, gateway.app, gateway.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('gateway.chaos', 'matplotlib'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _imports_full(package: str) -> set[tuple[str, str]]:
    """Like :func:`_imports`, with the whole module path (``gateway.chaos.runner``)."""
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((str(path.relative_to(ROOT)), a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module))
    return found
