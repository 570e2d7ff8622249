"""Python's cyclic garbage collector paused around bulk work.

A batch of ledger entries or a month close's chunk makes tens or hundreds of
thousands of objects that all live until the work returns. Their allocation keeps
starting collections, and every so often a full one, which walks every object in
the process and frees nothing, since the work still holds what it made (measured:
20 of the 36 µs of Python a batched transfer cost; a fifth of a close's Python).
Reference counting still frees everything as usual; only the search for cycles
waits until the work is done.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """Automatic collections off for the block, given back as they were found.

    The collector is one switch per process: a block finding it already off
    (another thread's batch, or an application that turned it off) leaves it off;
    the block that turned it off turns it back on. ``freeze`` also leaves the
    objects alive before the block out of every scan (``gc.freeze``) until it ends,
    for work that collects its own young objects as it goes (``gc.collect(0)``);
    processes forked inside the block inherit both."""
    enabled = gc.isenabled()
    if freeze:
        gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        if freeze:
            gc.unfreeze()
