"""``python manage.py run_agent --server URL --key KEY [--site NAME]
[--inventory inventory.json] [--interval SECONDS] [--count N]``

Runs the node agent (providers.agent): registers this node and its GPUs, then sends
heartbeats until stopped. Exits 3 with a plain message when NVML cannot be used
(no NVIDIA driver) and no inventory file was given; 2 on a bad inventory file or
when the server refuses the key or the inventory.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from providers.agent import Agent, AgentError, InventoryFileError
from providers.nvml import NvmlUnavailable

EXIT_NO_NVML = 3
EXIT_REFUSED = 2


class Command(BaseCommand):
    help = "Run the provider node agent: NVML inventory, registration, heartbeats."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--server", required=True, help="e.g. https://tandem.example")
        parser.add_argument("--key", required=True, help="an agent API key of your org")
        parser.add_argument("--site", help="the name of one of your sites")
        parser.add_argument("--hostname", help="default: this machine's hostname")
        parser.add_argument("--inventory", help="inventory JSON file instead of NVML")
        parser.add_argument(
            "--interval",
            type=float,
            help="seconds between heartbeats (default: what the server says)",
        )
        parser.add_argument("--count", type=int, help="stop after this many heartbeats")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        try:
            agent = Agent(
                server=options["server"],
                key=options["key"],
                site=options["site"],
                hostname=options["hostname"],
                inventory_path=options["inventory"],
                interval_seconds=options["interval"],
            )
            agent.start()
        except NvmlUnavailable as exc:
            self._fail(str(exc), EXIT_NO_NVML)
        except InventoryFileError as exc:
            self._fail(str(exc), EXIT_REFUSED)
        except AgentError as exc:
            self._fail(f"registration failed: {exc}", EXIT_REFUSED)
        self.stdout.write(
            f"node {agent.hostname} registered as {agent.node_id}; "
            f"heartbeat every {agent.interval_seconds:g} s"
        )
        try:
            agent.run(max_heartbeats=options["count"])
        except AgentError as exc:
            self._fail(str(exc), EXIT_REFUSED)
        except KeyboardInterrupt:
            pass
        finally:
            agent.stop()

    def _fail(self, message: str, code: int) -> None:
        self.stderr.write(message)
        sys.exit(code)
