"""learn2learn (Arnold et al. 2020): ``MAML.clone()`` / ``adapt()`` per task, its documented pattern.

learn2learn 0.2.0's package ``__init__`` imports gym, torchvision and its vision/text modules; where
those do not import, the MAML algorithm modules themselves (``learn2learn/algorithms/maml.py``,
``base_learner.py`` and ``learn2learn/utils``, which need only torch) are loaded from the installed
package without running the package ``__init__``. The MAML code that runs is the library's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from benchmarks._peers.workloads import Workload, loss_function

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
_NOTE = "MAML.clone() + adapt()"


_LOADED: list[tuple[type, str, str]] = []


def _load_maml_class() -> tuple[type, str, str]:
    """learn2learn's ``MAML`` class, its version and how it was loaded (loaded once)."""
    if not _LOADED:
        _LOADED.append(_import_maml_class())
    return _LOADED[0]


def _import_maml_class() -> tuple[type, str, str]:
    try:
        import learn2learn

        return learn2learn.algorithms.MAML, learn2learn.__version__, _NOTE
    except Exception as error:  # noqa: BLE001 - fall back to the algorithm modules only
        reason = f"{type(error).__name__}: {error}"
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"learn2learn is not installed ({reason})")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in [n for n in sys.modules if n == "learn2learn" or n.startswith("learn2learn.")]:
        del sys.modules[name]  # drop what the failed import left half-initialised
    for package, folder in (("learn2learn", root), ("learn2learn.algorithms", root / "algorithms")):
        stub = types.ModuleType(package)
        stub.__path__ = [str(folder)]  # a bare package: submodules import, __init__ does not run
        sys.modules[package] = stub
    maml = importlib.import_module("learn2learn.algorithms.maml")
    version_text = (root / "_version.py").read_text()
    version = version_text.split("=")[-1].strip().strip("'\"")
    return maml.MAML, version, f"{_NOTE}; algorithm modules only (package import failed: {reason})"


def probe() -> tuple[str | None, str]:
    """learn2learn's version and how it was loaded, or None with the reason it is missing."""
    try:
        _, version, note = _load_maml_class()
    except Exception as error:  # noqa: BLE001
        return None, f"not importable: {error}"
    return version, note


def prepare(model: nn.Module, workload: Workload) -> Callable[[Batch], None]:
    """Per task ``learner = maml.clone()``, ``learner.adapt(support_loss)`` per inner step, then
    the query loss over the number of tasks is backpropagated."""
    maml_class, _, _ = _load_maml_class()
    loss_fn = loss_function(workload)
    maml = maml_class(model, lr=workload.inner_lr, first_order=workload.first_order)

    def meta_gradient(batch: Batch) -> None:
        support_x, support_y, query_x, query_y = batch
        tasks = support_x.shape[0]
        for t in range(tasks):
            learner = maml.clone()
            for _ in range(workload.inner_steps):
                learner.adapt(loss_fn(learner(support_x[t]), support_y[t]))
            (loss_fn(learner(query_x[t]), query_y[t]) / tasks).backward()

    return meta_gradient
