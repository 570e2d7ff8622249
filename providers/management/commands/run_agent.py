"""``python manage.py run_agent --server URL (--key KEY | --key-file FILE) [--site NAME]
[--inventory inventory.json] [--interval SECONDS] [--count N] [--work-dir DIR]
[--run-as USER] [--wait SECONDS]``

Runs the node agent (providers.agent): registers this node and its GPUs, sends
heartbeats, and with ``--work-dir`` runs the node's leased work (providers.agent_runs)
until stopped. The same as ``python -m providers.agent``, which needs no Django. Exits
3 with a plain message when NVML cannot be used (no NVIDIA driver) and no inventory
file was given; 2 on a bad inventory file or key file, or when the server refuses the
key or the inventory.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from providers import agent
from providers.agent import EXIT_NO_NVML, EXIT_REFUSED  # noqa: F401  (the exit codes)


class Command(BaseCommand):
    help = "Run the provider node agent: NVML inventory, heartbeats, leased work."

    def add_arguments(self, parser: CommandParser) -> None:
        agent.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        code = agent.run_from_options(options, out=self.stdout, err=self.stderr)
        if code:
            sys.exit(code)
