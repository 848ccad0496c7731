"""Pictures of training runs and of a network's mistakes, as PNG files.

Three functions, each writing one PNG: ``plot_history`` (learning curves),
``plot_confusion`` (a confusion matrix) and ``plot_misclassified`` (a grid
of the samples a network gets most wrong). They need matplotlib, the
``fastnn[plot]`` extra; it is imported when a function is called, so
``import fastnn`` never needs it.

Figures are drawn with matplotlib's Agg canvas directly, never through
``pyplot``: no window opens, no global backend is switched and no figure
is left registered anywhere. The file's suffix says the format (``.png``,
``.svg`` or ``.pdf``; others are refused). Each picture is rendered into
memory and written with ``fastnn.files.atomic_write`` under fastnn's output
policy: never half a file, and an existing file that is not a picture of
that format is replaced only with ``force=True``.

Text from data or users (class and target names, history fields, titles) is
drawn as plain text: every figure is made and saved inside ``_drawing``,
which turns matplotlib's mathtext and LaTeX off, so ``$\\frac{$`` is drawn
as it is written; ``_label`` cuts such text to MAX_TEXT characters and
escapes the characters that are not printable.

Every picture is bounded, whatever its input (the title says when a bound
applied): at most MAX_SIDE_PIXELS pixels a side (the dpi is lowered to fit);
learning curves through at most MAX_CURVE_POINTS points each and at most
MAX_LR_MARKS learning-rate lines; a confusion matrix of more than
MAX_CONFUSION_CLASSES classes drawn as its MAX_ANNOTATED_CLASSES most
confused classes; at most MAX_SAMPLES misclassified samples, each at most
MAX_IMAGE_SIDE pixels a side; at most MAX_FILTERS filters of at most
MAX_CHANNELS input channels, in one image; at most MAX_SCATTER_POINTS points
in each of at most MAX_TARGET_PANELS panels of predicted values.
"""
import contextlib
import io
import math
import numbers
import os
import textwrap
import warnings
from collections.abc import Mapping

import numpy as np

from fastnn._validation import MAX_COUNT
from fastnn.exceptions import ConfigError, DataError, FastnnError
from fastnn.files import FileKind, atomic_write, check_distinct, check_output, starting_with

MATPLOTLIB_HINT = "plots need matplotlib: pip install 'fastnn[plot]'"
# Screen-sized pictures: ~100 dpi keeps a README image well under 200 kB.
DPI = 100
# Series of a history drawn in each panel, with their legend names.
LOSS_SERIES = (("loss", "train"), ("val_loss", "validation"), ("test_loss", "test"))
ACCURACY_SERIES = (("accuracy", "train"), ("val_accuracy", "validation"),
                   ("test_accuracy", "test"))
# Entries of a history file that are not per-epoch series.
HISTORY_FIELDS = ("epochs", "stopped", "best_epoch")
# Beyond this many classes the counts no longer fit in the cells.
MAX_ANNOTATED_CLASSES = 30

# ------------------------------------------------------------------ bounds
#: Each side of a picture is at most this many pixels (the dpi is lowered to fit).
MAX_SIDE_PIXELS = 4000
#: Characters of a name, title or history field drawn (longer text is cut with "…").
MAX_TEXT = 80
#: Points a learning curve is drawn through: a longer history is drawn through
#: the lowest and highest value of each of MAX_CURVE_POINTS / 2 stretches of epochs.
MAX_CURVE_POINTS = 2000
#: Learning-rate changes marked with a line; with more, none is (the title says so).
MAX_LR_MARKS = 20
#: Values of a curve or scatter beyond ± this are drawn at ± this (a span
#: past float64 cannot be laid out on an axis).
MAX_DRAWN_VALUE = 1e300
#: Confusion matrices of more classes are drawn as the MAX_ANNOTATED_CLASSES
#: classes with the most errors.
MAX_CONFUSION_CLASSES = 100
#: Misclassified samples drawn at most, and the longest side of each in pixels
#: (a larger image is drawn from every k-th pixel).
MAX_SAMPLES = 100
MAX_IMAGE_SIDE = 256
#: Points of a scatter of predicted values (evenly spaced rows beyond), and panels (targets).
MAX_SCATTER_POINTS = 10_000
MAX_TARGET_PANELS = 16


def _matplotlib():
    """matplotlib's Figure and Agg canvas, or a FastnnError saying how to get them."""
    try:
        # the package first: its submodules may be cached even when it is not usable
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FastnnError(MATPLOTLIB_HINT) from None
    return Figure, FigureCanvasAgg


