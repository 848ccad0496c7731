"""The plan of a network: its layers resolved, once, into everything else.

``Plan(input_shape, layers, activation, output)`` owns what the rest of
fastnn needs to know about an architecture, so that nothing re-derives it:
every layer's input and output shape, its resolved activation, where its
parameters live in the flat vector (and their views and tensor names), the
initialisation, the kernel's layer table and keep probabilities, the widths
of the activation buffers, and a per-layer description (``describe``, for
``fastnn info``).

A list of ints is a dense stack, as it always was:
``Plan.parse([784, 30, 10])`` is ``Plan((784,), [Dense(30), Dense(10)])``
and has fastnn's original flat layout (W_0 (784, 30) row-major, b_0, W_1,
b_1). A Flatten is implied before the first Dense layer that follows an
image.
"""
import math
import numbers
from dataclasses import dataclass

import numpy as np

from fastnn import _kernels as K
from fastnn.activations import get_activation
from fastnn.exceptions import ConfigError
from fastnn.layers import Dense, Dropout, Flatten, Layer, from_config

#: Most layers (rows of the kernel's table) a network may have: each needs a
#: random stream of its own, and stream 0 and the last are taken.
MAX_LAYERS = K.MAX_STREAMS - 2


@dataclass(frozen=True)
class Slot:
    """Where one parametric layer's parameters live in the flat vector."""

    layer: int          # its index in Plan.layers
    w_off: int
    w_shape: tuple
    b_off: int
    b_shape: tuple

    @property
    def w_size(self):
        return math.prod(self.w_shape)

    @property
    def end(self):
        return self.b_off + self.b_shape[0]


