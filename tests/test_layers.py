"""Layer objects and the Plan built from them: shapes, configs, the flat
layout, the kernel's table, and Network built from layers."""
import math
import re

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastnn
from fastnn import ConfigError, DataError, Network, _kernels
from fastnn.exceptions import FastnnError
from fastnn.initializers import INITIALIZERS
from fastnn.layers import (LAYERS, Conv2D, Dense, Dropout, Flatten, L2Pool2D, MaxPool2D,
                           from_config)
from fastnn.plan import Plan

LENET = [(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2), Dense(100),
         Dense(10)]


@pytest.mark.parametrize("layer, text", [
    (Dense(30), "Dense(30)"),
    (Dense(10, activation="softmax"), "Dense(10, activation='softmax')"),
    (Conv2D(20, 5), "Conv2D(20, 5)"),
    (Conv2D(8, (5, 3), stride=2, padding="same", activation="relu"),
     "Conv2D(8, (5, 3), stride=2, padding='same', activation='relu')"),
    (Conv2D(8, 3, stride=(1, 2)), "Conv2D(8, 3, stride=(1, 2))"),
    (MaxPool2D(2), "MaxPool2D(2)"),
    (MaxPool2D(3, stride=2), "MaxPool2D(3, stride=2)"),
    (L2Pool2D((2, 3)), "L2Pool2D((2, 3))"),
    (Flatten(), "Flatten()"),
    (Dropout(0.5), "Dropout(0.5)"),
])
def test_repr_is_the_call_that_builds_the_layer(layer, text):
    assert repr(layer) == text
    assert eval(text) == layer          # noqa: S307 (our own text)


@pytest.mark.parametrize("build, message", [
    (lambda: Dense(0), "Dense: units must be an integer >= 1, not 0"),
    (lambda: Dense(10, activation="relux"), r"Unknown activation 'relux'; expected one of \["),
    (lambda: Conv2D(20, 5, padding="full"),
     r"padding must be one of \['valid', 'same'\], not 'full'"),
    (lambda: Conv2D(20, (5, 5, 5)), "kernel must be an integer or a pair"),
    (lambda: Conv2D(2.5, 5), "filters must be an integer >= 1"),
    (lambda: Conv2D(20, 5, stride=0), "stride must be an integer >= 1"),
    (lambda: MaxPool2D(True), "size must be an integer >= 1"),
    (lambda: L2Pool2D(2, stride=-1), "stride must be an integer >= 1"),
    (lambda: Dropout(1.0), "rate must be a number >= 0 and < 1, not 1.0"),
    (lambda: Dropout("a"), "rate must be a number"),
])
def test_invalid_arguments_are_config_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize("layer, shape_in, shape_out", [
    (Conv2D(20, 5), (28, 28, 1), (24, 24, 20)),
    (Conv2D(4, 3, stride=2), (9, 8, 3), (4, 3, 4)),
    (Conv2D(4, 3, padding="same"), (9, 8, 3), (9, 8, 4)),
    (Conv2D(4, (4, 2), stride=2, padding="same"), (9, 8, 3), (5, 4, 4)),
    (MaxPool2D(2), (24, 24, 20), (12, 12, 20)),
    (MaxPool2D(3, stride=2), (7, 6, 2), (3, 2, 2)),
    (L2Pool2D(2, stride=1), (5, 5, 3), (4, 4, 3)),
    (Flatten(), (4, 4, 3), (48,)),
    (Dropout(0.3), (4, 4, 3), (4, 4, 3)),
    (Dense(7), (48,), (7,)),
])
def test_output_shapes(layer, shape_in, shape_out):
    # valid: (H - k) // s + 1; same: ceil(H / s) (PyTorch's and Keras' formulas)
    assert layer.output_shape(shape_in) == shape_out


def test_same_padding_puts_the_odd_row_at_the_bottom_right():
    assert Conv2D(1, 4, padding="same").padding_amounts((6, 6, 1)) == (1, 2, 1, 2)
    assert Conv2D(1, 3, stride=2, padding="same").padding_amounts((6, 7, 1)) == (0, 1, 1, 1)
    assert Conv2D(1, 3).padding_amounts((6, 7, 1)) == (0, 0, 0, 0)


