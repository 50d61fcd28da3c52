"""The package layout and its one direction of dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(
                    (str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names
                )
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


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
