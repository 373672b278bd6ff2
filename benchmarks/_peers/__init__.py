"""Implementations of the same MAML training step in mamlkit and in other libraries, for
``benchmarks/peers.py``. Each module exposes ``probe()`` (is the library importable, which version)
and ``prepare(model, workload)`` returning ``meta_gradient(batch)``, which accumulates the mean
meta-gradient over the batch's tasks into the model parameters' ``.grad``."""
