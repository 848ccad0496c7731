"""``fastnn train``."""
import json
import sys

import click
from click.core import ParameterSource

from fastnn.activations import ACTIVATIONS
from fastnn.datasets import DATASETS
from fastnn.cli.common import (DATA_HELP, Command, data_options, echo_json, jsonable, load, match_inputs,
                               set_threads, threads_option)
from fastnn.initializers import INITIALIZERS
from fastnn.losses import LOSSES
from fastnn.network import DTYPES
from fastnn.optimizers import OPTIMIZERS
from fastnn.training import AUGMENTATIONS, epoch_line

# Options that describe the network: fixed by the model file when resuming.
ARCHITECTURE = ("layers", "hidden", "activation", "output_activation", "loss", "init", "slope",
                "dtype", "seed")
# Options of fit() that a resumed run takes from the model file unless given again.
RESUMABLE = ("batch_size", "lr", "optimizer", "momentum", "betas", "eps", "l2", "l1", "dropout",
             "lr_schedule", "val_split", "early_stopping", "augment", "class_weight", "shuffle")

# What to do when the labels of DATA do not look like class labels.
LABELS_HINT = ("Name the label column with --label-col (a CSV's last column is the default) "
               "or give the labels file with --labels")

HELP = """Train a network on DATA (default: mnist) and save it with -o.

The defaults are Nielsen's chapter-1 recipe: one hidden layer of 30 sigmoid
units, quadratic cost, 30 epochs, mini-batches of 10, eta = 3.0. Each epoch
prints one line (with a progress bar while it runs, on a terminal). Ctrl-C
stops after the current batch and saves the model; --resume continues it
(early stopping then counts afresh, and an interrupted epoch starts over).

\b
Examples:
    fastnn train -o mnist.safetensors
    fastnn train mnist --hidden 100 --loss cross_entropy --lr 0.5 --l2 5 --val-split 0.1667
    fastnn train mnist --hidden 512,256 --activation relu --output softmax \\
        --loss cross_entropy --init he --optimizer adam --lr 1e-3 --dropout 0.2 \\
        --batch-size 128 --epochs 20 --lr-schedule step:every=5,factor=0.5 -o modern.safetensors
    fastnn train digits.csv --label-col label --hidden 64 --epochs 50 -o digits.safetensors
    fastnn train --resume mnist.safetensors --epochs 10

""" + DATA_HELP


def int_list(ctx, param, value):
    if value is None:
        return None
    try:
        sizes = [int(s) for s in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 784,30,10, not {value!r}")
    if min(sizes, default=0) < 1:
        raise click.BadParameter(f"layer sizes must be integers >= 1, not {value!r}")
    if param.name == "layers" and len(sizes) < 2:
        raise click.BadParameter(f"needs at least two layer sizes, not {value!r}")
    return sizes


def float_list(ctx, param, value):
    if value is None:
        return None
    try:
        values = [float(s) for s in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, not {value!r}")
    return values[0] if len(values) == 1 and param.name == "dropout" else values


def choice(registry, exclude=()):
    return click.Choice(sorted(n for n in registry if n not in exclude))


@click.command(cls=Command, help=HELP)
@click.argument("data", required=False)
@click.option("-o", "--out", type=click.Path(dir_okay=False),
              help="Save the model here (safetensors) [default with --resume: that file].")
@data_options
@click.option("--val", "val_data", metavar="DATA", help="Validation data (any DATA form).")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True),
              help="Hold out this fraction of DATA (the last rows) for validation.")
@click.option("--test", "test_data", metavar="DATA",
              help="Also report accuracy on this data after each epoch, for information only "
                   "[default: the test split of a named dataset].")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples of DATA.")
@click.option("--layers", callback=int_list, help="Units per layer, input first: 784,30,10.")
@click.option("--hidden", callback=int_list,
              help="Hidden layer sizes, the input and output sizes taken from the data "
                   "[default: 30].")
@click.option("--activation", type=choice(ACTIVATIONS, ("softmax",)),
              help="Hidden-layer activation [default: sigmoid].")
@click.option("--output", "output_activation", type=choice(ACTIVATIONS),
              help="Output-layer activation [default: the hidden one].")