def input_shape_of(value):
    """An input shape: n -> (n,), (H, W) -> (H, W, 1), (H, W, C) as it is."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        shape = (value,)
    elif isinstance(value, (tuple, list)) and 1 <= len(value) <= 3:
        shape = tuple(value)
    else:
        raise ConfigError(f"the input shape must be an int, (H, W) or (H, W, C), not {value!r}")
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape):
        raise ConfigError(f"the input shape must hold integers >= 1, not {value!r}")
    shape = tuple(int(s) for s in shape)
    return shape + (1,) if len(shape) == 2 else shape


class Plan:
    """A network's layers resolved into shapes, activations, parameter
    offsets and the kernel's table.

    Parameters
    ----------
    input_shape : int or tuple
        Features per sample, ``n`` or an image ``(H, W)`` / ``(H, W, C)``.
    layers : sequence of fastnn.layers.Layer
        Ending with a Dense or Conv2D layer (the output layer).
    activation : str or sequence of str, default "sigmoid"
        Activation of the hidden Dense and Conv2D layers that do not name
        their own: one name, or one per hidden Dense/Conv2D layer.
    output : str, optional
        Activation of the output layer, unless it names its own; defaults
        to `activation` (its last entry if it is a list).

    Attributes
    ----------
    input_shape : tuple
    layers : tuple of Layer
        With the implied Flatten layers inserted.
    shapes : tuple of tuple
        ``shapes[i]`` is the input shape of ``layers[i]``; ``shapes[-1]``
        the network's output shape.
    activations : tuple
        The resolved activation of each layer (None for those without one).
    slots : tuple of Slot
        One per parametric layer, in order.
    n_params : int
    """

    def __init__(self, input_shape, layers, activation="sigmoid", output=None):
        self.input_shape = input_shape_of(input_shape)
        self.layers, self.shapes = self._resolve_shapes(layers)
        self.activations = self._resolve_activations(activation, output)
        self.slots, self.n_params = self._layout()
        self._rows, self._row_layers = self._table_rows()
        if len(self._rows) > MAX_LAYERS:
            raise ConfigError(f"a network has at most {MAX_LAYERS} layers, not {len(self._rows)}")

    # ------------------------------------------------------------- building

    @classmethod
    def parse(cls, spec, activation="sigmoid", output=None):
        """The plan of ``Network``'s first argument: a list of ints (a dense
        stack, ``[784, 30, 10]``), or an input shape followed by layers, where
        an int stands for a Dense layer (``[(28, 28, 1), Conv2D(20, 5),
        MaxPool2D(2), 100, 10]``)."""
        if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
            raise ConfigError(f"sizes must be a list of layer widths, or an input shape followed "
                              f"by layers, not {spec!r}")
        spec = list(spec)
        if len(spec) < 2:
            raise ConfigError(f"sizes needs an input and an output layer at least, not {spec}")
        if all(isinstance(s, numbers.Number) for s in spec):
            if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
                   for s in spec):
                raise ConfigError(f"layer sizes must be integers >= 1; got {spec}")
            return cls(spec[0], [Dense(int(s)) for s in spec[1:]], activation, output)
        layers = []
        for item in spec[1:]:
            if isinstance(item, Layer):
                layers.append(item)
            elif isinstance(item, numbers.Integral) and not isinstance(item, bool) and item >= 1:
                layers.append(Dense(int(item)))
            else:
                raise ConfigError(f"a layer must be a fastnn.layers object (Dense, Conv2D, "
                                  f"MaxPool2D, L2Pool2D, Flatten, Dropout) or a width >= 1, "
                                  f"not {item!r}")
        return cls(spec[0], layers, activation, output)

    def _resolve_shapes(self, layers):
        out, shapes = [], [self.input_shape]
        for layer in layers:
            if not isinstance(layer, Layer):
                raise ConfigError(f"not a layer: {layer!r}")
            if isinstance(layer, Dense) and len(shapes[-1]) != 1:
                out.append(Flatten())
                shapes.append(out[-1].output_shape(shapes[-1]))
            out.append(layer)
            shapes.append(layer.output_shape(shapes[-1]))
        if not out or not out[-1].parametric:
            last = repr(out[-1]) if out else "nothing"
            raise ConfigError(f"the last layer must be Dense or Conv2D (the output layer), "
                              f"not {last}")
        return tuple(out), tuple(shapes)

    def _resolve_activations(self, activation, output):
        params = [i for i, layer in enumerate(self.layers) if layer.parametric]
        hidden, last = params[:-1], params[-1]
        if isinstance(activation, str):
            names = [activation] * len(hidden)
        else:
            try:
                names = list(activation)
            except TypeError:
                raise ConfigError(f"activation must be a name or a list of names, "
                                  f"not {activation!r}") from None
            if len(names) != len(hidden):
                where = (f"sizes {list(self.sizes)}" if self.plain_dense
                         else "hidden Dense and Conv2D layers")
                raise ConfigError(f"activation lists one name per hidden layer: {len(hidden)} "
                                  f"for {where}, not {len(names)}")
        resolved = [None] * len(self.layers)
        for i, name in zip(hidden, names):
            own = self.layers[i].activation
            name = get_activation(name).name
            if own is not None and own != name and not isinstance(activation, str):
                raise ConfigError(f"{self.layers[i]!r} has activation {own!r}, but the "
                                  f"activation list gives it {name!r}")
            resolved[i] = own or name
            if get_activation(resolved[i]).output_only:
                raise ConfigError(f"{resolved[i]!r} can only be the output activation; "
                                  f"choose another for the hidden layers")
        own = self.layers[last].activation
        if output is None:
            output = own or (activation if isinstance(activation, str)
                             else (names or ["sigmoid"])[-1])
        output = get_activation(output).name
        if own is not None and own != output:
            raise ConfigError(f"the output layer {self.layers[last]!r} has activation {own!r}, "
                              f"but output={output!r}")
        resolved[last] = output
        return tuple(resolved)

    def _layout(self):
        slots, p = [], 0
        for i, layer in enumerate(self.layers):
            if layer.parametric:
                w_shape, b_shape = layer.param_shapes(self.shapes[i])
                w_size = math.prod(w_shape)
                slots.append(Slot(i, p, tuple(w_shape), p + w_size, tuple(b_shape)))
                p += w_size + b_shape[0]
        return tuple(slots), p

    def _table_rows(self):
        """The static part of the kernel's table: one row per layer the kernel
        runs, and the index in self.layers of each."""
        rows, which = [], []
        slot_of = {s.layer: s for s in self.slots}
        # a row's input is the previous row's output as it lies in memory
        # (Flatten and Dropout move nothing), so a Dense row after images
        # takes (H, W, C)
        shape_in = _hwc(self.input_shape)
        for i, layer in enumerate(self.layers):
            if layer.kind is None:
                continue
            act = get_activation(self.activations[i] or "identity").code
            slot = slot_of.get(i)
            shape_out = _hwc(self.shapes[i + 1])
            rows.append([layer.kind, act, *shape_in, *shape_out,
                         *layer.geometry(self.shapes[i]),
                         slot.w_off if slot else -1, slot.b_off if slot else -1])
            which.append(i)
            shape_in = shape_out
        return rows, which

    # ------------------------------------------------------------ describing

    @property
    def sizes(self):
        """Widths of the input and of each layer's output, aligned with
        layers: [784, 30, 10] for a dense stack."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n_inputs(self):
        return math.prod(self.input_shape)

    @property
    def n_outputs(self):
        return math.prod(self.shapes[-1])

    @property
    def output(self):
        """The output layer's activation."""
        return self.activations[-1]

    @property
    def plain_dense(self):
        """A dense stack with a vector input and nothing but Dense layers (what
        a list of ints builds, and what model-file format 1 describes)."""
        return len(self.input_shape) == 1 and all(type(l) is Dense for l in self.layers)

    @property
    def spatial(self):
        """Has convolution or pooling layers."""
        return any(layer.kind in (K.CONV2D, K.MAXPOOL2D, K.L2POOL2D) for layer in self.layers)

    @property
    def image_shape(self):
        """The input shape if it is an image (H, W, C), else None."""
        return self.input_shape if len(self.input_shape) == 3 else None

    @property
    def hidden_dense(self):
        """Indices (in layers) of the Dense layers other than the last: the
        layers whose outputs fit(dropout=...) drops."""
        return tuple(i for i, l in enumerate(self.layers[:-1]) if isinstance(l, Dense))

    def describe(self):
        """One dict per layer: type, output shape, activation, parameters
        (what ``fastnn info`` prints, like Keras' summary())."""
        count = {s.layer: s.w_size + s.b_shape[0] for s in self.slots}
        return [{"type": type(layer).__name__, "layer": repr(layer),
                 "output_shape": self.shapes[i + 1], "activation": self.activations[i],
                 "params": count.get(i, 0)} for i, layer in enumerate(self.layers)]

    def summary(self):
        """The layers as a text table, one row per layer (its repr, output
        shape, activation, parameters) and the total, like Keras' summary()
        (what ``fastnn info`` prints)."""
        rows = [("#", "layer", "output shape", "activation", "parameters"),
                ("0", "input", _fmt_shape(self.input_shape), "", "")]
        rows += [(str(i + 1), d["layer"], _fmt_shape(d["output_shape"]), d["activation"] or "",
                  f"{d['params']:,}") for i, d in enumerate(self.describe())]
        rows.append(("", "total", "", "", f"{self.n_params:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = []
        for r in rows:
            lines.append(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
                         f"{r[3]:<{widths[3]}}  {r[4]:>{widths[4]}}".rstrip())
        return "\n".join(lines)

    def config(self):
        """{"input_shape", "layers"} as JSON-ready values, activations resolved
        into each parametric layer's config; Plan.from_config reads it back."""
        layers = []
        for layer, act in zip(self.layers, self.activations):
            c = layer.config()
            if layer.parametric:
                c["activation"] = act
            layers.append(c)
        return {"input_shape": list(self.input_shape), "layers": layers}

    @classmethod
    def from_config(cls, config):
        try:
            shape, layers = config["input_shape"], config["layers"]
        except (KeyError, TypeError):
            raise ConfigError("a network config needs 'input_shape' and 'layers'") from None
        if not isinstance(layers, list):
            raise ConfigError(f"'layers' must be a list of layer configs, not {layers!r}")
        return cls(tuple(shape) if isinstance(shape, list) else shape,
                   [from_config(c) for c in layers])

    def __repr__(self):
        return f"Plan({self.input_shape}, {list(self.layers)})"

    # ------------------------------------------------------------ parameters

    def views(self, params):
        """(W, b) views into the flat vector `params`, one per parametric layer."""
        return [(params[s.w_off:s.b_off].reshape(s.w_shape), params[s.b_off:s.end])
                for s in self.slots]

    def tensor_names(self):
        """The (weights, biases) tensor names of each parametric layer in a
        model file: ("weights.k", "biases.k") of the k-th in a dense stack
        (format 1, as in ``net.weights[k]``), else ("layers.i.weights",
        "layers.i.biases") of layer i of ``layers`` (format 2)."""
        if self.plain_dense:
            return [(f"weights.{k}", f"biases.{k}") for k in range(len(self.slots))]
        return [(f"layers.{s.layer}.weights", f"layers.{s.layer}.biases") for s in self.slots]

    def weight_ranges(self):
        """(start, stop) of every weight block (what L1/L2 act on; biases not)."""
        return [(s.w_off, s.b_off) for s in self.slots]

    def init(self, params, scheme, rng):
        """Fill `params` with weights and biases drawn under `scheme` (an
        Initializer), layer by layer, weights before biases."""
        for s, (W, b) in zip(self.slots, self.views(params)):
            W0, b0 = self.layers[s.layer].init(self.shapes[s.layer], scheme, rng)
            W[...] = W0
            b[...] = b0

    # ---------------------------------------------------------------- kernel

    def table(self, dropout=None, image_shape=None):
        """The kernel's layer table (int64, one row per layer it runs) and the
        keep probability of each row's input (float64).

        dropout : sequence of float, optional
            Rates on the outputs of hidden_dense (fit's dropout), one each.
        image_shape : (H, W, C), optional
            What the input rows are, for shift augmentation, when the first
            layer is Dense (a convolution's input shape is already known).
        """
        table = np.array(self._rows, dtype=np.int64).reshape(-1, K.N_COLS)
        keep = np.ones(len(self._rows))
        row_of = {layer: r for r, layer in enumerate(self._row_layers)}

        def next_row(i):
            return next(row_of[j] for j in range(i + 1, len(self.layers)) if j in row_of)

        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                keep[next_row(i)] *= 1 - layer.rate
        if dropout is not None:
            rates = list(dropout)
            if len(rates) != len(self.hidden_dense):
                raise ConfigError(f"{len(rates)} dropout rates for "
                                  f"{len(self.hidden_dense)} hidden Dense layers")
            for i, rate in zip(self.hidden_dense, rates):
                keep[next_row(i)] *= 1 - rate
        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if len(image_shape) != 3 or math.prod(image_shape) != self.n_inputs:
                raise ConfigError(f"image shape {image_shape} does not hold the "
                                  f"{self.n_inputs} inputs")
            if self.image_shape is not None and image_shape != self.image_shape:
                raise ConfigError(f"image shape {image_shape} is not the input shape "
                                  f"{self.image_shape}")
            table[0, K.T_IN_H:K.T_IN_C + 1] = image_shape
        return table, keep

    def window_entries(self):
        """Per-row entries of the largest im2col buffer (a convolution's
        OH*OW windows of kh*kw*C inputs; 0 without convolutions)."""
        return max([math.prod(self.shapes[i + 1][:2]) * layer.kernel[0] * layer.kernel[1]
                    * self.shapes[i][2] for i, layer in enumerate(self.layers)
                    if layer.kind == K.CONV2D] or [0])

    def widths(self):
        """Per-row entries of each activation buffer the kernel keeps: the
        input and every table row's output (A_0 .. A_L)."""
        first = self._row_layers[0]
        return [math.prod(self.shapes[first])] + [
            math.prod(self.shapes[i + 1]) for i in self._row_layers]


def _fmt_shape(shape):
    """(24, 24, 20) as '24x24x20', (100,) as '100'."""
    return "x".join(str(d) for d in shape)


def _hwc(shape):
    """A shape as (H, W, C): a vector of n is (1, 1, n)."""
    return tuple(shape) if len(shape) == 3 else (1, 1, math.prod(shape))
