"""The dramatiq broker. django_dramatiq builds it from settings.DRAMATIQ_BROKER;
with no DRAMATIQ_BROKER_URL that is an in-process StubBroker, and the web process
runs worker threads over it so the embedded default needs no server."""

from __future__ import annotations

import os
import sys
import threading

_worker = None
_lock = threading.Lock()


def start_inprocess_worker_if_configured() -> None:
    from django.conf import settings

    if settings.DRAMATIQ_BROKER_URL or settings.DRAMATIQ_INPROCESS_WORKERS == 0:
        return
    # Only the serving process runs workers: not migrations, shells or tests.
    if "pytest" in sys.modules or os.environ.get("TANDEM_INPROCESS_WORKER") != "1":
        return
    # runserver's autoreloader imports the project twice; only the child serves.
    if "runserver" in sys.argv and os.environ.get("RUN_MAIN") != "true":
        return
    start_inprocess_worker()


def start_inprocess_worker():
    """Worker threads over the in-process broker, started once per process."""
    global _worker
    with _lock:
        if _worker is None:
            import dramatiq
            from django.conf import settings
            from django.utils.module_loading import autodiscover_modules
            from dramatiq import Worker

            # Every app's actors (``tasks`` modules, as rundramatiq finds them), so
            # work sent by name (a fine-tune's training) has an actor here too.
            autodiscover_modules(*settings.DRAMATIQ_AUTODISCOVER_MODULES)

            _worker = Worker(
                dramatiq.get_broker(), worker_threads=settings.DRAMATIQ_INPROCESS_WORKERS
            )
            _worker.start()
    return _worker