@click.option("--loss", type=choice(LOSSES), help="[default: mse]")
@click.option("--init", type=choice(INITIALIZERS), help="Weight initialisation [default: nielsen].")
@click.option("--slope", type=click.FloatRange(min=0), help="leaky_relu's slope [default: 0.01].")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), help="[default: float32]")
@click.option("--seed", type=click.IntRange(min=0), help="Makes the run reproducible "
              "[default: random, saved in the model].")
@click.option("--optimizer", type=choice(OPTIMIZERS), help="[default: sgd]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate [default: the optimizer's, 3.0 for sgd].")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True),
              help="For momentum and nesterov [default: 0.9].")
@click.option("--betas", callback=float_list, metavar="B1,B2", help="For adam [default: 0.9,0.999].")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), help="For adam [default: 1e-8].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="[default: 10; the whole data for rprop]")
@click.option("--epochs", type=click.IntRange(min=0),
              help="[default: 30; with --resume, the rest of the saved run]")
@click.option("--l2", type=click.FloatRange(min=0), help="L2 regularisation lambda (Nielsen's).")
@click.option("--l1", type=click.FloatRange(min=0), help="L1 regularisation lambda.")
@click.option("--dropout", callback=float_list, metavar="P[,P...]",
              help="Dropout rate of the hidden layers: one, or one per hidden layer.")
@click.option("--lr-schedule", metavar="SPEC",
              help="constant, step:every=5,factor=0.5 or plateau:patience=3,factor=0.1,"
                   "max_reductions=3.")
@click.option("--early-stopping", type=click.IntRange(min=1), metavar="N",
              help="Stop after N epochs without a lower validation loss; keep the best weights.")
@click.option("--augment", type=click.Choice(sorted(AUGMENTATIONS)),
              help="shift: move each square image by up to 2 pixels, every epoch.")
@click.option("--class-weight", type=click.Choice(["balanced"]),
              help="Weigh classes by n / (k * n_c).")
@click.option("--no-shuffle", "shuffle", flag_value=False, default=None,
              help="Visit the samples in their order each epoch.")
@threads_option
@click.option("--checkpoint-every", type=click.IntRange(min=1), metavar="N",
              help="Save the model every N epochs.")
@click.option("--resume", type=click.Path(dir_okay=False),
              help="Continue training a saved model, with its optimizer state and options.")