def test_layers_refuse_inputs_they_cannot_take():
    with pytest.raises(ConfigError, match="needs an input at least 5 high, not 3"):
        Conv2D(2, 5).output_shape((3, 9, 1))
    with pytest.raises(ConfigError, match="needs an image input"):
        Conv2D(2, 5).output_shape((100,))
    with pytest.raises(ConfigError, match="needs an input of at least 3x3"):
        MaxPool2D(3).output_shape((2, 8, 1))
    with pytest.raises(ConfigError, match="Flatten"):
        Dense(3).output_shape((2, 2, 1))


@pytest.mark.parametrize("layer", [Dense(30), Dense(10, activation="softmax"), Conv2D(20, 5),
                                   Conv2D(8, (5, 3), stride=(2, 1), padding="same",
                                          activation="tanh"),
                                   MaxPool2D(2), MaxPool2D(3, stride=1), L2Pool2D(2), Flatten(),
                                   Dropout(0.25)])
def test_config_round_trip(layer):
    import json

    config = json.loads(json.dumps(layer.config()))
    assert config["type"] in LAYERS
    assert from_config(config) == layer


@pytest.mark.parametrize("config, message", [
    ({"type": "lstm", "units": 3}, r"Unknown layer type 'lstm'; expected one of \['conv2d'"),
    ({"type": "dense", "units": 3, "bias": False}, r"Dense takes .* not \['bias'\]"),
    ({"type": "conv2d", "filters": 3}, "Conv2D: .*kernel"),
    ({"units": 3}, "Unknown layer type None"),
    (["dense", 3], "a layer config must be an object"),
    ({"type": "dense", "units": -3}, "units must be an integer >= 1"),
])
def test_bad_configs_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        from_config(config)


# ------------------------------------------------------------------- Plan

def test_a_dense_stack_keeps_the_original_flat_layout_and_initialisation():
    # W_l (I, O) row-major then b_l, layer after layer; nielsen draws W then b
    plan = Plan.parse([7, 5, 3])
    assert plan.layers == (Dense(5), Dense(3)) and plan.sizes == (7, 5, 3)
    assert plan.n_params == 7 * 5 + 5 + 5 * 3 + 3
    params = np.arange(plan.n_params, dtype=np.float64)
    (W0, b0), (W1, b1) = plan.views(params)
    assert_array_equal(W0, np.arange(35).reshape(7, 5))
    assert_array_equal(b0, np.arange(35, 40))
    assert_array_equal(W1, np.arange(40, 55).reshape(5, 3))
    assert_array_equal(b1, np.arange(55, 58))
    plan.init(params, INITIALIZERS["nielsen"], np.random.default_rng(4))
    rng = np.random.default_rng(4)
    expected = []
    for i, o in ((7, 5), (5, 3)):
        expected += [(rng.standard_normal((i, o)) / np.sqrt(i)).ravel(), rng.standard_normal(o)]
    assert_array_equal(params, np.concatenate(expected))
    assert plan.tensor_names() == [("weights.0", "biases.0"), ("weights.1", "biases.1")]
    assert plan.plain_dense and plan.image_shape is None


def test_lenet_plan():
    plan = Plan.parse(LENET, activation="relu", output="softmax")
    assert plan.layers == (Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2), Flatten(),
                           Dense(100), Dense(10))
    assert plan.shapes == ((28, 28, 1), (24, 24, 20), (12, 12, 20), (8, 8, 40), (4, 4, 40),
                           (640,), (100,), (10,))
    assert plan.activations == ("relu", None, "relu", None, None, "relu", "softmax")
    assert [s.w_shape for s in plan.slots] == [(5, 5, 1, 20), (5, 5, 20, 40), (640, 100),
                                                (100, 10)]
    assert plan.n_params == 520 + (500 * 40 + 40) + (640 * 100 + 100) + 1010
    assert plan.sizes == (784, 11520, 2880, 2560, 640, 640, 100, 10)
    assert plan.widths() == [784, 11520, 2880, 2560, 640, 100, 10]
    assert not plan.plain_dense and plan.image_shape == (28, 28, 1)
    rows = [dict(zip(["kind", "act", "in", "out", "window", "stride", "pad", "w", "b"],
                     [r[0], r[1], tuple(r[2:5]), tuple(r[5:8]), tuple(r[8:10]),
                      tuple(r[10:12]), tuple(r[12:14]), r[14], r[15]]))
            for r in plan.table()[0].tolist()]
    assert [r["kind"] for r in rows] == [_kernels.CONV2D, _kernels.MAXPOOL2D, _kernels.CONV2D,
                                         _kernels.MAXPOOL2D, _kernels.DENSE, _kernels.DENSE]
    assert rows[2] == dict(kind=1, act=3, **{"in": (12, 12, 20)}, out=(8, 8, 40), window=(5, 5),
                           stride=(1, 1), pad=(0, 0), w=520, b=520 + 20000)
    assert rows[4]["in"] == (4, 4, 40) and rows[4]["out"] == (1, 1, 100)   # a Dense after images
    assert rows[1]["w"] == rows[1]["b"] == -1
    described = plan.describe()
    assert [d["type"] for d in described] == ["Conv2D", "MaxPool2D", "Conv2D", "MaxPool2D",
                                              "Flatten", "Dense", "Dense"]
    assert described[0] == {"type": "Conv2D", "layer": "Conv2D(20, 5)",
                            "output_shape": (24, 24, 20), "activation": "relu", "params": 520}
    assert sum(d["params"] for d in described) == plan.n_params


