"""``fastnn eval``."""
import click

from fastnn.cli.common import (DATA_HELP, Command, Integer, check_outputs, csv_options,
                               data_inputs, data_options, echo_json, force_option, load,
                               model_reading, model_rows, set_threads, shown, threads_option,
                               training_label_col)

HELP = """Evaluate MODEL on DATA (default: the mnist test split). A classifier gets
its loss, accuracy, per-class precision, recall and F1 (by class name) and
the confusion matrix; a regression, MSE, RMSE, MAE and R² of its predicted
values. A CSV DATA's label column is the one MODEL was trained with (or
--label-col).

\b
Examples:
    fastnn eval mnist.safetensors
    fastnn eval model.safetensors test.csv --label-col label --json
    fastnn eval mnist.safetensors --confusion-png confusion.png
    fastnn eval diabetes.safetensors test.csv --scatter-png predicted.png

""" + DATA_HELP


@click.command("eval", cls=Command, help=HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", required=False, default="mnist")
@data_options
@csv_options
@click.option("--limit", type=Integer(min=1), help="Use only the first N samples.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--confusion-png", type=click.Path(), metavar="FILE",
              help="Also draw the confusion matrix as a picture (.png, .svg or .pdf; needs "
                   "matplotlib).")
@click.option("--scatter-png", type=click.Path(), metavar="FILE",
              help="Regression: also draw predicted against true values (.png, .svg or .pdf).")
@force_option
def eval_command(model, data, labels, label_col, delimiter, decimal, limit, threads, as_json,
                 confusion_png, scatter_png, force):
    from fastnn import load as load_model
    from fastnn.metrics import classification_report, predicted_labels
    from fastnn.plot import picture_format

    pictures = [(flag, path, picture_format(path)[1]) for flag, path in
                (("--confusion-png", confusion_png), ("--scatter-png", scatter_png)) if path]
    if pictures:
        check_outputs(pictures, [("MODEL", model)] + data_inputs("DATA", data, labels), force)
    set_threads(threads)
    net = load_model(model)
    dataset = load(data, "test", labels, training_label_col(net, label_col), limit=limit,
                   delimiter=delimiter, decimal=decimal, quiet=as_json, **model_reading(net))
    X, unknown = model_rows(net, dataset, quiet=as_json)
    pre = net.preprocessing
    result = {"model": model, "data": dataset.source, **net.evaluate(X, dataset.y)}
    if unknown:
        result["unknown_values"] = unknown
    regression = pre is not None and pre.task == "regression"
    if "accuracy" in result:
        n_classes = max(net.sizes[-1], 2)
        predicted = predicted_labels(net.forward(X))
        truth = dataset.y if pre is None else pre.class_indices(dataset.y)
        truth = truth if truth.ndim == 1 else truth.argmax(axis=1)
        result.update(classification_report(truth, predicted, n_classes))
        names = pre.class_names() if pre is not None else None
        if names:
            for row in result["per_class"]:
                row["name"] = names[row["class"]]
            result["classes"] = names
    if confusion_png:
        _write_confusion(confusion_png, result, dataset.source, force)
        if as_json:
            result["confusion_png"] = confusion_png
    if scatter_png:
        _write_scatter(scatter_png, net, X, dataset, force)
        if as_json:
            result["scatter_png"] = scatter_png
    if as_json:
        echo_json(result)
        return
    click.echo(f"{model} on {dataset.source}: {result['n']:,} samples, loss {result['loss']:.4f}")
    if regression:
        click.echo(f"MSE {result['mse']:.6g}  RMSE {result['rmse']:.6g}  MAE {result['mae']:.6g}"
                   f"  R² {result['r2']:.4f}")
    if "accuracy" in result:
        _print_classification(result)
    for flag, path in (("the confusion matrix", confusion_png),
                       ("predicted against true values", scatter_png)):
        if path:
            click.echo(f"\nWrote {flag} to {path}")


def _print_classification(result):
    correct = round(result["accuracy"] * result["n"])
    click.echo(f"accuracy {correct} / {result['n']} ({result['accuracy']:.2%}), macro F1 "
               f"{result['macro_f1']:.4f}\n")
    names = [shown(row.get("name", str(row["class"])))[:30] for row in result["per_class"]]
    width = max(5, *(len(n) for n in names))
    click.echo(f"{'class':>{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}")
    for name, row in zip(names, result["per_class"]):
        click.echo(f"{name:>{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                   f"{row['f1']:>6.4f}  {row['support']:>7}")
    matrix = result["confusion_matrix"]
    cell = max(5, len(str(max(max(r) for r in matrix))) + 1)
    click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
    if "classes" in result:
        click.echo("  " + ", ".join(f"{k} = {n}" for k, n in enumerate(names)))
    click.echo(" " * width + "".join(f"{k:>{cell}}" for k in range(len(matrix))))
    for k, row in enumerate(matrix):
        click.echo(f"{k:>{width}}" + "".join(f"{v:>{cell}}" for v in row))


def _write_confusion(path, result, source, force):
    from fastnn.exceptions import DataError
    from fastnn.plot import plot_confusion

    # before any report is printed, so a failure leaves no half-done output
    if "confusion_matrix" not in result:
        raise DataError(f"{source} has float targets, not class labels: no confusion matrix "
                        f"to draw for --confusion-png")
    plot_confusion(result["confusion_matrix"], path, result.get("classes"), force=force)


def _write_scatter(path, net, X, dataset, force):
    from fastnn.exceptions import DataError
    from fastnn.plot import plot_predicted

    pre = net.preprocessing
    if pre is None or pre.task != "regression":
        raise DataError("--scatter-png draws a regression's predictions; this model is not a "
                        "regression (use --confusion-png for a classifier)")
    plot_predicted(dataset.y, net.predict(X), path, pre.target_names, force=force)
