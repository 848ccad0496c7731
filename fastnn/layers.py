"""Layers as data: each kind of layer, what it computes and what it owns.

A layer object is a small frozen description (``Conv2D(20, 5)``), never a
holder of parameters: those live in the network's flat vector, at offsets
the network's ``Plan`` (``fastnn.plan``) gives. Each layer knows its output
shape from its input shape, the shapes and fans of its parameters, how to
draw them under an initialisation, its JSON config, and its row of the
kernel's layer table.

Shapes: an image is ``(H, W, C)``, channels last, so that a sample stays one
contiguous row in HWC order; a vector is ``(n,)``. A convolution's weights
are HWIO, ``(kh, kw, C_in, F)``: reshaped to ``(kh*kw*C_in, F)`` they are the
right operand of the im2col GEMM.

Configs are plain JSON (``{"type": "conv2d", "filters": 20, ...}``) and are
read back through the ``LAYERS`` registry, never by looking a name up in a
module.
"""
import math
import numbers
import re
from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from fastnn import _kernels
from fastnn._validation import parse_int
from fastnn.activations import get_activation
from fastnn.exceptions import ConfigError, lookup

PADDINGS = ("valid", "same")


def _positive(value, what, layer):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{layer}: {what} must be an integer >= 1, not {value!r}")
    return int(value)


def _pair(value, what, layer):
    """value as a pair of positive ints: an int n is (n, n)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(f"{layer}: {what} must be an integer or a pair of integers, "
                              f"not {value!r}")
        return tuple(_positive(v, what, layer) for v in value)
    n = _positive(value, what, layer)
    return (n, n)


def _activation(value, layer):
    if value is None:
        return None
    return get_activation(value).name


def _show_pair(pair):
    """5 for (5, 5), else (5, 3)."""
    return str(pair[0]) if pair[0] == pair[1] else str(pair)


def _image(shape, layer):
    """shape as (H, W, C), or ConfigError: this layer works on images."""
    if len(shape) != 3:
        raise ConfigError(f"{layer} needs an image input (height, width, channels); it gets "
                          f"a vector of shape {shape}. Put it before the Dense layers, and give "
                          f"the input shape as (H, W, C), e.g. (28, 28, 1)")
    return shape


def _fmt(shape):
    return "x".join(str(s) for s in shape)


class Layer:
    """What every layer kind provides (defaults for layers without parameters)."""

    #: name in configs and in the LAYERS registry
    type: ClassVar[Optional[str]] = None
    #: the kernel's code for it (fastnn._kernels DENSE, CONV2D, ...); None
    #: for layers the kernel never sees (Flatten: rows are already flat;
    #: Dropout: a keep probability on the next layer's input)
    kind: ClassVar[Optional[int]] = None
    #: has weights and biases
    parametric: ClassVar[bool] = False
    #: its activation, when it has one (None: the network's default)
    activation: object = None

    def output_shape(self, input_shape):
        """The shape of its output for an input of `input_shape`."""
        raise NotImplementedError

    def param_shapes(self, input_shape):
        """(weight shape, bias shape), or () for a layer without parameters."""
        return ()

    def fans(self, input_shape):
        """(fan_in, fan_out) of its weights, for initialisation."""
        return None

    def init(self, input_shape, scheme, rng):
        """(W, b) drawn under an initialisation (fastnn.initializers), float64."""
        w_shape, _ = self.param_shapes(input_shape)
        return scheme.draw(w_shape, *self.fans(input_shape), rng)

    def geometry(self, input_shape):
        """(kh, kw, sh, sw, pad_top, pad_left) of its window, for the kernel's table."""
        return (1, 1, 1, 1, 0, 0)

    def config(self):
        """A JSON-ready dict that from_config reads back."""
        out = {"type": self.type}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def __str__(self):
        return repr(self)


