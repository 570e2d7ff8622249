"""The import rules of docs/architecture.md, in the suite: import-linter's contracts
(pyproject.toml), and no app importing another app's ``_private`` names (a rule about
names, which import-linter, working on modules, does not see)."""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
APPS = (
    "core", "runtime", "providers", "metering", "ledger", "pricing", "marketplace",
    "invoicing", "payments", "exports", "portal", "config",
)  # fmt: skip


def test_the_import_contracts_are_kept():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _private_imports_across_apps() -> list[str]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                    continue
                owner = node.module.split(".")[0]
                if owner == app or owner not in APPS:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_"):
                        where = path.relative_to(ROOT)
                        found.append(f"{where}:{node.lineno} {node.module}.{alias.name}")
    return found


def test_no_app_imports_another_apps_private_names():
    assert _private_imports_across_apps() == []