def test_plan_config_round_trip():
    import json

    plan = Plan.parse([(12, 10), Conv2D(3, 3, padding="same"), L2Pool2D(2), Dropout(0.2),
                       Dense(8, activation="tanh"), Dense(2)], activation="relu",
                      output="sigmoid")
    again = Plan.from_config(json.loads(json.dumps(plan.config())))
    # the config holds each parametric layer with its resolved activation
    assert again.layers[0] == Conv2D(3, 3, padding="same", activation="relu")
    assert again.layers[-1] == Dense(2, activation="sigmoid")
    assert [type(l) for l in again.layers] == [type(l) for l in plan.layers]
    assert again.activations == plan.activations and again.shapes == plan.shapes
    assert again.input_shape == (12, 10, 1)
    assert_array_equal(again.table()[0], plan.table()[0])


def test_conv_initialisation_uses_its_fan_in():
    plan = Plan.parse([(30, 30, 8), Conv2D(64, 5), Dense(2)])
    params = np.empty(plan.n_params)
    for name, std in (("he", np.sqrt(2 / 200)), ("nielsen", np.sqrt(1 / 200)),
                      ("xavier", np.sqrt(2 / (200 + 5 * 5 * 64)))):
        plan.init(params, INITIALIZERS[name], np.random.default_rng(0))
        W, b = plan.views(params)[0]
        assert W.shape == (5, 5, 8, 64)
        assert W.std() == pytest.approx(std, rel=0.03), name


def test_dropout_layers_and_fit_dropout_become_keep_probabilities():
    plan = Plan.parse([(8, 8, 1), Dropout(0.1), Conv2D(2, 3), MaxPool2D(2), Dropout(0.5),
                       Dense(6), Dropout(0.2), Dense(5), Dense(3)])
    table, keep = plan.table()
    # rows: conv, pool, dense, dense, dense; a Dropout drops the next row's input
    np.testing.assert_allclose(keep, [0.9, 1, 0.5, 0.8, 1])
    assert plan.hidden_dense == (5, 7)
    _, keep = plan.table(dropout=[0.5, 0.25])     # fit's dropout on the hidden Dense outputs
    np.testing.assert_allclose(keep, [0.9, 1, 0.5, 0.4, 0.75])
    with pytest.raises(ConfigError, match="1 dropout rates for 2 hidden Dense layers"):
        plan.table(dropout=[0.5])