@contextlib.contextmanager
def _drawing():
    """matplotlib's Figure class and Agg canvas, for figures that are made,
    drawn and saved inside this block: every text in them is plain (neither
    mathtext nor LaTeX parses it, whatever matplotlibrc says), and
    matplotlib's warnings (a glyph missing from the font) stay quiet.

    The one way fastnn draws: names and titles from data or users are data,
    never markup."""
    Figure, Canvas = _matplotlib()
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False,
                                "axes.formatter.use_mathtext": False}), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield Figure, Canvas


def _label(value, limit=MAX_TEXT):
    """Text from data or a user as it is drawn: str(value) with characters
    that are not printable escaped (a newline as \\n), cut to `limit`."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:
        text = text[:4 * limit]       # before escaping: a long text costs nothing more
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_svg(head):
    text = head.lstrip()
    return text.startswith((b"<?xml", b"<svg", b"<!DOCTYPE svg")) and b"<svg" in text


#: The picture formats by file suffix: (matplotlib's format, FileKind).
PICTURE_FORMATS = {
    ".png": ("png", starting_with("PNG image", b"\x89PNG\r\n\x1a\n")),
    ".svg": ("svg", FileKind("SVG image", _is_svg)),
    ".pdf": ("pdf", starting_with("PDF document", b"%PDF-")),
}


def picture_format(path):
    """(format, FileKind) of a picture file, from its suffix; ConfigError if
    the suffix is not one of PICTURE_FORMATS."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in PICTURE_FORMATS:
        raise ConfigError(f"cannot tell the picture format of {os.fspath(path)!r}: name it "
                          f"{' or '.join(PICTURE_FORMATS)}")
    return PICTURE_FORMATS[suffix]


def check_picture(path, force=False):
    """Check, before any drawing, that a picture may be written at path."""
    check_output(path, picture_format(path)[1], force, FastnnError)


def _dpi(dpi):
    """dpi as a float in 10..1000, or ConfigError."""
    if (isinstance(dpi, bool) or not isinstance(dpi, numbers.Real)
            or not 10 <= float(dpi) <= 1000):
        raise ConfigError(f"dpi must be a number from 10 to 1000, not {dpi!r}")
    return float(dpi)


def _save(fig, canvas_class, path, dpi, force):
    fmt, kind = picture_format(path)
    buffer = io.BytesIO()
    canvas_class(fig)  # attaches itself to fig: savefig then renders with Agg
    # no side beyond MAX_SIDE_PIXELS, whatever the figure's size and dpi
    dpi = min(_dpi(dpi), MAX_SIDE_PIXELS / max(fig.get_size_inches()))
    fig.savefig(buffer, format=fmt, dpi=dpi)
    atomic_write(path, buffer.getvalue(), FastnnError, kind=kind, force=force)


# ---------------------------------------------------------------- history

def load_history(history):
    """A history as (series, info): per-epoch lists of floats (NaN for gaps)
    and the run's ``epochs``, ``stopped`` and ``best_epoch`` (from 0).

    Parameters
    ----------
    history : History, dict or path
        A ``fastnn.History``, a dict such as ``History.to_dict()`` returns,
        or the path of a JSON file written by ``fastnn train --history``,
        printed by ``fastnn train --json`` or from ``History.to_dict()``.

    Raises
    ------
    DataError
        If the file is missing or not JSON, or the history has no series.
    """
    from fastnn.history import History

    if isinstance(history, (str, os.PathLike)):
        source = os.fspath(history)
        history = _read_history_file(source)
    else:
        source = "the history"
    if isinstance(history, Mapping) and isinstance(history.get("members"), list):
        raise DataError(f"{source} is an ensemble's run: it holds one history per network "
                        f"(load_runs reads them)")
    if (isinstance(history, Mapping) and "epochs" not in history
            and isinstance(history.get("history"), Mapping)):
        # the object fastnn train --json prints: its history
        history = history["history"]
    if isinstance(history, History):
        info = {"epochs": history.epochs, "stopped": history.stopped,
                "best_epoch": history.best_epoch}
    elif isinstance(history, Mapping):
        info = {name: history.get(name) for name in HISTORY_FIELDS}
    else:
        raise DataError(f"history must be a fastnn.History, a dict or a JSON file's path, "
                        f"not {type(history).__name__}")
    series = {}
    for name, values in history.items():
        if name in HISTORY_FIELDS:
            continue
        series[name] = _series(values, name, source)
    if not any(len(values) for values in series.values()):
        raise DataError(f"{source} has no per-epoch series to plot (such as 'loss'); "
                        f"write one with: fastnn train --history FILE.json")
    for field in ("epochs", "best_epoch"):
        value = info[field]
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, numbers.Integral) or not 0 <= value <= MAX_COUNT):
            raise DataError(f"{source}: {field} should be an epoch count from 0 to 2**62, "
                            f"not {_short(value)}")
    return series, info


