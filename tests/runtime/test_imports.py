"""The control plane never imports torch: Django's apps, URLs, the runtime's
services, tasks and ports load without it (torch costs seconds and a GiB). And no
engine is in it: inference runs on the nodes (runtime/serve.py), the gateway only
counts tokens with the runtime's tokenizer."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_project_does_not_import_torch():
    code = (
        "import sys, django; django.setup(); "
        "import config.urls, runtime.services, runtime.tasks, runtime.selectors, "
        "runtime.ports, runtime.datasets, runtime.registry, runtime.storage, runtime.spec; "
        "import marketplace.workloads.gateway, marketplace.workloads.inference; "
        "from core import ports; "
        "from core.tokens import TokensPort; "
        "assert {ports.UsagePort, ports.DatasetsPort, ports.ModelRegistryPort, "
        "TokensPort} <= set(ports._registry); "
        "assert 'InferencePort' not in {port.__name__ for port in ports._registry}; "
        "assert 'runtime.inference' not in sys.modules and 'runtime.serve' not in sys.modules; "
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