@pytest.mark.parametrize("spec, kwargs, message", [
    ([(8, 8, 1), Conv2D(2, 3), MaxPool2D(2)], {}, "last layer must be Dense or Conv2D"),
    ([(8, 8, 1), Dense(4), Conv2D(2, 3), Dense(2)], {}, "needs an image input"),
    ([8, Conv2D(2, 3), Dense(2)], {}, "needs an image input"),
    ([(8, 8, 1, 1), Dense(2)], {}, "input shape must be an int"),
    ([(8, 0), Dense(2)], {}, "integers >= 1"),
    ([(8, 8), "conv", Dense(2)], {}, "a layer must be a fastnn.layers object"),
    ([(8, 8), Dense(4), Dense(2)], dict(activation=["relu", "tanh"]),
     "one name per hidden layer: 1 for hidden Dense and Conv2D layers, not 2"),
    ([(8, 8), Dense(4, activation="tanh"), Dense(2)], dict(activation=["relu"]),
     "has activation 'tanh', but the activation list gives it 'relu'"),
    ([(8, 8), Dense(4), Dense(2, activation="softmax")], dict(output="sigmoid"),
     "has activation 'softmax', but output='sigmoid'"),
    ([(8, 8), Conv2D(2, 3, activation="softmax"), Dense(2)], {},
     "'softmax' can only be the output activation"),
    ([(8, 8), Conv2D(2, 9), Dense(2)], {}, "needs an input at least 9 high, not 8"),
])
def test_inconsistent_architectures_are_config_errors(spec, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Network(spec, **kwargs)


# ----------------------------------------------------------------- Network

def test_a_list_of_ints_is_the_dense_network_it_always_was():
    a = Network([12, 8, 3], activation="tanh", seed=5)
    b = Network([12, Dense(8), Dense(3)], activation="tanh", seed=5)
    assert repr(a) == repr(b) == ("Network([12, 8, 3], activation='tanh', output='tanh', "
                                  "loss='mse', dtype='float32', seed=5)")
    assert a.sizes == (12, 8, 3) and a.activations == ("tanh", "tanh")
    assert_array_equal(a._params, b._params)
    assert [W.shape for W in a.weights] == [(12, 8), (8, 3)]


def test_conv_network_repr_builds_the_same_network():
    net = Network(LENET, activation="relu", output="softmax", loss="cross_entropy", seed=3)
    text = repr(net)
    assert text.startswith("Network([(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), "
                           "MaxPool2D(2), Flatten(), Dense(100), Dense(10)], activation='relu', "
                           "output='softmax'")
    again = eval(text, {"Network": Network, **{c.__name__: c for c in LAYERS.values()}})  # noqa
    assert_array_equal(again._params, net._params)
    assert [W.shape for W in net.weights] == [(5, 5, 1, 20), (5, 5, 20, 40), (640, 100),
                                              (100, 10)]
    assert [b.shape for b in net.biases] == [(20,), (40,), (100,), (10,)]
    assert net.input_shape == (28, 28, 1) and net.layers[4] == Flatten()


def test_image_arrays_are_taken_as_rows_in_hwc_order():
    rng = np.random.default_rng(0)
    net = Network([(6, 5, 2), Conv2D(3, 3), Dense(4)], activation="tanh", output="softmax",
                  loss="cross_entropy", dtype="float64", seed=0)
    images = rng.integers(0, 256, (7, 6, 5, 2)).astype(np.uint8)
    rows = images.reshape(7, -1)
    assert_array_equal(net.forward(images), net.forward(rows))
    y = rng.integers(0, 4, 7)
    assert net.evaluate(images, y) == net.evaluate(rows, y)
    gray = Network([(6, 5), Conv2D(3, 3), Dense(4)], seed=0)
    assert gray.input_shape == (6, 5, 1)
    assert_array_equal(gray.forward(images[..., 0]), gray.forward(images[..., :1]))
    with pytest.raises(DataError, match=r"X has shape \(7, 2, 6, 5\), but this network takes "
                                        r"images of shape \(n, 6, 5, 2\)"):
        net.forward(images.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match="X has 59 features, but this network expects 60"):
        net.forward(rows[:, 1:])


def test_conv_weights_are_views_and_assignable():
    net = Network([(6, 6, 2), Conv2D(3, 3), Dense(2)], dtype="float64", seed=0)
    W = np.random.default_rng(1).normal(size=(3, 3, 2, 3))
    net.weights[0] = W
    assert_array_equal(net._params[:54], W.ravel())
    with pytest.raises(DataError, match=r"weights\[0\] has shape \(3, 3, 2, 3\)"):
        net.weights[0] = W[:, :, :1]


def test_fit_dropout_counts_hidden_dense_layers_of_conv_nets():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 36)), rng.integers(0, 2, 20)
    net = Network([(6, 6, 1), Conv2D(2, 3), Dense(3)], output="softmax", loss="cross_entropy")
    with pytest.raises(ConfigError, match="outputs of hidden Dense layers, and this network has "
                                          "none; add Dropout layers"):
        net.fit(X, y, epochs=1, dropout=0.5)
    net = Network([(6, 6, 1), Conv2D(2, 3), Dense(5), Dense(3)])
    with pytest.raises(ConfigError, match=r"one per hidden Dense layer \(1\), not 2"):
        net.fit(X, y, epochs=1, dropout=[0.5, 0.5])
    with pytest.raises(ConfigError, match="square images, but the network takes 37"):
        Network([37, 3]).fit(np.zeros((2, 37)), [0, 1], augment="shift")


