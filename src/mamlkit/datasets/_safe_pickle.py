"""Loading the pickle files datasets are published as, without running arbitrary code.

miniImageNet and CIFAR-100 are distributed as pickles of dicts, lists, strings and numpy arrays.
``pickle.load`` would execute whatever a tampered file asks for; this unpickler resolves only the
few globals that numpy arrays need and refuses everything else with a clear error.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def _normalise_keys(value: Any) -> Any:
    """Python 2 pickles can come back with ``bytes`` dict keys; make every key ``str``."""
    if isinstance(value, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _normalise_keys(v)
            for k, v in value.items()
        }
    return value


def load_data_pickle(path: Path) -> Any:
    """Unpickle a data file (dicts, lists, strings, numpy arrays only) with str dict keys.

    ``encoding="latin1"`` reads Python 2 pickles (CIFAR-100's) with their numpy arrays intact.
    Raises ``ValueError`` naming the file when it is truncated, not a pickle, or asks for code
    other than numpy's array reconstruction.
    """
    with open(path, "rb") as handle:
        return _load(handle, str(path))


def load_data_pickle_bytes(data: bytes, where: str) -> Any:
    """:func:`load_data_pickle` for bytes already in memory (e.g. a member of an archive)."""
    return _load(io.BytesIO(data), where)


def _load(handle: BinaryIO, where: str) -> Any:
    try:
        return _normalise_keys(_NumpyOnlyUnpickler(handle, encoding="latin1").load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{where} is not a readable data pickle ({type(error).__name__}: {error}). The file is "
            "corrupt, truncated, or not in the published format; delete it and download it again."
        ) from error
