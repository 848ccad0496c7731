"""``fastnn eval``."""
import click

from fastnn.cli.common import (DATA_HELP, Command, check_outputs, data_inputs, data_options,
                               echo_json, force_option, load, match_inputs, set_threads,
                               threads_option, training_label_col)

HELP = """Evaluate MODEL on DATA (default: the mnist test split): loss, accuracy,
per-class precision, recall and F1, and the confusion matrix. A CSV DATA's
label column is the one MODEL was trained with (or --label-col).

\b
Examples:
    fastnn eval mnist.safetensors
    fastnn eval model.safetensors test.csv --label-col label --json
    fastnn eval mnist.safetensors --confusion-png confusion.png

""" + DATA_HELP


@click.command("eval", cls=Command, help=HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", required=False, default="mnist")
@data_options
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--confusion-png", type=click.Path(), metavar="FILE",
              help="Also draw the confusion matrix as a picture (.png, .svg or .pdf; needs "
                   "matplotlib).")
@force_option
def eval_command(model, data, labels, label_col, limit, threads, as_json, confusion_png, force):
    from fastnn import load as load_model
    from fastnn.metrics import classification_report
    from fastnn.plot import picture_format

    if confusion_png:
        check_outputs([("--confusion-png", confusion_png, picture_format(confusion_png)[1])],
                      [("MODEL", model)] + data_inputs("DATA", data, labels), force)
    set_threads(threads)
    net = load_model(model)
    dataset = load(data, "test", labels, training_label_col(net, label_col),
                   n_features=net.sizes[0], limit=limit)
    X = match_inputs(net, dataset.X)
    result = {"model": model, "data": dataset.source, **net.evaluate(X, dataset.y)}
    if "accuracy" in result:
        n_classes = max(net.sizes[-1], 2)
        predicted = net.predict(X)
        truth = dataset.y if dataset.y.ndim == 1 else dataset.y.argmax(axis=1)
        result.update(classification_report(truth, predicted, n_classes))
    if confusion_png:
        _write_confusion(confusion_png, result, dataset.source, force)
        if as_json:
            result["confusion_png"] = confusion_png
    if as_json:
        echo_json(result)
        return
    click.echo(f"{model} on {dataset.source}: {result['n']:,} samples, loss {result['loss']:.4f}")
    if "accuracy" not in result:
        return
    correct = round(result["accuracy"] * result["n"])
    click.echo(f"accuracy {correct} / {result['n']} ({result['accuracy']:.2%}), macro F1 "
               f"{result['macro_f1']:.4f}\n")
    click.echo(f"{'class':>5}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}")
    for row in result["per_class"]:
        click.echo(f"{row['class']:>5}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                   f"{row['f1']:>6.4f}  {row['support']:>7}")
    matrix = result["confusion_matrix"]
    width = max(5, len(str(max(max(r) for r in matrix))) + 1)
    click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
    click.echo("     " + "".join(f"{k:>{width}}" for k in range(len(matrix))))
    for k, row in enumerate(matrix):
        click.echo(f"{k:>5}" + "".join(f"{v:>{width}}" for v in row))
    if confusion_png:
        click.echo(f"\nWrote the confusion matrix to {confusion_png}")


def _write_confusion(path, result, source, force):
    from fastnn.exceptions import DataError
    from fastnn.plot import plot_confusion

    # before any report is printed, so a failure leaves no half-done output
    if "confusion_matrix" not in result:
        raise DataError(f"{source} has float targets, not class labels: no confusion matrix "
                        f"to draw for --confusion-png")
    plot_confusion(result["confusion_matrix"], path, force=force)