def test_shift_takes_non_square_images_with_channels():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (30, 7 * 5 * 3)).astype(np.uint8)
    y = rng.integers(0, 2, 30)
    nets = [Network([(7, 5, 3), Conv2D(2, 3), Dense(2)], seed=0, dtype="float64", backend=b)
            for b in ("cython", "numpy")]
    for net in nets:
        net.fit(X, y, epochs=2, batch_size=4, augment="shift")
    np.testing.assert_allclose(nets[0]._params, nets[1]._params, rtol=1e-12, atol=1e-13)
    plain = Network([(7, 5, 3), Conv2D(2, 3), Dense(2)], seed=0, dtype="float64")
    plain.fit(X, y, epochs=2, batch_size=4)
    assert not np.allclose(plain._params, nets[0]._params)


# ------------------------------------------------------------ layer tokens

@pytest.mark.parametrize("text, expected", [
    ("784,30,10", [(784,), Dense(30), Dense(10)]),
    ("28x28,conv20:5,maxpool2,conv40:5,maxpool2,100,10",
     [(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Conv2D(40, 5), MaxPool2D(2), Dense(100),
      Dense(10)]),
    ("32x32x3, Conv8:3x5:s2x1:same:tanh, l2pool3:s2, dropout.5, flatten, 100:relu, 10",
     [(32, 32, 3), Conv2D(8, (3, 5), stride=(2, 1), padding="same", activation="tanh"),
      L2Pool2D(3, stride=2), Dropout(0.5), Flatten(), Dense(100, activation="relu"), Dense(10)]),
    ("6x6,conv2:3:valid:s2,maxpool2x1:s1,4",
     [(6, 6, 1), Conv2D(2, 3, stride=2), MaxPool2D((2, 1), stride=1), Dense(4)]),
])
def test_layer_tokens_parse_into_layers(text, expected):
    from fastnn.layers import parse

    assert parse(text) == expected


def test_without_an_input_token_the_input_shape_is_given():
    from fastnn.layers import parse

    assert parse("conv4:3,10", input_shape=(8, 8, 1)) == [(8, 8, 1), Conv2D(4, 3), Dense(10)]
    # a number first is always the input, as --layers 784,30,10 always was
    assert parse("100,10", input_shape=(784,)) == [(100,), Dense(10)]
    with pytest.raises(ConfigError, match="does not start with an input shape"):
        parse("conv4:3,10")


@pytest.mark.parametrize("text, message", [
    ("28x28,conv20", "a convolution needs filters and a kernel"),
    ("28x28,conv20:5:s2:s3", r"'s3' is a second stride \(after 's2'\); a convolution has one"),
    ("28x28,maxpool", "cannot read layer token 'maxpool'"),
    ("28x28,dropout", "cannot read layer token 'dropout'"),
    ("28x28,dropout1.5", r"Dropout: rate must be a number >= 0 and < 1, not 1.5"),
    ("28x28,100:relu:tanh", "cannot read layer token '100:relu:tanh'"),
    ("28x28,0", r"Dense: units must be an integer >= 1, not 0"),
    ("0x28,10", "an input shape's sides must be >= 1"),
    ("28x28,,10", "an empty layer token"),
])
def test_bad_layer_tokens_name_the_valid_ones(text, message):
    from fastnn.layers import parse

    with pytest.raises(ConfigError, match=message) as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_the_summary_table_has_a_row_per_layer_and_the_total():
    net = Network([(8, 8, 2), Conv2D(3, 3, padding="same"), L2Pool2D(2), Dropout(0.5), 5],
                  activation="relu", output="softmax", loss="cross_entropy", seed=0)
    rows = [re.split(r"\s{2,}", line.strip()) for line in net.plan.summary().splitlines()]
    assert rows == [["#", "layer", "output shape", "activation", "parameters"],
                    ["0", "input", "8x8x2"],
                    ["1", "Conv2D(3, 3, padding='same')", "8x8x3", "relu", "57"],
                    ["2", "L2Pool2D(2)", "4x4x3", "0"],
                    ["3", "Dropout(0.5)", "4x4x3", "0"],
                    ["4", "Flatten()", "48", "0"],
                    ["5", "Dense(5)", "5", "softmax", "245"],
                    ["total", "302"]]


def test_tensor_names_are_those_of_the_model_file():
    plan = Plan.parse([(6, 6, 1), Conv2D(2, 3), MaxPool2D(2), 4])
    assert plan.tensor_names() == [("layers.0.weights", "layers.0.biases"),
                                   ("layers.3.weights", "layers.3.biases")]
    assert Plan.parse([5, 4, 3]).tensor_names() == [("weights.0", "biases.0"),
                                                    ("weights.1", "biases.1")]
