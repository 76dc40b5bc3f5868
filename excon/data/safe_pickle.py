"""A pickle loader that can only rebuild numpy arrays (plus builtin containers).

The original CIFAR-100 and Animal-MNIST files are pickles; a plain `pickle.load` would run
whatever a tampered file asks for, so every global the stream names is checked against an
allow-list of numpy's array constructors.
"""

import pickle
from typing import BinaryIO

import numpy as np
from numpy._core.multiarray import _reconstruct, scalar
from numpy._core.numeric import _frombuffer

from excon.data.errors import DataError

# Files written with numpy 1.x name `numpy.core`, numpy 2 names `numpy._core`: admit both,
# mapped straight to the objects so nothing is imported by name.
_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = scalar  # numpy scalars inside lists
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer  # protocol-5 arrays


class RefusedGlobal(pickle.UnpicklingError):
    """The stream asked for something other than a numpy array constructor."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refusing to load global {module}.{name}") from None


def safe_load(file: BinaryIO, source: str, encoding: str = "bytes") -> object:
    """Unpickle `file` admitting only numpy arrays; any failure is a DataError naming `source`.

    `encoding="bytes"` keeps Python 2 strings (CIFAR's keys and the arrays' raw data) as bytes.
    """
    try:
        return _NumpyOnlyUnpickler(file, encoding=encoding).load()
    except RefusedGlobal as exc:
        raise DataError(f"{source}: unsafe pickle, not loaded ({exc})") from exc
    except Exception as exc:
        # A damaged stream fails in many ways (UnpicklingError, EOFError, gzip, ValueError...):
        # all of them mean the file is not what it should be.
        raise DataError(
            f"{source}: truncated or corrupt file ({type(exc).__name__}: {exc})"
        ) from exc
