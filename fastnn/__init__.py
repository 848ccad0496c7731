"""fastnn: fast fully-connected neural networks for the CPU.

>>> import fastnn
>>> net = fastnn.Network([784, 30, 10], activation="sigmoid", loss="mse", seed=0)
>>> (X, y), (X_test, y_test) = fastnn.datasets.load_mnist()      # doctest: +SKIP
>>> net.fit(X[:50000], y[:50000], epochs=30, batch_size=10, lr=3.0)  # doctest: +SKIP
>>> net.evaluate(X_test, y_test)                                  # doctest: +SKIP
"""
# first: the compiled core loads libgomp, which reads its spin count then
from fastnn._openmp import load_core as _load_core
_load_core()
from fastnn import datasets
from fastnn._version import __version__
from fastnn.exceptions import (ConfigError, DataError, DatasetNotFound, FastnnError,
                               ModelFileError, NetworkBusy, OutputError, ResourceError,
                               TrainingDiverged)
from fastnn.ensemble import Ensemble
from fastnn.history import History
from fastnn.io import load
from fastnn.many import fit_many
from fastnn.network import Network

__all__ = ["Network", "Ensemble", "History", "load", "fit_many", "datasets", "FastnnError", "ConfigError",
           "DataError", "DatasetNotFound", "ModelFileError", "NetworkBusy", "OutputError",
           "ResourceError", "TrainingDiverged", "__version__"]