@dataclass(frozen=True, repr=False)
class Dense(Layer):
    """A fully-connected layer: a := act(x @ W + b), W (I, O), b (O,).

    Parameters
    ----------
    units : int
        O, the outputs.
    activation : str, optional
        One of ``fastnn.activations.ACTIVATIONS``; by default the network's
        hidden activation, or its output activation for the last layer.
    """

    units: int
    activation: object = None

    type = "dense"
    kind = _kernels.DENSE
    parametric = True

    def __post_init__(self):
        object.__setattr__(self, "units", _positive(self.units, "units", "Dense"))
        object.__setattr__(self, "activation", _activation(self.activation, "Dense"))

    def __repr__(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"Dense({self.units}{act})"

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ConfigError(f"{self!r} needs a vector input, not {_fmt(input_shape)}; "
                              f"put a Flatten() before it")
        return (self.units,)

    def param_shapes(self, input_shape):
        return ((input_shape[0], self.units), (self.units,))

    def fans(self, input_shape):
        return (input_shape[0], self.units)


@dataclass(frozen=True, repr=False)
class Conv2D(Layer):
    """A 2-D convolution (cross-correlation, as PyTorch and Keras compute it)
    with shared weights and biases, one output channel per filter:
    out[y, x, f] = act(b[f] + sum_{i, j, c} in[y*sh + i - pt, x*sw + j - pl, c] W[i, j, c, f]).

    Parameters
    ----------
    filters : int
        F, the output channels (Nielsen's feature maps).
    kernel : int or (int, int)
        (kh, kw), the local receptive field.
    stride : int or (int, int), default 1
    padding : {"valid", "same"}, default "valid"
        ``valid``: windows inside the image, out = (H - kh) // sh + 1;
        ``same``: zero padding so that out = ceil(H / sh), the extra row or
        column (for an even total) at the bottom and right, as in TensorFlow
        and PyTorch.
    activation : str, optional
        By default the network's hidden activation.
    """

    filters: int
    kernel: object
    stride: object = 1
    padding: str = "valid"
    activation: object = None

    type = "conv2d"
    kind = _kernels.CONV2D
    parametric = True

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "filters", _positive(self.filters, "filters", "Conv2D"))
        set_(self, "kernel", _pair(self.kernel, "kernel", "Conv2D"))
        set_(self, "stride", _pair(self.stride, "stride", "Conv2D"))
        if self.padding not in PADDINGS:
            raise ConfigError(f"Conv2D: padding must be one of {list(PADDINGS)}, "
                              f"not {self.padding!r}")
        set_(self, "activation", _activation(self.activation, "Conv2D"))

    def __repr__(self):
        parts = [str(self.filters), _show_pair(self.kernel)]
        if self.stride != (1, 1):
            parts.append(f"stride={_show_pair(self.stride)}")
        if self.padding != "valid":
            parts.append(f"padding={self.padding!r}")
        if self.activation:
            parts.append(f"activation={self.activation!r}")
        return f"Conv2D({', '.join(parts)})"

    def _out(self, size, k, s, axis):
        if self.padding == "same":
            return -(-size // s)
        if size < k:
            raise ConfigError(f"{self!r} needs an input at least {k} {axis}, not {size}")
        return (size - k) // s + 1

    def output_shape(self, input_shape):
        H, W, _ = _image(input_shape, repr(self))
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return (self._out(H, kh, sh, "high"), self._out(W, kw, sw, "wide"), self.filters)

    def padding_amounts(self, input_shape):
        """(top, bottom, left, right) rows and columns of zeros around the input."""
        H, W, _ = input_shape
        OH, OW, _ = self.output_shape(input_shape)
        (kh, kw), (sh, sw) = self.kernel, self.stride
        if self.padding == "valid":
            return (0, 0, 0, 0)
        ph = max((OH - 1) * sh + kh - H, 0)
        pw = max((OW - 1) * sw + kw - W, 0)
        return (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)

    def geometry(self, input_shape):
        top, _, left, _ = self.padding_amounts(input_shape)
        return (*self.kernel, *self.stride, top, left)

    def param_shapes(self, input_shape):
        kh, kw = self.kernel
        return ((kh, kw, input_shape[2], self.filters), (self.filters,))

    def fans(self, input_shape):
        kh, kw = self.kernel
        return (kh * kw * input_shape[2], kh * kw * self.filters)


@dataclass(frozen=True, repr=False)
class _Pool2D(Layer):
    """Pooling over size x size windows, `stride` apart (default: size, so the
    windows tile the image), channel by channel; no padding."""

    size: object
    stride: object = None

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "size", _pair(self.size, "size", name))
        stride = self.size if self.stride is None else self.stride
        object.__setattr__(self, "stride", _pair(stride, "stride", name))

    def __repr__(self):
        stride = "" if self.stride == self.size else f", stride={_show_pair(self.stride)}"
        return f"{type(self).__name__}({_show_pair(self.size)}{stride})"

    def output_shape(self, input_shape):
        H, W, C = _image(input_shape, repr(self))
        (kh, kw), (sh, sw) = self.size, self.stride
        if H < kh or W < kw:
            raise ConfigError(f"{self!r} needs an input of at least {kh}x{kw}, "
                              f"not {_fmt(input_shape)}")
        return ((H - kh) // sh + 1, (W - kw) // sw + 1, C)

    def geometry(self, input_shape):
        return (*self.size, *self.stride, 0, 0)


@dataclass(frozen=True, repr=False)
class MaxPool2D(_Pool2D):
    """The maximum of each window (Nielsen's max-pooling). Ties go to the
    first element of the window in row-major order; a NaN in the window
    gives NaN (as PyTorch's MaxPool2d)."""

    type = "maxpool2d"
    kind = _kernels.MAXPOOL2D


@dataclass(frozen=True, repr=False)
class L2Pool2D(_Pool2D):
    """sqrt(sum x^2) over each window (Nielsen's L2 pooling; PyTorch's
    LPPool2d(2, size), ONNX LpPool with p = 2)."""

    type = "l2pool2d"
    kind = _kernels.L2POOL2D


@dataclass(frozen=True, repr=False)
class Flatten(Layer):
    """An image (H, W, C) as a vector of H*W*C, in HWC order (the row as it
    is: nothing moves). Implied before the first Dense layer after images."""

    type = "flatten"

    def __repr__(self):
        return "Flatten()"

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)


