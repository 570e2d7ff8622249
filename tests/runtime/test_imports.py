"""The control plane never imports torch: Django's apps, URLs, the runtime's
services, tasks and ports load without it (torch costs seconds and a GiB)."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_project_does_not_import_torch():
    code = (
        "import sys, django; django.setup(); "
        "import config.urls, runtime.services, runtime.tasks, runtime.selectors, "
        "runtime.ports, runtime.datasets, runtime.registry, runtime.storage, runtime.spec; "
        "from core import ports; "
        "assert {ports.UsagePort, ports.DatasetsPort, ports.ModelRegistryPort, "
        "ports.InferencePort} <= set(ports._registry); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
