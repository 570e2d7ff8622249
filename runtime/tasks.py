"""The runtime has no dramatiq actors: no control-plane process trains.

A fine-tune's training is an assignment of kind ``train`` for the leased node
(marketplace/assignments/training.py); the node's agent runs ``python -m
runtime.launch`` (torchrun for several GPUs) and reports it. The ``training_run``,
``training_cancel`` and ``training_run_exhausted`` actors that once trained inside the
control plane's worker threads are gone; a message still queued for them from an
older version is dropped by the broker as one for an unknown actor.
"""
