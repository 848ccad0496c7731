"""Type aliases of the public API (for annotations only)."""
import os
from typing import Any, Union

import numpy as np
import numpy.typing as npt

#: An array fastnn returns.
Array = npt.NDArray[Any]
#: Anything NumPy turns into an array: inputs, labels, weights.
ArrayLike = npt.ArrayLike
#: A file name.
PathLike = Union[str, os.PathLike[str]]
#: One epoch's metrics, name -> value ("loss", "val_loss", "lr", ...).
Metrics = dict[str, float]
#: A NumPy dtype or its name ("float32").
DTypeLike = Union[str, np.dtype[Any], type]