@dataclass(frozen=True, repr=False)
class Dropout(Layer):
    """Inverted dropout of its input while training: each unit kept with
    probability 1 - rate and scaled by 1/(1 - rate); the identity in
    ``forward``, ``predict`` and ``evaluate``. Part of the architecture,
    unlike ``fit(dropout=...)``, which drops the outputs of hidden Dense
    layers for one fit."""

    rate: float

    type = "dropout"

    def __post_init__(self):
        try:
            rate = float(self.rate)
        except (TypeError, ValueError):
            rate = math.nan
        if isinstance(self.rate, bool) or not 0 <= rate < 1:
            raise ConfigError(f"Dropout: rate must be a number >= 0 and < 1, not {self.rate!r}")
        object.__setattr__(self, "rate", rate)

    def __repr__(self):
        return f"Dropout({self.rate:g})"

    def output_shape(self, input_shape):
        return tuple(input_shape)


LAYERS = {cls.type: cls for cls in (Dense, Conv2D, MaxPool2D, L2Pool2D, Flatten, Dropout)}


def from_config(config):
    """The layer a config (Layer.config) describes; ConfigError if it is not one."""
    if not isinstance(config, dict):
        raise ConfigError(f"a layer config must be an object with a 'type', not {config!r}")
    cls = lookup(LAYERS, "layer type", config.get("type"))
    names = {f.name for f in fields(cls)}
    extra = sorted(set(config) - names - {"type"})
    if extra:
        raise ConfigError(f"{cls.__name__} takes {sorted(names)}, not {extra}")
    try:
        return cls(**{k: v for k, v in config.items() if k != "type"})
    except TypeError as exc:        # a required field missing
        raise ConfigError(f"{cls.__name__}: {exc}") from None


# ------------------------------------------------------------ layer tokens
#
# The command line's --layers: comma-separated tokens, no quoting needed.

#: The tokens `parse` takes, for messages and help.
TOKENS = ("N[:ACT] (Dense)", "convF:K[xK][:sS[xS]][:same][:ACT]", "maxpoolK[xK][:sS]",
          "l2poolK[xK][:sS]", "dropoutRATE", "flatten")
_SHAPE = re.compile(r"[0-9]+(?:x[0-9]+){0,2}")
_PAIR = r"([0-9]+)(?:x([0-9]+))?"


def _token_error(token, why=None):
    why = f" ({why})" if why else ""
    return ConfigError(f"cannot read layer token {token!r}{why}; expected an input shape "
                       f"first (784, 28x28 or 28x28x1), then any of {', '.join(TOKENS)}, "
                       f"e.g. 28x28,conv20:5,maxpool2,100,10")


def parse_shape(text):
    """An input shape from 'N', 'HxW' or 'HxWxC': (N,), (H, W, 1) or (H, W, C)."""
    text = str(text).strip().lower()
    if not _SHAPE.fullmatch(text):
        raise ConfigError(f"an input shape is N, HxW or HxWxC (784, 28x28, 28x28x1), "
                          f"not {text!r}")
    dims = tuple(parse_int(d, "an input shape's side") for d in text.split("x"))
    if min(dims) < 1:
        raise ConfigError(f"an input shape's sides must be >= 1, not {text!r}")
    return dims + (1,) if len(dims) == 2 else dims