#: The most networks of an ensemble's history drawn, each in a colour of its
#: own (fastnn.ensemble.MAX_MEMBERS).
MAX_RUNS = 64


def load_runs(history):
    """The runs of a history as a list of (series, info), one per network:
    the history's own for one network, each member's for an ensemble's
    (``fastnn train --ensemble --history``, or its ``--json`` object).

    Raises
    ------
    DataError
        As load_history, or if an ensemble's entry is not a history.
    """
    if isinstance(history, (str, os.PathLike)):
        source = os.fspath(history)
        loaded = _read_history_file(source)
    else:
        source, loaded = "the history", history
    members = loaded.get("members") if isinstance(loaded, Mapping) else None
    if not isinstance(members, list):
        return [load_history(loaded if source == "the history" else history)]
    if not 1 <= len(members) <= MAX_RUNS:
        raise DataError(f"{source}: an ensemble's history has 1 to {MAX_RUNS} networks, "
                        f"not {len(members)}")
    runs = []
    for k, member in enumerate(members):
        if isinstance(member, Mapping) and isinstance(member.get("history"), Mapping):
            member = member["history"]       # an entry of fastnn train --json's members
        if not isinstance(member, Mapping):
            raise DataError(f"{source}: network {k + 1}'s history should be an object of "
                            f"per-epoch series, not {type(member).__name__}")
        runs.append(load_history(dict(member)))
    return runs


def _short(value):
    """value for a message: its repr, cut to about 60 characters."""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 1000 else "a huge int"
    return text if len(text) <= 60 else text[:57] + "..."


def _series(values, name, source):
    """One per-epoch series as a float64 array (NaN for None), or DataError."""
    from fastnn._validation import short_text

    if not isinstance(values, (list, tuple)):
        raise DataError(f"{source}: {short_text(str(name))} should be a list of per-epoch "
                        f"values, not {type(values).__name__}")
    # only ints, floats and None (a gap) are numbers here: not True, not "1"
    bad = None
    if not set(map(type, values)) <= {int, float, type(None)}:    # a fast look first
        bad = next((v for v in values if v is not None and (
            isinstance(v, bool) or not isinstance(v, numbers.Real))), None)
    if bad is not None:
        raise DataError(f"{source}: series {short_text(str(name))} holds {_short(bad)}, "
                        f"not a number")
    try:
        return np.array(values, dtype=np.float64)     # None becomes NaN
    except OverflowError:
        raise DataError(f"{source}: series {short_text(str(name))} holds an integer beyond "
                        f"float64's range") from None


# A history file holds a few numbers per epoch; refuse anything far larger.
MAX_HISTORY_BYTES = 64 << 20
# ... and nests two levels deep ({"loss": [...]}), four in fastnn train
# --json's object, six in an ensemble's (one history per network).
MAX_HISTORY_DEPTH = 6


