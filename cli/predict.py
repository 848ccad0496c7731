"""``fastnn predict``."""
import csv
import io

import click
import numpy as np

from fastnn.cli.common import (DATA_HELP, Command, Integer, check_outputs, csv_options,
                               data_inputs, data_options, force_option, load, model_reading,
                               model_rows, set_threads, threads_option, training_label_col)
from fastnn.files import FileKind

#: What an existing -o file must be to be replaced without --force: the CSV
#: that predict writes.
PREDICTIONS_CSV = FileKind("predictions CSV written by fastnn predict",
                           lambda head: head.startswith((b"label\n", b"label\r\n", b"label,p0,",
                                                        b"predicted_")))

HELP = """Predict the class of each sample of DATA with MODEL, as CSV: one row per
sample with its label, by class name (and with --proba the output
activations); for a regression, the predicted values, one column per
target (predicted_NAME). A CSV DATA's label column, if it has one, is the
one MODEL was trained with (or --label-col).

\b
Examples:
    fastnn predict mnist.safetensors mnist -o predictions.csv
    fastnn predict mnist.safetensors images.npy --proba

""" + DATA_HELP


@click.command(cls=Command, help=HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data")
@data_options
@csv_options
@click.option("-o", "--out", type=click.Path(), help="Write the CSV here [default: stdout].")
@click.option("--proba", is_flag=True, help="Also write the output layer's activations.")
@click.option("--limit", type=Integer(min=1), help="Use only the first N samples.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead of CSV: the labels (and with --proba the "
                   "outputs); not with -o.")
@threads_option
@force_option
def predict(model, data, labels, label_col, delimiter, decimal, out, proba, limit, as_json, threads,
            force):
    from fastnn import load as load_model
    from fastnn.exceptions import FastnnError
    from fastnn.files import atomic_write
    from fastnn.metrics import predicted_classes, predicted_labels

    if as_json and out:
        raise click.UsageError("--json prints to stdout; give it or -o, not both")
    check_outputs([("-o", out, PREDICTIONS_CSV)],
                  [("MODEL", model)] + data_inputs("DATA", data, labels), force)
    set_threads(threads)
    net = load_model(model)
    dataset = load(data, "test", labels, training_label_col(net, label_col), limit=limit,
                   need_labels=False, delimiter=delimiter, decimal=decimal, **model_reading(net))
    X, unknown = model_rows(net, dataset, quiet=as_json)
    net.check_data(X, name=dataset.source)     # messages name the file and its lines
    pre = net.preprocessing
    regression = pre is not None and pre.task == "regression"
    # only the classes: a chunk of rows at a time, however many classes there are
    outputs = net.forward(X) if regression or proba else None
    if regression:
        values = pre.restore(outputs)
        names = pre.target_names or (["value"] if values.shape[1] == 1 else
                                     [f"value{j}" for j in range(values.shape[1])])
        n_rows = len(values)
    else:
        predicted = predicted_labels(outputs) if proba else predicted_classes(net, X)
        labels = predicted if pre is None else pre.decode(predicted)
        n_rows = len(predicted)
    if as_json:
        from fastnn.cli.common import echo_json

        result = {"model": model, "data": dataset.source, "n": n_rows}
        if unknown:
            result["unknown_values"] = unknown
        if regression:
            result["targets"] = list(names)
            result["values"] = values
        else:
            result["labels"] = labels
        if proba:
            result["outputs"] = outputs
        echo_json(result)
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if regression:
        writer.writerow([f"predicted_{n}" for n in names])
        np.savetxt(text, values, fmt="%.9g", delimiter=",")
    else:
        writer.writerow(["label"] + ([f"p{k}" for k in range(outputs.shape[1])] if proba
                                     else []))
        if proba:
            writer.writerows([label, *(f"{p:.6g}" for p in row)]
                             for label, row in zip(labels.tolist(), outputs.tolist()))
        else:
            writer.writerows([label] for label in labels.tolist())
    if out:
        atomic_write(out, text.getvalue(), FastnnError, kind=PREDICTIONS_CSV, force=force)
        click.echo(f"Wrote {n_rows:,} predictions to {out}", err=True)
    else:
        click.echo(text.getvalue(), nl=False)