def _pair_of(match, first, what):
    a = parse_int(match.group(first), what)
    b = match.group(first + 1)
    return (a, parse_int(b, what)) if b is not None else a


def _layer_token(token):
    """The layer one token (lower case, no spaces) stands for."""
    parts = token.split(":")
    head, options = parts[0], parts[1:]
    if re.fullmatch(r"[0-9]+", head):
        if len(options) > 1:
            raise _token_error(token, f"a Dense layer has one activation, not "
                                      f"{', '.join(map(repr, options))}")
        return Dense(parse_int(head, "a Dense layer's width"),
                     activation=options[0] if options else None)
    m = re.fullmatch(r"conv([0-9]+)", head)
    if m:
        if not options or not re.fullmatch(_PAIR, options[0]):
            raise _token_error(token, "a convolution needs filters and a kernel: conv20:5")
        kernel = _pair_of(re.fullmatch(_PAIR, options[0]), 1, "a kernel size")
        kwargs, seen = {}, {}
        for option in options[1:]:
            s = re.fullmatch("s" + _PAIR, option)
            kind = ("stride" if s else "padding" if option in PADDINGS
                    else "activation" if re.fullmatch(r"[a-z_]+", option) else None)
            if kind is None:
                raise _token_error(token, f"{option!r} is not a stride sN, 'same', 'valid' "
                                          f"or an activation")
            if kind in seen:
                raise _token_error(token, f"{option!r} is a second {kind} (after "
                                          f"{seen[kind]!r}); a convolution has one")
            seen[kind] = option
            kwargs[kind] = _pair_of(s, 1, "a stride") if s else option
        return Conv2D(parse_int(m.group(1), "a convolution's filters"), kernel, **kwargs)
    m = re.fullmatch(r"(maxpool|l2pool)" + _PAIR, head)
    if m:
        cls = MaxPool2D if m.group(1) == "maxpool" else L2Pool2D
        stride = None
        if options:
            s = re.fullmatch("s" + _PAIR, options[0])
            if len(options) > 1 or not s:
                raise _token_error(token, "a pool takes only a stride: maxpool3:s2")
            stride = _pair_of(s, 1, "a stride")
        return cls(_pair_of(m, 2, "a pool size"), stride)
    m = re.fullmatch(r"dropout([0-9]*\.?[0-9]+)", head)
    if m and not options:
        return Dropout(float(m.group(1)))
    if head == "flatten" and not options:
        return Flatten()
    raise _token_error(token)


def parse(text, input_shape=None):
    """The layers of a --layers string: ``[input_shape, *layers]``, what
    ``Network`` takes as its first argument.

    Tokens are separated by commas: first the input shape (``784``,
    ``28x28`` or ``28x28x3``), then the layers: ``100`` or ``100:relu`` (a
    Dense layer, with its own activation), ``conv20:5`` (20 filters of 5x5;
    options ``:5x3`` kernel, ``:s2`` stride, ``:same`` padding, ``:relu``
    activation), ``maxpool2``, ``l2pool2`` (``:s1`` stride), ``dropout0.5``,
    ``flatten`` (implied before the first Dense layer after images). A first
    token that is a number or a shape is always the input (``784,30,10``
    keeps its meaning); when the first token is a layer, the input shape is
    `input_shape`.

    >>> parse("28x28,conv20:5,maxpool2,100,10")
    [(28, 28, 1), Conv2D(20, 5), MaxPool2D(2), Dense(100), Dense(10)]
    >>> parse("784,30,10")
    [(784,), Dense(30), Dense(10)]
    """
    if not isinstance(text, str):
        raise ConfigError(f"layers must be a string of comma-separated tokens, not {text!r}")
    tokens = [t.strip().lower() for t in text.split(",")]
    if "" in tokens:
        raise ConfigError(f"an empty layer token in {text!r}; separate tokens with single "
                          f"commas")
    first = tokens[0]
    if _SHAPE.fullmatch(first):
        shape, tokens = parse_shape(first), tokens[1:]
    elif input_shape is not None:
        shape = tuple(input_shape)
    else:
        raise ConfigError(f"{text!r} does not start with an input shape (784, 28x28 or "
                          f"28x28x1); give one first, or the input shape separately")
    if not tokens:
        raise ConfigError(f"{text!r} has no layers after the input shape")
    return [shape, *(_layer_token(t) for t in tokens)]