@click.option("--history", type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Write the per-epoch metrics here.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object when done.")
@click.pass_context
def train(ctx, data, out, labels, label_col, val_data, test_data, limit, resume,
          checkpoint_every, history, quiet, as_json, threads, **options):
    from fastnn import load as load_model
    from fastnn.exceptions import TrainingDiverged
    from fastnn.schedules import parse as parse_schedule

    given = {name for name in options if options[name] is not None
             and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if options["layers"] and options["hidden"]:
        raise click.UsageError("give --layers or --hidden, not both")
    if val_data and options["val_split"]:
        raise click.UsageError("give --val or --val-split, not both")
    run = {}
    if resume:
        fixed = sorted(given & set(ARCHITECTURE))
        if fixed:
            raise click.UsageError(f"--{fixed[0].replace('_activation', '').replace('_', '-')} "
                                   f"is fixed by the model file when resuming")
        net = load_model(resume)
        run = dict(net.training.get("cli", {}))
        stored = net.training
        for name in RESUMABLE:
            if name not in given and name in stored.get("cli_options", {}):
                options[name] = stored["cli_options"][name]
        data = data or run.get("data")
        labels, label_col = labels or run.get("labels"), label_col or run.get("label_col")
        val_data = val_data or run.get("val")
        test_data = test_data or run.get("test")
        limit = limit or run.get("limit")
        if options["epochs"] is None:
            options["epochs"] = max(run.get("epochs", 0) - run.get("epochs_done", 0), 0)
        out = out or resume
    data = data or "mnist"
    if checkpoint_every and not out:
        raise click.UsageError("--checkpoint-every needs -o MODEL")
    set_threads(threads)
    say = (lambda *a, **k: None) if quiet or as_json else click.echo

    train_set = load(data, "train", labels, label_col, limit=limit)
    if not resume:
        net = _new_network(train_set, options)
    X_train = match_inputs(net, train_set.X)
    if net.input_dtype is None:
        # a new network: fit will record the training inputs' kind, and the
        # validation and test data must be scaled the same way (uint8 / 255)
        net.input_dtype = str(X_train.dtype)
    val = None
    if val_data:
        v = load(val_data, "test", n_features=net.sizes[0])
        val = (match_inputs(net, v.X), v.y)
    if test_data is None and data in DATASETS and val_data != data:
        test_data = data
    test = load(test_data, "test", n_features=net.sizes[0]) if test_data else None
    X_test = match_inputs(net, test.X) if test is not None else None

    epochs = 30 if options["epochs"] is None else options["epochs"]
    cli_options = {k: options[k] for k in RESUMABLE if options[k] is not None}
    fit_options = dict(cli_options)
    if "lr_schedule" in fit_options:
        fit_options["lr_schedule"] = parse_schedule(fit_options["lr_schedule"])
    if resume and net.training.get("lr_schedule_state"):
        schedule = parse_schedule(options["lr_schedule"] or net.training.get("lr_schedule"))
        schedule.load_state_dict(net.training["lr_schedule_state"])
        fit_options["lr_schedule"] = schedule
    run.update(data=data, labels=labels, label_col=label_col, val=val_data, test=test_data,
               limit=limit, epochs=run.get("epochs_done", 0) + epochs)
    run.setdefault("epochs_done", 0)
    done_before = run["epochs_done"]
    records = []

    def save_model():
        run["epochs_done"] = done_before + (net.history.epochs if net.history else 0)
        net.training.update(cli=run, cli_options=cli_options)
        net.save(out)
        if history:
            _write_history(history, records, net)

    def after_epoch(epoch, metrics):
        record = dict(metrics)
        if test is not None:
            result = net.evaluate(X_test, test.y)
            record["test_loss"] = result["loss"]
            if "accuracy" in result:
                record["test_accuracy"] = result["accuracy"]
        records.append(record)
        say(epoch_line(done_before + epoch + 1, record, of=run["epochs"]))
        if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
            save_model()

    net.check_data(X_train, train_set.y)
    say(f"{net}: {net.n_params:,} parameters; training on {len(train_set):,} samples "
        f"of {train_set.source}")
    progress = _progress_bar() if not (quiet or as_json) and sys.stderr.isatty() else None
    try:
        net.fit(X_train, train_set.y, epochs=epochs, validation_data=val,
                validation_split=fit_options.pop("val_split", 0.0), callback=after_epoch,
                progress=progress, **fit_options)
    except KeyboardInterrupt:
        if out:
            save_model()
            click.echo(f"Interrupted: saved the model after {net.epochs_trained} epoch(s) to {out}; "
                       f"continue with: fastnn train --resume {out}", err=True)
        else:
            if history:
                _write_history(history, records, net)
            click.echo("Interrupted (no model saved: no -o MODEL given)", err=True)
        ctx.exit(130)
    except TrainingDiverged as exc:
        if history and not out:
            _write_history(history, records, net)
        if out and records:
            save_model()
            raise click.ClickException(f"{exc} Saved the weights of the last good epoch to {out}.")
        raise click.ClickException(str(exc))
    if out:
        save_model()
        say(f"Saved the model to {out}")
    elif history:
        _write_history(history, records, net)
    if as_json:
        echo_json({"model": out, "network": repr(net), "epochs_trained": net.epochs_trained,
                   "history": _history_dict(records, net), "final": records[-1] if records else {}})


def _new_network(train_set, options):
    from fastnn._validation import n_outputs_for
    from fastnn.network import Network

    if options["layers"]:
        sizes = options["layers"]
    else:
        n_out = n_outputs_for(train_set.y, train_set.source, LABELS_HINT)
        sizes = [train_set.X.shape[1], *(options["hidden"] or [30]), n_out]
    kwargs = {k: options[k] for k in ("loss", "init", "slope", "dtype", "seed")
              if options[k] is not None}
    return Network(sizes, activation=options["activation"] or "sigmoid",
                   output=options["output_activation"], **kwargs)


def _progress_bar():
    from fastnn.training import text_progress

    return text_progress(sys.stderr)


def _history_dict(records, net):
    """fit's History with the CLI's test metrics added to each epoch."""
    from fastnn.history import History

    history = History()
    for record in records:
        history.append(record)
    if net.history is not None:
        history.stopped, history.best_epoch = net.history.stopped, net.history.best_epoch
    return history.to_dict()


def _write_history(path, records, net):
    from fastnn.exceptions import FastnnError
    from fastnn.io import atomic_write

    atomic_write(path, json.dumps(jsonable(_history_dict(records, net)), indent=2), FastnnError)
