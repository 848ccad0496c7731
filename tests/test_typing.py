"""The public API's type hints: complete, and resolvable at run time.

mypy checks them against the code in CI (`python -m mypy`, see
[tool.mypy] in pyproject.toml); these tests check what users' tools see:
every public function of the API has a hint for each parameter and its
return, typing.get_type_hints resolves them (no forward reference to
a name the module does not have), and mypy itself sees each public
method's own signature in code that uses fastnn (a decorator can erase it
to Any).
"""
import inspect
import re
import subprocess
import sys
import typing

import pytest
from conftest import REPO, needs

import fastnn
# each module named, not reached as an attribute of fastnn: `fastnn.data` is
# there only once something has imported it
from fastnn import (activations, data, datasets, initializers, io, losses, optimizers,
                    schedules)
from fastnn.network import Network

PUBLIC = [Network.__init__, Network.fit, Network.forward, Network.predict, Network.evaluate,
          Network.gradient, Network.save, Network.check_data, io.load, io.save,
          io.read_header, io.read_metadata, activations.get_activation,
          losses.get_loss, optimizers.get_optimizer,
          initializers.get_initializer, schedules.parse, schedules.Schedule.next_lr,
          datasets.load_mnist, datasets.download_mnist, data.load_data,
          data.load_csv, data.load_npy, fastnn.History.append]


@pytest.mark.parametrize("function", PUBLIC, ids=lambda f: f.__qualname__)
def test_public_functions_are_fully_annotated(function):
    hints = typing.get_type_hints(function)
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


# What a user's code calls, as mypy sees it there: (expression, the function
# whose parameters its revealed signature must name).
REVEALED = {
    "fastnn.Network([4, 3, 2]).fit": Network.fit,
    "fastnn.Network([4, 3, 2]).forward": Network.forward,
    "fastnn.Network([4, 3, 2]).predict": Network.predict,
    "fastnn.Network([4, 3, 2]).evaluate": Network.evaluate,
    "fastnn.Network([4, 3, 2]).save": Network.save,
    "fastnn.load": fastnn.load,
    "MLPClassifier().fit": "fit",
    "MLPClassifier().predict": "predict",
    "MLPRegressor().fit": "fit",
    "MLPRegressor().predict": "predict",
}


def test_mypy_sees_the_public_methods_signatures(tmp_path):
    needs("mypy")
    needs("sklearn")
    from fastnn.sklearn import MLPClassifier, MLPRegressor

    source = tmp_path / "use_fastnn.py"
    source.write_text("import fastnn\nfrom fastnn.sklearn import MLPClassifier, MLPRegressor\n"
                      + "".join(f"reveal_type({e})\n" for e in REVEALED))
    # from the repository, with its configuration and the cache `python -m mypy` left
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           str(REPO / "pyproject.toml"), str(source)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    revealed = re.findall(r'Revealed type is "(.*)"', proc.stdout)
    assert len(revealed) == len(REVEALED), proc.stdout + proc.stderr
    for (expression, function), signature in zip(REVEALED.items(), revealed):
        if isinstance(function, str):
            function = getattr(MLPClassifier if "Classifier" in expression else MLPRegressor,
                               function)
        # Any itself, or the erased `def (*Any, **Any) -> Any` of an untyped wrapper
        assert signature.startswith("def ("), (expression, signature)
        assert not re.search(r"\*\*?\w+: Any\b|-> Any$", signature), (expression, signature)
        names = [p for p in inspect.signature(function).parameters if p != "self"]
        missing = [p for p in names if not re.search(rf"\b{p}: ", signature)]
        assert not missing, (expression, missing, signature)
