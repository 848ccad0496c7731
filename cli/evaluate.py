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
--label-col). Above 100 classes the confusion matrix is summarised by its 20
largest off-diagonal cells, and --confusion-png draws the 30 classes with the
most errors: memory stays O(samples + classes).

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
    from fastnn.metrics import classification_report, predicted_classes
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
    # messages name the file (a CSV's rows by their lines), not X and y
    result = {"model": model, "data": dataset.source,
              **net.evaluate(X, dataset.y, name=dataset.source)}
    if unknown:
        result["unknown_values"] = unknown
    regression = pre is not None and pre.task == "regression"
    truth = predicted = names = None
    if "accuracy" in result:
        n_classes = max(net.sizes[-1], 2)
        # a chunk of rows at a time: never all the outputs of 10,000 classes at once
        predicted = predicted_classes(net, X)
        truth = net.training_labels(dataset.y, dataset.source)
        result.update(classification_report(truth, predicted, n_classes))
        names = pre.class_names() if pre is not None else None
        if names:
            for row in result["per_class"]:
                row["name"] = names[row["class"]]
            for cell in result.get("confusion_summary", {}).get("largest", []):
                cell["true_name"], cell["predicted_name"] = (names[cell["true"]],
                                                             names[cell["predicted"]])
            result["classes"] = names
    if confusion_png:
        _write_confusion(confusion_png, result, truth, predicted, names, dataset.source, force)
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
    if "confusion_summary" in result:
        _print_summary(result["confusion_summary"], result["per_class"])
        return
    matrix = result["confusion_matrix"]
    cell = max(5, len(str(max(max(r) for r in matrix))) + 1)
    click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
    if "classes" in result:
        click.echo("  " + ", ".join(f"{k} = {n}" for k, n in enumerate(names)))
    click.echo(" " * width + "".join(f"{k:>{cell}}" for k in range(len(matrix))))
    for k, row in enumerate(matrix):
        click.echo(f"{k:>{width}}" + "".join(f"{v:>{cell}}" for v in row))


def _print_summary(summary, per_class):
    from fastnn.metrics import MAX_MATRIX_CLASSES

    cells = summary["largest"]
    click.echo(f"\nconfusion matrix: {summary['classes']:,} classes, more than "
               f"{MAX_MATRIX_CLASSES} to print; {summary['misclassified']:,} samples "
               f"misclassified" + (f", the {len(cells)} largest cells (true -> predicted: "
                                   f"samples):" if cells else ""))
    for cell in cells:
        true, predicted = (shown(per_class[cell[k]].get("name", cell[k]))[:30]
                           for k in ("true", "predicted"))
        click.echo(f"  {true} -> {predicted}: {cell['samples']:,}")


def _write_confusion(path, result, truth, predicted, names, source, force):
    from fastnn.exceptions import DataError
    from fastnn.metrics import class_errors, confusion_matrix, most_confused
    from fastnn.plot import MAX_ANNOTATED_CLASSES, confusion_title, plot_confusion

    # before any report is printed, so a failure leaves no half-done output
    if truth is None:
        raise DataError(f"{source} has float targets, not class labels: no confusion matrix "
                        f"to draw for --confusion-png")
    if "confusion_matrix" in result:
        plot_confusion(result["confusion_matrix"], path, result.get("classes"), force=force)
        return
    # too many classes to draw: the part of the matrix among those with the most errors
    k = result["confusion_summary"]["classes"]
    keep = most_confused(class_errors(truth, predicted, k), MAX_ANNOTATED_CLASSES)
    correct = result["n"] - result["confusion_summary"]["misclassified"]
    title = (f"{confusion_title(correct, result['n'])}; the {len(keep)} classes with the most "
             f"errors, of {k:,}")
    plot_confusion(confusion_matrix(truth, predicted, k, classes=keep), path,
                   [names[c] for c in keep] if names else [str(c) for c in keep], title=title,
                   force=force)


def _write_scatter(path, net, X, dataset, force):
    from fastnn.exceptions import DataError
    from fastnn.plot import plot_predicted

    pre = net.preprocessing
    if pre is None or pre.task != "regression":
        raise DataError("--scatter-png draws a regression's predictions; this model is not a "
                        "regression (use --confusion-png for a classifier)")
    plot_predicted(dataset.y, net.predict(X), path, pre.target_names, force=force)
