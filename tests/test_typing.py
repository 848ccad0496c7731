"""The public API's type hints: complete, and resolvable at run time.

mypy checks them against the code in CI (`python -m mypy`, see
[tool.mypy] in pyproject.toml); this test checks what users' tools see:
every public function of the API has a hint for each parameter and its
return, and typing.get_type_hints resolves them (no forward reference to
a name the module does not have).
"""
import inspect
import typing

import pytest
from conftest import needs

import fastnn
from fastnn import datasets, io, schedules
from fastnn.network import Network

PUBLIC = [Network.__init__, Network.fit, Network.forward, Network.predict, Network.evaluate,
          Network.gradient, Network.save, Network.check_data, io.load, io.save,
          io.read_header, io.read_metadata, fastnn.activations.get_activation,
          fastnn.losses.get_loss, fastnn.optimizers.get_optimizer,
          fastnn.initializers.get_initializer, schedules.parse, schedules.Schedule.next_lr,
          datasets.load_mnist, datasets.download_mnist, fastnn.data.load_data,
          fastnn.data.load_csv, fastnn.data.load_npy, fastnn.History.append]


@pytest.mark.parametrize("function", PUBLIC, ids=lambda f: f.__qualname__)
def test_public_functions_are_fully_annotated(function):
    # fastnn.io names Network only for type checkers (an import cycle otherwise)
    hints = typing.get_type_hints(function, localns={"Network": Network})
    params = [p for p in inspect.signature(function).parameters if p != "self"]
    assert set(params) <= set(hints), sorted(set(params) - set(hints))
    assert "return" in hints


def test_sklearn_estimators_are_annotated():
    needs("sklearn")
    import fastnn.sklearn as sk

    for function in (sk.MLPClassifier.__init__, sk.MLPClassifier.fit,
                     sk.MLPClassifier.predict_proba, sk.MLPRegressor.fit,
                     sk.MLPRegressor.predict):
        hints = typing.get_type_hints(function)
        assert "return" in hints
        assert "X" in hints or function.__name__ == "__init__"
    # scikit-learn reads the parameters from the signature: still all there
    assert "class_weight" in sk.MLPClassifier().get_params()