def _read_history_file(path):
    from fastnn.reading import load_json, read_file

    raw = read_file(path, DataError, "history file", max_size=MAX_HISTORY_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or not text.strip():
        raise DataError(f"{path} is not a history file: not JSON; write one with: "
                        f"fastnn train --history FILE.json")

    class NotJSON(Exception):
        pass

    try:
        history = load_json(text, "JSON", NotJSON, max_depth=MAX_HISTORY_DEPTH)
    except NotJSON as exc:
        # "JSON is not valid JSON (...)" -> "not JSON (...)"
        reason = str(exc).replace("JSON is not valid JSON", "not JSON", 1)
        raise DataError(f"{path} is not a history file: {reason}; write one with: "
                        f"fastnn train --history FILE.json") from None
    if not isinstance(history, dict):
        raise DataError(f"{path} is not a history file: JSON {type(history).__name__}, "
                        f"not an object of per-epoch series")
    return history


def _lr_changes(lr):
    """(epochs, rates): each epoch (from 1) that trained at a new rate, and that rate."""
    lr = np.asarray(lr, dtype=np.float64)
    epochs = np.flatnonzero(np.isfinite(lr))
    rates = lr[epochs]
    with np.errstate(over="ignore", invalid="ignore"):
        # as math.isclose(rel_tol=1e-9): a new rate, not a rounding of the old one
        new = (np.abs(rates[1:] - rates[:-1])
               > 1e-9 * np.maximum(np.abs(rates[1:]), np.abs(rates[:-1])))
    return epochs[1:][new] + 1, rates[1:][new]


def _curve(values):
    """(x, y) to draw a per-epoch series through: epochs from 1, values
    beyond ±MAX_DRAWN_VALUE at ±MAX_DRAWN_VALUE (infinities left out), and
    beyond MAX_CURVE_POINTS epochs only the lowest and the highest value of
    each of MAX_CURVE_POINTS / 2 stretches, in epoch order, so that a spike
    stays. Also whether a value was clipped."""
    y = np.where(np.isinf(values), np.nan, values)
    clipped = bool(np.any(np.abs(y) > MAX_DRAWN_VALUE))
    y = np.clip(y, -MAX_DRAWN_VALUE, MAX_DRAWN_VALUE)
    x = np.arange(1, len(y) + 1, dtype=np.float64)
    if len(y) <= MAX_CURVE_POINTS:
        return x, y, clipped
    size = -(-len(y) // (MAX_CURVE_POINTS // 2))
    stretches = np.concatenate([y, np.full(-len(y) % size, np.nan)]).reshape(-1, size)
    gaps = np.isnan(stretches)
    low = np.where(gaps, np.inf, stretches).argmin(axis=1)
    high = np.where(gaps, -np.inf, stretches).argmax(axis=1)
    keep = (np.arange(len(stretches)) * size)[:, None] + np.sort(np.stack([low, high], 1), 1)
    keep = np.unique(keep)
    keep = keep[keep < len(y)]
    return x[keep], y[keep], clipped


def plot_history(history, path, *, title=None, dpi=DPI, force=False):
    """Draw a training run's learning curves and write them to a picture file.

    One panel shows the loss per epoch (training, and validation and test
    when recorded), a second the accuracy (left out when the run recorded
    none). A dashed vertical line marks each learning-rate change, drawn
    where the epoch at the new rate begins and labelled with that rate; a
    dotted one marks the best epoch when early stopping recorded one. An
    ensemble's history draws each network in a colour of its own (training
    solid, validation dashed, test dotted), and the first network's rate
    changes.

    Parameters
    ----------
    history : History, dict or path
        What ``Network.fit`` returns, a dict like ``History.to_dict()``, or
        the path of a JSON file written by ``fastnn train --history``.
    path : str or Path
        The picture to write (atomically): .png, .svg or .pdf.
    title : str, optional
        A title above the panels [default: the number of epochs, and why
        training stopped early].
    dpi : int, default 100
    force : bool, default False
        Replace an existing file that is not a picture of that format.

    Raises
    ------
    DataError
        If the history file is missing or not JSON, or there is nothing to draw.
    FastnnError
        If matplotlib is missing, or the file cannot be written.
    """
    _matplotlib()
    check_picture(path, force)
    if isinstance(history, (str, os.PathLike)):
        check_distinct([("the picture", path)], [("the history", history)], FastnnError)
    runs = load_runs(history)
    with _drawing() as (Figure, Canvas):
        fig = _history_figure(Figure, runs, title)
        _save(fig, Canvas, path, dpi, force)


def _history_figure(Figure, runs, title):
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    series, info = runs[0]
    several = len(runs) > 1
    panels = [("loss", [(n, label) for n, label in LOSS_SERIES
                        if any(n in theirs for theirs, _ in runs)])]
    accuracy = [(n, label) for n, label in ACCURACY_SERIES
                if any(n in theirs for theirs, _ in runs)]
    if accuracy:
        panels.append(("accuracy", accuracy))
    if not panels[0][1]:
        if not accuracy:
            raise DataError(f"the history has no loss or accuracy series to plot, only "
                            f"{_short(sorted(series)[:10])}")
        panels.pop(0)
    epochs = max(len(values) for theirs, _ in runs for values in theirs.values())
    change_epochs, change_rates = _lr_changes(series.get("lr", []))
    marked = len(change_epochs) <= MAX_LR_MARKS
    best = info["best_epoch"] if not several else None
    clipped = False

    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    # Same colour for the same data set in both panels.
    colours = {"train": "C0", "validation": "C1", "test": "C2"}
    # several networks: a colour each, the data set by the line's style
    styles = {"train": "-", "validation": "--", "test": ":"}
    for i, (name, members) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k, (theirs, _) in enumerate(runs):
            for key, label in members:
                if key not in theirs:
                    continue
                x, y, cut = _curve(theirs[key])
                clipped |= cut
                # markers only when sparse: a lone epoch would otherwise be invisible
                marker = "o" if len(theirs[key]) <= 30 else None
                if several:
                    ax.plot(x, y, label=f"network {k + 1}, {label}" if k < 10 else None,
                            color=f"C{k % 10}", linestyle=styles[label], marker=marker,
                            markersize=2, linewidth=1)
                else:
                    ax.plot(x, y, label=label, color=colours[label], marker=marker,
                            markersize=3)
        if name == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.set_xlim(0.5 if epochs > 1 else 0, epochs + 0.5 if epochs > 1 else 2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        # The rate recorded for epoch e trained epoch e, which runs from
        # x = e - 1 to x = e; the line goes where the new rate starts.
        for epoch, rate in zip(change_epochs if marked else [], change_rates):
            ax.axvline(epoch - 1, color="0.4", linestyle="--", linewidth=1)
            ax.annotate(f"lr {rate:.3g}", (epoch - 1, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", ha="left", va="top",
                        fontsize=8, color="0.3")
        if best is not None and best < epochs:
            ax.axvline(best + 1, color="C3", linestyle=":", linewidth=1.5,
                       label=f"best epoch ({best + 1})")
        ax.legend(loc="best", fontsize=9 if not several else 6)
    if title is None:
        title = f"{info['epochs'] if info['epochs'] is not None else epochs:,} epochs"
        if several:
            title = f"an ensemble of {len(runs)} networks, " + title
        rates = series.get("lr", np.array([]))
        rates = rates[np.isfinite(rates)]
        if len(rates):
            # the lines mark the changes; the starting rate is said here
            title += f", lr {rates[0]:.3g}" + (f" → {rates[-1]:.3g}" if len(change_epochs)
                                                 else "")
            if not marked:
                title += f" ({len(change_epochs):,} changes, not marked)"
        if info["stopped"]:
            title += f" (stopped: {_label(info['stopped']).replace('_', ' ')})"
        if clipped:
            title += f"; values beyond ±{MAX_DRAWN_VALUE:.0e} drawn at the edge"
    fig.suptitle(_label(title, 2 * MAX_TEXT))
    return fig


# -------------------------------------------------------------- confusion

def plot_confusion(matrix, path, labels=None, *, title=None, dpi=DPI, force=False):
    """Draw a confusion matrix and write it to a picture file.

    Rows are the true classes and columns the predicted ones, each cell
    holds its count, and the colour scale is logarithmic so that a handful
    of errors shows beside a diagonal of thousands (empty cells are white).

    Parameters
    ----------
    matrix : array-like (k, k) of counts
        ``counts[i][j]`` samples of class i predicted as class j, such as
        ``fastnn.metrics.confusion_matrix`` returns.
    path : str or Path
        The picture to write (atomically): .png, .svg or .pdf.
    labels : sequence of k str, optional
        Class names [default: 0 .. k-1].
    title : str, optional
        [default: the accuracy the matrix implies]
    dpi : int, default 100
    force : bool, default False
        Replace an existing file that is not a picture of that format.

    Raises
    ------
    DataError
        If the matrix is not square or holds negative or fractional counts.
    ConfigError
        If labels does not name each class once.
    FastnnError
        If matplotlib is missing, or the file cannot be written.
    """
    _matplotlib()
    check_picture(path, force)
    counts = _check_matrix(matrix)
    k = len(counts)
    if labels is None:
        labels = [str(c) for c in range(k)]
    else:
        labels = [str(c) for c in labels]
        if len(labels) != k:
            raise ConfigError(f"{len(labels)} labels for a confusion matrix of {k} classes")
    if title is None:
        title = confusion_title(int(np.trace(counts)), int(counts.sum()))
    if k > MAX_CONFUSION_CLASSES:
        from fastnn.metrics import most_confused

        diagonal = np.diag(counts)
        keep = most_confused(counts.sum(axis=0) + counts.sum(axis=1) - 2 * diagonal,
                             MAX_ANNOTATED_CLASSES)
        counts, labels = counts[np.ix_(keep, keep)], [labels[i] for i in keep]
        title = f"{title}; the {len(keep)} classes with the most errors, of {k:,}"
    with _drawing() as (Figure, Canvas):
        fig = _confusion_figure(Figure, counts, labels, title)
        _save(fig, Canvas, path, dpi, force)


def confusion_title(correct, total):
    """The default title of a confusion picture: the accuracy."""
    return (f"accuracy {correct / total:.2%} ({correct:,} / {total:,})" if total
            else "confusion matrix (no samples)")


def _confusion_figure(Figure, counts, labels, title):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter

    k = len(counts)
    labels = [_label(name, 30) for name in labels]
    side = min(max(4.0, 0.5 * k + 2.0), 20.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    shown = np.ma.masked_equal(counts, 0)
    cmap = colormaps["Blues"].with_extremes(bad="white")
    top = max(int(counts.max()), 2)
    image = ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=1, vmax=top), interpolation="nearest")
    # plain numbers: LogNorm's default labels are mathtext ($10^{0}$), which is off
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
    bar = fig.colorbar(image, ax=ax, shrink=0.8, label="samples (log scale)", format=plain)
    bar.ax.yaxis.set_minor_formatter(plain)
    if k <= MAX_ANNOTATED_CLASSES:
        fontsize = 9 if k <= 12 else 7
        # text on the darker half of the scale in white, elsewhere in black
        dark = math.sqrt(top)
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                            color="white" if counts[i, j] > dark else "black")
    ticks = np.arange(k)
    step = 1 if k <= MAX_ANNOTATED_CLASSES else math.ceil(k / MAX_ANNOTATED_CLASSES)
    # names across the bottom would run into each other: upright then
    ax.set_xticks(ticks[::step], labels[::step],
                  rotation=90 if max(map(len, labels)) > 3 else 0)
    ax.set_yticks(ticks[::step], labels[::step])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(_label(title, 2 * MAX_TEXT))
    return fig


def plot_predicted(y_true, y_pred, path, names=None, *, title=None, dpi=DPI, force=False):
    """Draw predicted against true regression targets (one panel per target,
    with the line y = x) and write it to a picture file (.png, .svg, .pdf).

    At most MAX_TARGET_PANELS targets (the first ones) and MAX_SCATTER_POINTS
    samples (evenly spaced rows) are drawn; the R² in each panel's title is
    of all the samples.

    Parameters
    ----------
    y_true, y_pred : array-like (n,) or (n, k)
    path : str or Path
    names : sequence of k str, optional
        The targets' names, for the axes.
    """
    from fastnn.preprocessing import regression_metrics

    _matplotlib()
    check_picture(path, force)
    T = np.asarray(y_true, np.float64).reshape(len(y_true), -1)
    P = np.asarray(y_pred, np.float64).reshape(len(y_pred), -1)
    if T.shape != P.shape or not len(T):
        raise DataError(f"true and predicted values differ in shape: {T.shape} and {P.shape}")
    k = T.shape[1]
    names = [str(n) for n in names] if names else [f"target {j}" for j in range(k)]
    panels = min(k, MAX_TARGET_PANELS)
    rows = np.unique(np.linspace(0, len(T) - 1, min(len(T), MAX_SCATTER_POINTS)).astype(np.int64))
    with _drawing() as (Figure, Canvas):
        fig = Figure(figsize=(4.5 * min(panels, 4), 4.5 * math.ceil(panels / 4)),
                     layout="constrained")
        for j in range(panels):
            ax = fig.add_subplot(math.ceil(panels / 4), min(panels, 4), j + 1)
            with np.errstate(over="ignore", invalid="ignore"):
                r2 = regression_metrics(T[:, j], P[:, j])["r2"]
            t, p = (np.clip(v[rows, j], -MAX_DRAWN_VALUE, MAX_DRAWN_VALUE) for v in (T, P))
            ax.scatter(t, p, s=8, alpha=0.6)
            low, high = min(t.min(), p.min()), max(t.max(), p.max())
            ax.plot([low, high], [low, high], color="grey", linewidth=1)
            ax.set_xlabel(f"true {_label(names[j])}")
            ax.set_ylabel(f"predicted {_label(names[j])}")
            ax.set_title(_label(title, 2 * MAX_TEXT) if title else
                         f"R\N{SUPERSCRIPT TWO} = {r2:.3f} ({len(T):,} samples)"
                         + (f", {len(rows):,} drawn" if len(rows) < len(T) else ""))
        if panels < k:
            fig.suptitle(f"the first {panels} of {k:,} targets")
        _save(fig, Canvas, path, dpi, force)


def _check_matrix(matrix):
    """matrix as an int64 array of counts (not copied if it is one), or DataError."""
    try:
        counts = np.asarray(matrix)
        if counts.dtype.kind not in "iu":
            counts = counts.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError("the confusion matrix must be a square array of counts") from None
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.size == 0:
        raise DataError(f"the confusion matrix must be square (k, k), not of shape {counts.shape}")
    if counts.min() < 0 or (counts.dtype.kind == "f" and not (
            np.all(np.isfinite(counts)) and np.array_equal(counts, np.round(counts)))):
        raise DataError("the confusion matrix must hold whole numbers >= 0")
    return counts.astype(np.int64, copy=False)


# ----------------------------------------------------------- misclassified

def image_shape_for(n_inputs, image_shape=None, hint="give image_shape=(height, width)"):
    """(height, width) of a sample drawn as an image: image_shape checked,
    or the square one for a square number of inputs (else a DataError
    ending in `hint`)."""
    if image_shape is None:
        side = math.isqrt(n_inputs)
        if side * side != n_inputs:
            raise DataError(f"cannot draw {n_inputs} inputs as an image: not a square number; "
                            f"{hint}")
        return side, side
    try:
        height, width = (int(d) for d in image_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"image_shape must be (height, width), not {image_shape!r}") from None
    if height < 1 or width < 1 or height * width != n_inputs:
        raise ConfigError(f"an image of {height}x{width} has {height * width} pixels, "
                          f"but the samples have {n_inputs} inputs")
    return height, width


def worst_classified(net, X, y):
    """Indices of the misclassified samples, worst first, and the predictions.

    Worst means the lowest output activation for the true class (with one
    output unit, for class 0 the activation's distance from 1).

    Returns
    -------
    (indices, predicted, labels) : int arrays
    """
    from fastnn.metrics import output_chunks, predicted_labels

    labels = net.training_labels(y)       # class names mapped to output units
    if labels is None:
        raise DataError("y holds float targets, not class labels; misclassified samples "
                        "need labels")
    predicted = np.empty(len(labels), dtype=np.int64)
    truth_score = np.empty(len(labels), dtype=np.float64)
    for rows, A in output_chunks(net, X):       # bounded, however many classes
        predicted[rows] = predicted_labels(A)
        truth = labels[rows]
        if A.shape[1] == 1:
            truth_score[rows] = np.where(truth == 1, A[:, 0], 1 - A[:, 0])
        else:
            truth_score[rows] = A[np.arange(len(truth)), truth]
    wrong = np.flatnonzero(predicted != labels)
    # stable sort: ties keep the data's order, so the picture is reproducible
    order = wrong[np.argsort(truth_score[wrong], kind="stable")]
    return order, predicted, labels


def plot_misclassified(net, X, y, path, n=25, image_shape=None, *, title=None, dpi=DPI,
                       force=False):
    """Draw the samples a network gets most wrong, as a grid of images.

    The misclassified samples whose true class gets the lowest output
    activation come first; each is titled ``true 7 → predicted 2`` with its
    row number below.

    Parameters
    ----------
    net : Network
    X : array (n_samples, net.sizes[0])
        Inputs, as the network takes them (uint8 pixels, or floats).
    y : array (n_samples,) of int labels, or one-hot rows
    path : str or Path
        The picture to write (atomically): .png, .svg or .pdf.
    n : int, default 25
        Draw at most this many samples.
    image_shape : (int, int), optional
        (height, width) of one sample [default: square, 28x28 for 784 inputs].
    title : str, optional
        [default: how many samples are shown, of how many misclassified]
    dpi : int, default 100
    force : bool, default False
        Replace an existing file that is not a picture of that format.

    Returns
    -------
    array of int
        The row numbers of the samples drawn, worst first.

    Raises
    ------
    DataError
        If the inputs are not a square number and no image_shape is given,
        X or y do not fit the network, or no sample is misclassified.
    FastnnError
        If matplotlib is missing, or the file cannot be written.
    """
    from fastnn._validation import positive_int

    _matplotlib()
    check_picture(path, force)
    n = positive_int(n, "n", maximum=MAX_SAMPLES)
    height, width = image_shape_for(net.sizes[0], image_shape)
    order, predicted, labels = worst_classified(net, X, y)
    if not len(order):
        raise DataError(f"all {len(labels):,} samples are classified correctly; "
                        f"no misclassified sample to draw")
    shown = order[:n]

    images = np.asarray(X)[shown].reshape(len(shown), height, width)
    # a large image is drawn from every step-th pixel: the cell is small anyway
    step = -(-max(height, width) // MAX_IMAGE_SIDE)
    images = images[:, ::step, ::step]
    if images.dtype != np.uint8:
        images = np.clip(images.astype(np.float64), -MAX_DRAWN_VALUE, MAX_DRAWN_VALUE)
    # one grey scale for every cell, so that the images compare
    low, high = (0, 255) if images.dtype == np.uint8 else (float(images.min()), float(images.max()))
    columns = min(len(shown), math.ceil(math.sqrt(len(shown))))
    rows = math.ceil(len(shown) / columns)
    cell = 1.7 * max(1.0, min(3.0, width / height))
    if title is None:
        title = (f"the {len(shown)} worst of {len(order):,} misclassified samples "
                 f"(of {len(labels):,})" + (f", every {step}th pixel" if step > 1 else ""))
    with _drawing() as (Figure, Canvas):
        fig = Figure(figsize=(cell * columns, 1.95 * rows + 0.5), layout="constrained")
        for k, i in enumerate(shown):
            ax = fig.add_subplot(rows, columns, k + 1)
            ax.imshow(images[k], cmap="gray_r", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(f"true {labels[i]} → predicted {predicted[i]}", fontsize=9)
            ax.set_xlabel(f"#{i}", fontsize=7, color="0.4", labelpad=1)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(_label(title, 2 * MAX_TEXT))
        _save(fig, Canvas, path, dpi, force)
    return shown


# ---------------------------------------------------------------- filters

#: The most filters plot_filters draws, of at most this many input channels
#: each, every kernel at most MAX_KERNEL_SIDE pixels a side (every k-th weight beyond).
MAX_FILTERS = 64
MAX_CHANNELS = 16
MAX_KERNEL_SIDE = 32


def plot_filters(net, path, *, title=None, dpi=DPI, force=False):
    """Draw the first convolution layer's filters (its shared weights), one
    small image per filter and input channel, as a grid.

    Each filter of a ``Conv2D(F, (kh, kw))`` layer is a kh x kw x C block of
    weights: one row of the grid per filter, one column per input channel
    (with grey images, one cell per filter, ten to a row). At most
    MAX_FILTERS filters and MAX_CHANNELS channels are drawn (the first ones;
    the title says so), all in one image, so the time taken is bounded. A
    diverging colour map centred on 0, the same scale for every cell: red
    weights excite, blue ones inhibit (Nielsen's chapter 6 draws them so).

    Returns
    -------
    int
        The number of filters drawn.

    An ensemble's (fastnn.ensemble) are those of its first network that has
    a Conv2D layer; the title says which.

    Raises
    ------
    ConfigError
        If the network has no Conv2D layer.
    FastnnError
        If matplotlib is missing, or the file cannot be written.
    """
    from fastnn.layers import Conv2D

    members = getattr(net, "members", [net])
    # an ensemble's: those of its first network with a Conv2D layer
    net, which = next(((m, j) for j, m in enumerate(members)
                       if any(isinstance(layer, Conv2D) for layer in m.layers)),
                      (members[0], 0))
    convs = [k for k, s in enumerate(net.plan.slots)
             if isinstance(net.plan.layers[s.layer], Conv2D)]
    if not convs:
        raise ConfigError(f"{net!r} has no Conv2D layer, so no filters to draw")
    _matplotlib()
    check_picture(path, force)
    W = net.weights[convs[0]]                                       # (kh, kw, C, F)
    kh, kw, C, F = W.shape
    shown, channels = min(F, MAX_FILTERS), min(C, MAX_CHANNELS)
    step = -(-max(kh, kw) // MAX_KERNEL_SIDE)
    W = np.asarray(W[::step, ::step, :channels, :shown], dtype=np.float64)
    h, w = W.shape[:2]
    limit = float(np.abs(W).max()) or 1.0
    if C == 1:
        columns = min(shown, 10)
        rows = math.ceil(shown / columns)
        cells = [(f, 0, divmod(f, columns)) for f in range(shown)]
    else:
        columns, rows = channels, shown
        cells = [(f, c, (f, c)) for f in range(shown) for c in range(channels)]
    # one image: the cells with a blank line (NaN, drawn white) between them
    mosaic = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for f, c, (r, col) in cells:
        mosaic[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = W[:, :, c, f]
    layer = net.plan.layers[net.plan.slots[convs[0]].layer]
    if title is None:
        title = (f"the {shown} filters of {layer!r}" if shown == F
                 else f"the first {shown} of {F} filters of {layer!r}")
        if channels < C:
            title += f", their first {channels} of {C} input channels"
        if step > 1:
            title += f", every {step}th weight"
        if len(members) > 1:
            title += f" (network {which + 1} of the ensemble's {len(members)})"
    with _drawing() as (Figure, Canvas):
        from matplotlib import colormaps

        side = 0.35 * max(h, 3)
        wide, tall = side * columns + 1.5, side * rows + 1.0
        shrink = min(1.0, 16 / max(wide, tall))        # at most 16 inches, same aspect
        fig = Figure(figsize=(max(wide * shrink, 7), max(tall * shrink, 3)),
                     layout="constrained")
        ax = fig.add_subplot()
        image = ax.imshow(mosaic, cmap=colormaps["RdBu_r"].with_extremes(bad="white"),
                          vmin=-limit, vmax=limit, interpolation="nearest")
        centres = [(h + 1) * r + (h - 1) / 2 for r in range(rows)]
        across = [(w + 1) * c + (w - 1) / 2 for c in range(columns)]
        if C == 1:
            ax.set_xticks([])
            ax.set_yticks(centres, [str(r * columns) for r in range(rows)], fontsize=7)
            ax.set_ylabel("filters (ten to a row)")
        else:
            ax.set_xticks(across, [str(c) for c in range(columns)], fontsize=7)
            ax.set_yticks(centres, [str(f) for f in range(rows)], fontsize=7)
            ax.set_xlabel("input channel")
            ax.set_ylabel("filter")
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.suptitle("\n".join(textwrap.wrap(_label(title, 2 * MAX_TEXT), 70)))
        _save(fig, Canvas, path, dpi, force)
    return shown
