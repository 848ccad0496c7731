"""The registries of activations, losses and initialisations."""
import numpy as np
import pytest

from fastnn import ConfigError
from fastnn.activations import ACTIVATIONS, get_activation
from fastnn.initializers import INITIALIZERS, get_initializer
from fastnn.losses import LOSSES, get_loss
from fastnn.optimizers import OPTIMIZERS, get_optimizer


@pytest.mark.parametrize("lookup, kind, valid", [
    (get_activation, "activation", ACTIVATIONS),
    (get_loss, "loss", LOSSES),
    (get_initializer, "init", INITIALIZERS),
    (get_optimizer, "optimizer", OPTIMIZERS),
])
def test_unknown_names_list_the_valid_ones(lookup, kind, valid):
    with pytest.raises(ConfigError) as info:
        lookup("nonsense")
    assert str(info.value) == f"Unknown {kind} 'nonsense'; expected one of {sorted(valid)}"
    with pytest.raises(ConfigError):
        lookup(None)


def test_codes_are_unique_and_match_the_kernels():
    from fastnn import _core

    for registry in (ACTIVATIONS, LOSSES, OPTIMIZERS):
        assert len({entry.code for entry in registry.values()}) == len(registry)
        for name, entry in registry.items():
            assert getattr(_core, name.upper()) == entry.code


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if not a.output_only])
def test_derivatives_from_the_stored_activation(name):
    act = ACTIVATIONS[name]
    z = np.linspace(-3, 3, 61)
    z = z[np.abs(z) > 1e-3]
    h = 1e-6
    numeric = (act.fn(z + h, 0.1) - act.fn(z - h, 0.1)) / (2 * h)
    np.testing.assert_allclose(act.derivative(act.fn(z, 0.1), 0.1), numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name, w_std, b_std", [
    ("nielsen", 1 / np.sqrt(400), 1.0), ("large", 1.0, 1.0),
    ("xavier", np.sqrt(2 / (400 + 300)), 0.0), ("he", np.sqrt(2 / 400), 0.0),
])
def test_initialisations(name, w_std, b_std):
    (W, b), = INITIALIZERS[name]([400, 300], np.random.default_rng(0))
    assert W.shape == (400, 300) and b.shape == (300,)
    assert W.std() == pytest.approx(w_std, rel=0.02)
    assert b.std() == pytest.approx(b_std, rel=0.2, abs=1e-12)
