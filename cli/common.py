"""What the commands share: data options, loading data for a model, JSON output."""
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

class ShortUsageError(click.UsageError):
    """A usage error shown in two lines, the error first, then where help
    is (Click's own shows the usage, a hint and a blank line first)."""

    def show(self, file=None):
        file = file or click.get_text_stream("stderr")
        click.echo(f"Error: {self.format_message()}", file=file)
        if self.ctx is not None and self.ctx.help_option_names:
            click.echo(f"Try '{self.ctx.command_path} {self.ctx.help_option_names[0]}' "
                       f"for help.", file=file)


def _short(exc):
    if isinstance(exc, ShortUsageError):
        return exc
    short = ShortUsageError(" ".join(exc.format_message().split()), ctx=exc.ctx)
    short.exit_code = exc.exit_code
    return short


class MainMixin:
    """main() of a command run as the program itself (no args given, so
    they come from sys.argv): SIGINT is the command's until the process
    exits, and ignored on the way out (see fastnn.interrupts). Usage errors
    are shown in two lines (ShortUsageError)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _short(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _short(exc) from None

    def main(self, args=None, *rest, **kwargs):
        from fastnn.interrupts import own_sigint_until_exit

        if args is not None:  # CliRunner, or a program embedding the command
            return super().main(args, *rest, **kwargs)
        leaving = own_sigint_until_exit()
        try:
            return super().main(args, *rest, **kwargs)
        finally:
            leaving()


#: ctx.meta key: a command's own words for a Ctrl-C that reaches Command.invoke
#: (a callable giving the line), for the moments its own handlers do not cover.
INTERRUPTED = "fastnn.interrupted"


class Command(MainMixin, click.Command):
    """A command that shows fastnn's own errors as one line with exit status
    1 (Click's way), and a Ctrl-C as 'Interrupted' with status 130, whether it
    runs inside the fastnn group or on its own (or as the command's
    ctx.meta[INTERRUPTED]() says: `fastnn train` once its run is saved). The
    first Ctrl-C interrupts; later ones are ignored, so that what the first
    one does (save, exit 130) is never cut short."""

    def invoke(self, ctx):
        from fastnn.exceptions import FastnnError
        from fastnn.interrupts import FirstInterruptOnly

        with FirstInterruptOnly() as first, one_line_warnings():
            try:
                result = super().invoke(ctx)
                # the command is done: a Ctrl-C from here to the process's
                # exit is ignored. (One that came after the try, as the
                # blocks closed, reached Click as 'Aborted!' with status 1:
                # once in 200 interrupted trainings, after the final save.)
                first.disarm()
                return result
            except FastnnError as exc:
                raise click.ClickException(str(exc)) from None
            except KeyboardInterrupt:
                words = ctx.meta.get(INTERRUPTED)
                click.echo(words() if words is not None else "Interrupted", err=True)
                ctx.exit(130)


@contextmanager
def one_line_warnings():
    """Within this block fastnn's own warnings (FastnnWarning: bfloat16
    emulated on this CPU) are shown as one line on stderr, 'Warning: ...',
    without Python's file and line."""
    import warnings

    from fastnn.exceptions import FastnnWarning

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, FastnnWarning):
                click.echo(f"Warning: {message}", err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


DATA_HELP = ("DATA is a dataset name (mnist), an IDX images file (labels found beside it or "
             "given by --labels), a CSV file (.csv, .tsv, .txt; its delimiter and decimal mark "
             "detected), an .npz with arrays X and y, an .npy file "
             "(labels beside it or --labels) or Nielsen's mnist.pkl.gz.")


def data_options(command):
    """--labels and --label-col, for commands that read DATA."""
    command = click.option("--label-col", metavar="COL",
                           help="CSV label column, by name or 1-based number [default: last].")(command)
    command = click.option("--labels", type=click.Path(dir_okay=False),
                           help="Labels file of IDX or .npy images.")(command)
    return command


def csv_options(command):
    """--delimiter and --decimal, for commands that read CSV files (fastnn.csvfile)."""
    command = click.option("--decimal", type=click.Choice([".", ","]),
                           help="CSV decimal mark [default: detected; ',' only when the "
                                "fields are not comma-separated].")(command)
    command = click.option("--delimiter", metavar="CHAR",
                           help="CSV field delimiter: ',', ';', tab or '|' (or comma, semicolon, "
                                "tab, pipe) [default: detected from the first lines].")(command)
    return command


def force_option(command):
    """--force, for commands that write files."""
    return click.option("--force", is_flag=True,
                        help="Replace an existing output file even if it is not of the kind "
                             "written (never a directory, FIFO or device, nor an input).")(command)


def check_outputs(outputs, inputs=(), force=False):
    """Check every output before any work (fastnn.files): none is the same
    file as an input or another output, and each may be written. outputs are
    (label, path, FileKind), inputs (label, path); returns {label: Output}."""
    from fastnn.exceptions import OutputError
    from fastnn.files import check_distinct, check_output

    outputs = [(label, path, kind) for label, path, kind in outputs if path]
    check_distinct([(label, path) for label, path, _ in outputs], inputs, OutputError)
    return {label: check_output(path, kind, force, OutputError) for label, path, kind in outputs}


def data_inputs(label, spec, labels=None):
    """(label, path) of each file DATA reads, for check_outputs."""
    from fastnn.data import source_files

    return [(label, path) for path in source_files(spec, labels)] if spec else []


def training_label_col(net, label_col):
    """label_col, or the CSV label column the model was trained with."""
    if label_col is not None:
        return label_col
    cli = net.training_record.get("cli") if isinstance(net.training_record, dict) else None
    return cli.get("label_col") if isinstance(cli, dict) else None


class Integer(click.IntRange):
    """click's IntRange, the text read by fastnn._validation.parse_int, as
    every integer a user types is (thousands of digits are refused by their
    length, in one line)."""

    name = "integer"

    def convert(self, value, param, ctx):
        from fastnn._validation import parse_int
        from fastnn.exceptions import ConfigError

        if isinstance(value, str):
            try:
                value = parse_int(value, "the value")
            except ConfigError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


def threads_option(command):
    return click.option("--threads", type=Integer(min=1),
                        help="BLAS threads [default: all cores].")(command)


def set_threads(threads):
    if threads:
        from fastnn.blas import set_num_threads

        set_num_threads(threads)


def load(spec, split, labels=None, label_col=None, n_features=None, limit=None,
         need_labels=True, delimiter=None, decimal=None, missing=None, drop=None, quiet=False):
    """A Data from DATA; with need_labels, refuse data without labels, and
    leave out the rows whose label is missing (saying how many on stderr).
    A CSV file's name (its `source`) is a fastnn._validation.DataName that
    knows each row's line, so that every message counts rows as lines."""
    from fastnn.data import load_data
    from fastnn.exceptions import DataError

    if limit is not None:
        from fastnn._validation import MAX_COUNT, positive_int

        positive_int(limit, "--limit", maximum=MAX_COUNT)
    data = load_data(spec, split=split, labels=labels, label_col=label_col, n_features=n_features,
                     delimiter=delimiter, decimal=decimal, missing=missing, drop=drop,
                     label_optional=not need_labels)
    lines = _csv_lines(spec, data)
    if limit is not None:
        data.X, data.y = data.X[:limit], None if data.y is None else data.y[:limit]
        data.unlabelled = None if data.unlabelled is None else data.unlabelled[:limit]
    if need_labels and data.y is None:
        raise DataError(f"{data.source} has no labels; give them with --labels "
                        f"(IDX, .npy) or --label-col (CSV)")
    if lines is not None:
        lines = lines[:len(data.X)]
        if need_labels and data.unlabelled is not None:
            lines = lines[~data.unlabelled]
    if need_labels:
        left_out = data.drop_unlabelled()
        if left_out and not quiet:
            click.echo(f"Note: left out {left_out:,} row{'s' if left_out > 1 else ''} of "
                       f"{shown(data.source)} whose label is missing", err=True)
    if lines is not None:
        from fastnn._validation import DataName

        data.source = DataName(data.source, lines)
    return data


def model_reading(net):
    """How DATA is read for a model: the raw columns it takes (to tell a file
    without labels), the cells that are missing and the columns it leaves
    out (not read at all)."""
    pre = net.preprocessing
    columns = pre.columns if pre is not None else None
    if columns is None:
        return {"n_features": net.sizes[0]}
    dropped = [c.name for c in columns.columns if c.kind == "dropped"]
    return {"n_features": columns.raw_width, "missing": list(columns.markers),
            "drop": dropped or None}


def _csv_lines(spec, data):
    """The file line of each row of a CSV file's Data (its header is line 1),
    or None for other data."""
    from fastnn.data import detect_format
    from fastnn.table import Table

    if not (os.path.isfile(spec) and detect_format(Path(spec)) == "csv"):
        return None
    if isinstance(data.X, Table) and data.X.lines is not None:
        return np.asarray(data.X.lines)
    if data.lines is not None:
        return np.asarray(data.lines)
    first = 1 if data.names is None and data.label_name is None else 2
    return np.arange(first, first + len(data.X))


def model_rows(net, dataset, quiet=False):
    """DATA's features as MODEL takes them (match_inputs), with notes on
    stderr: columns it does not use, and per categorical column the values
    it did not see in training. Returns (rows, {column: counts})."""
    rows = match_inputs(net, dataset.rows())
    pre = net.preprocessing
    if pre is None or pre.columns is None:
        return rows, {}
    unknown = pre.columns.unknown(rows, dataset.source)     # a missing column stops here
    extra = pre.columns.extra_columns(rows)
    if extra and not quiet:
        from fastnn._validation import listing

        click.echo(f"Note: {shown(dataset.source)}'s column{'s' if len(extra) > 1 else ''} "
                   f"{listing(extra, 8)} {'are' if len(extra) > 1 else 'is'} not used by the "
                   f"model", err=True)
    if unknown and not quiet:
        click.echo(f"Note: {unknown_text(unknown)}", err=True)
    return rows, unknown


def unknown_text(unknown):
    """'values not seen in training (encoded as zeros): sex 2 rows; ...'."""
    parts = []
    for kind, what in (("unseen", "values not seen in training, encoded as zeros"),
                       ("missing", "missing values where training had none, encoded as zeros")):
        cells = [f"{shown(name)} {counts[kind]:,}" for name, counts in unknown.items()
                 if kind in counts]
        if cells:
            more = f", ... ({len(cells)} columns)" if len(cells) > 8 else ""
            parts.append(f"{what}: {', '.join(cells[:8])}{more}")
    return "; ".join(parts)


def match_inputs(net, X):
    """X in the kind of inputs the network was trained on.

    uint8 inputs are scaled by 1/255 in the kernels, so whole numbers 0..255
    read as floats go to a network trained on uint8 pixels as uint8, and
    uint8 data goes to a network trained on floats unscaled, as floats.
    """
    from fastnn.table import Table

    if net.preprocessing is not None and net.preprocessing.columns is not None:
        return X          # raw rows, encoded by the model's columns
    if isinstance(X, Table):
        numbers = X.numeric()
        if numbers is None:
            from fastnn.exceptions import DataError

            raise DataError(f"{X.source} has text or missing values, but this model was trained "
                            f"on numbers only (a model trained on such rows takes them)")
        X = numbers
    if net.preprocessing is not None and net.preprocessing.scaling is not None:
        return X          # the network's scaling takes raw rows of any dtype
    if net.input_scaling.in_kernels and X.dtype != np.uint8:
        from fastnn.csvfile import pixels_or_floats

        return pixels_or_floats(X)
    if net.input_dtype in ("float32", "float64") and X.dtype == np.uint8:
        return X.astype(net.dtype)
    return X


def shown(text):
    """text from a file or a model, safe to print on one line: as it is if
    printable, else quoted with escapes (a class name may hold a newline or
    a terminal escape)."""
    text = str(text)
    return text if text.isprintable() else ascii(text)


def jsonable(value):
    """value with NumPy scalars and arrays as plain Python, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def echo_json(value):
    click.echo(json.dumps(jsonable(value), indent=2))
