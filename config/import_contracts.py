"""An import-linter contract type for the rule in docs/architecture.md that the layers
contract cannot say: an app imports only the *public* modules of another app —
``services``, ``selectors``, ``events``, ``models`` (and the few more an app lists) —
never its engine, its follower internals or its ``_private`` modules. Whether an app
may import another at all is the layers contract's business.

Registered in pyproject.toml (``[tool.importlinter] contract_types``); ``lint-imports``
runs it, and so does the suite (tests/test_architecture.py)."""

from __future__ import annotations

from typing import Any

import grimp
from importlinter.application import contract_utils, output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class PublicSurfaceContract(Contract):
    """Options:
    - ``apps``: the top-level packages whose insides are guarded;
    - ``public``: the module names (last component) any other app may import;
    - ``extra_public``: ``app.module`` entries public for that app only;
    - ``exempt_importers``: packages that may import anything (the project's wiring);
    - ``ignore_imports``: ``importer -> imported`` exceptions, each with its reason
      beside it in the configuration."""

    type_name = "public_surface"

    apps = fields.ListField(subfield=fields.StringField())
    public = fields.ListField(subfield=fields.StringField())
    extra_public = fields.ListField(subfield=fields.StringField(), required=False)
    exempt_importers = fields.ListField(subfield=fields.StringField(), required=False)
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=contract_utils.AlertLevel.ERROR,
        )
        apps: list[str] = list(self.apps)  # type: ignore[call-overload]
        public = set(self.public)  # type: ignore[call-overload]
        extra = set(self.extra_public or ())  # type: ignore[call-overload]
        exempt = tuple(self.exempt_importers or ())  # type: ignore[call-overload]
        broken: list[dict[str, Any]] = []
        for module in sorted(graph.modules):
            app = module.split(".")[0]
            if app not in apps or module == app:
                continue
            leaf = module.rsplit(".", 1)[-1]
            private = any(
                part.startswith("_") and not part.startswith("__") for part in module.split(".")
            )
            if (leaf in public or module in extra) and not private:
                continue
            for importer in sorted(graph.find_modules_that_directly_import(module)):
                owner = importer.split(".")[0]
                if owner == app or owner in exempt:
                    continue
                details = graph.get_import_details(importer=importer, imported=module)
                broken.append(
                    {
                        "importer": importer,
                        "imported": module,
                        "lines": [d["line_number"] for d in details],
                    }
                )
        return ContractCheck(
            kept=not broken,
            warnings=list(removal.warnings),
            ignored_import_count=removal.ignored_import_count,
            metadata={"broken": broken},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error(
            "An app imports another app's public modules only (services, selectors, "
            "events, models):",
            bold=False,
        )
        output.new_line()
        for link in check.metadata["broken"]:
            lines = ", ".join(map(str, link["lines"]))
            output.print_error(
                f"- {link['importer']} -> {link['imported']} (l.{lines})", bold=False
            )
        output.new_line()
