"""``fastnn train``."""
import json
import os
import sys

import click
from click.core import ParameterSource

from fastnn.activations import ACTIVATIONS
from fastnn.callbacks import Callback
from fastnn.datasets import DATASETS
from fastnn.ensemble import MAX_MEMBERS
from fastnn.cli.common import (DATA_HELP, INTERRUPTED, Command, Integer, check_outputs,
                               csv_options, data_inputs, data_options, echo_json, jsonable, load,
                               match_inputs, model_reading, model_rows, set_threads,
                               threads_option)
from fastnn.initializers import INITIALIZERS
from fastnn.losses import LOSSES
from fastnn.network import DTYPES
from fastnn.optimizers import OPTIMIZERS
from fastnn._validation import TASKS
from fastnn.preprocessing import SCALINGS
from fastnn.recipes import CHOICES as RECIPE_CHOICES
from fastnn._kernels import AUGMENTATIONS
from fastnn.training import STALL_EPOCHS, epoch_line, stall_hint

# Options that describe the network: fixed by the model file when resuming.
ARCHITECTURE = ("layers", "hidden", "input_shape", "activation", "output_activation", "loss",
                "init", "slope", "dtype", "seed", "task", "scale", "categorical", "drop",
                "missing", "recipe")
# Options of fit() that a resumed run takes from the model file unless given again.
RESUMABLE = ("batch_size", "lr", "optimizer", "momentum", "betas", "eps", "l2", "l1", "dropout",
             "lr_schedule", "val_split", "early_stopping", "augment", "class_weight", "shuffle",
             "weight_decay", "clip_norm", "restore_best")
# Of those, the ones that make another run: refused on resume when they differ
# from the run's (option name -> its key in the model's training record).
FIXED_ON_RESUME = {"optimizer": "optimizer", "lr_schedule": "lr_schedule",
                   "val_split": "validation_split", "augment": "augment",
                   "class_weight": "class_weight", "shuffle": "shuffle",
                   "restore_best": "restore_best"}

# What to do when the labels of DATA do not look like class labels.
LABELS_HINT = ("Name the label column with --label-col (a CSV's last column is the default) "
               "or give the labels file with --labels")
TASK_ASK = "--task classification or --task regression"

HELP = """Train a network on DATA (default: mnist) and save it with -o.

The options not given come from a recipe (--recipe). For images and large
data it is Nielsen's chapter-1 recipe (nielsen): one hidden layer of 30
sigmoid units, quadratic cost, 30 epochs, mini-batches of 10, eta = 3.0.
For tabular data (not images) of at most 10,000 rows it is tabular: one
hidden layer of 100 relu units (he init), a softmax output with
cross-entropy (identity and mse for regression), adam at lr 0.001,
batches of 32, l2 1, up to 200 epochs; from 100 rows on, 10% of them are
held out and training stops after 20 epochs without a lower validation
loss, keeping the best epoch's weights. Options given always win; train
prints the recipe it used.

Each epoch prints one line (with a progress bar while it runs, on a
terminal). Ctrl-C stops after the current batch and saves the model;
--resume continues it (early stopping then counts afresh, and an
interrupted epoch starts over).
An -o or --history file that existed before the run is replaced only when
the run finishes: until then, checkpoints, Ctrl-C and divergence write
MODEL.checkpoint.safetensors beside it and say how to resume. Outputs are
never inputs, directories, FIFOs or devices; another kind of file is
replaced only with --force.

\b
Examples:
    fastnn train -o mnist.safetensors
    fastnn train mnist --hidden 100 --loss cross_entropy --lr 0.5 --l2 5 --val-split 0.1667
    fastnn train mnist --hidden 512,256 --activation relu --output softmax \\
        --loss cross_entropy --init he --optimizer adam --lr 1e-3 --dropout 0.2 \\
        --batch-size 128 --epochs 20 --lr-schedule step:every=5,factor=0.5 -o modern.safetensors
    fastnn train digits.csv --label-col label --hidden 64 --epochs 50 -o digits.safetensors
    fastnn train mnist --layers 28x28,conv20:5,maxpool2,conv40:5,maxpool2,100,10 \\
        --activation relu --output softmax --loss cross_entropy --lr 0.03 -o conv.safetensors
    fastnn train --resume mnist.safetensors --epochs 10

""" + DATA_HELP


def int_list(ctx, param, value):
    from fastnn._validation import parse_int
    from fastnn.exceptions import ConfigError

    if value is None:
        return None
    try:
        return [parse_int(s, "a layer size", 1) for s in value.split(",")]
    except ConfigError as exc:
        raise click.BadParameter(f"expected comma-separated integers like 784,30,10: "
                                 f"{exc}") from None


def input_shape(ctx, param, value):
    from fastnn.exceptions import ConfigError
    from fastnn.layers import parse_shape

    if value is None:
        return None
    try:
        return parse_shape(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def layer_tokens(ctx, param, value):
    """--layers, its tokens checked at once (fastnn.layers.parse); the input
    shape, which may come from the data, is resolved later."""
    from fastnn.exceptions import ConfigError
    from fastnn.layers import parse

    if value is None:
        return None
    try:
        parse(value, input_shape=(1,))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def float_list(ctx, param, value):
    if value is None:
        return None
    try:
        values = [float(s) for s in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, not {value!r}")
    return values[0] if len(values) == 1 and param.name == "dropout" else values


def activation_list(ctx, param, value):
    """One hidden activation name, or a comma-separated list of them."""
    if value is None:
        return None
    names = [n.strip() for n in value.split(",")]
    valid = sorted(set(ACTIVATIONS) - {"softmax"})
    for name in names:
        if name not in valid:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(valid)}")
    return names[0] if len(names) == 1 else names


def choice(registry, exclude=()):
    return click.Choice(sorted(n for n in registry if n not in exclude))


@click.command(cls=Command, help=HELP)
@click.argument("data", required=False)
@click.option("-o", "--out", type=click.Path(),
              help="Save the model here (safetensors) [default with --resume: that file].")
@data_options
@csv_options
@click.option("--val", "val_data", metavar="DATA", help="Validation data (any DATA form).")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True),
              help="Hold out this fraction of DATA for validation, drawn with the run's seed "
                   "and stratified by class [default: tabular 0.1 from 100 rows, nielsen 0].")
@click.option("--task", type=click.Choice(TASKS),
              help="What the labels are [default: inferred when they leave no doubt].")
@click.option("--scale", type=click.Choice(["auto", *SCALINGS]),
              help="Feature scaling learned from DATA and kept in the model: auto is pixels "
                   "(/255) for images, standard for other data [default: auto].")
@click.option("--categorical", metavar="COL[,COL...]",
              help="CSV columns of numbers to read as categories (by name or 1-based number); "
                   "text columns are categorical anyway.")
@click.option("--drop", metavar="COL[,COL...]",
              help="CSV columns to leave out, such as IDs and free-text names.")
@click.option("--missing", metavar="MARKERS",
              help="The cells that mean a missing value, comma-separated (an empty cell "
                   "always does) [default: NA,N/A,n/a,NaN,nan,null,NULL,None,?,#N/A,<NA>].")
@click.option("--recipe", type=click.Choice(RECIPE_CHOICES),
              help="Where the options not given come from: nielsen (Nielsen's chapter-1 "
                   "recipe), tabular (for small tabular data) [default: auto: tabular for data "
                   "that is not images with at most 10,000 rows, else nielsen].")
@click.option("--test", "test_data", metavar="DATA",
              help="Also report accuracy on this data after each epoch, for information only "
                   "[default: the test split of a named dataset].")
@click.option("--limit", type=Integer(min=1), help="Use only the first N samples of DATA.")
@click.option("--layers", callback=layer_tokens, metavar="TOKENS",
              help="The layers, input shape first: 784,30,10 (dense), or "
                   "28x28,conv20:5,maxpool2,100,10 (tokens convF:K[xK][:sS][:same][:ACT], "
                   "maxpoolK[:sS], l2poolK[:sS], dropoutRATE, flatten, N[:ACT]; see README).")
@click.option("--input-shape", callback=input_shape, metavar="HxW[xC]",
              help="The shape of one sample, when --layers starts with a layer "
                   "[default: the IDX file's, else the features as a vector].")
@click.option("--hidden", callback=int_list,
              help="Hidden layer sizes, the input and output sizes taken from the data "
                   "[default: tabular 100, nielsen 30].")
@click.option("--activation", callback=activation_list, metavar="NAME[,NAME...]",
              help="Hidden-layer activation, or one per hidden layer (tanh,relu) "
                   f"[default: tabular relu, nielsen sigmoid]: "
                   f"{', '.join(sorted(set(ACTIVATIONS) - {'softmax'}))}.")
@click.option("--output", "output_activation", type=choice(ACTIVATIONS),
              help="Output-layer activation [default: identity for regression; tabular "
                   "softmax, nielsen the hidden one].")
@click.option("--loss", type=choice(LOSSES),
              help="[default: tabular cross_entropy (mse for regression), nielsen mse]")
@click.option("--init", type=choice(INITIALIZERS),
              help="Weight initialisation [default: tabular he, nielsen nielsen].")
@click.option("--slope", type=click.FloatRange(min=0), help="leaky_relu's slope [default: 0.01].")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), help="[default: float32]")
@click.option("--seed", type=Integer(min=0), help="Makes the run reproducible "
              "[default: random, saved in the model].")
@click.option("--ensemble", type=Integer(min=2, max=MAX_MEMBERS), metavar="K",
              help="Train K networks at once, with seeds SEED, SEED+1, ..., and save one "
                   "model whose prediction is the mean of their outputs.")
@click.option("--optimizer", type=choice(OPTIMIZERS), help="[default: tabular adam, nielsen sgd]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate [default: tabular 0.001 for adam and adamw, 0.1 for sgd, "
                   "0.01 for momentum and nesterov; nielsen 3.0 for sgd (0.1 for "
                   "regression); else the optimizer's].")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True),
              help="For momentum and nesterov [default: 0.9].")
@click.option("--betas", callback=float_list, metavar="B1,B2",
              help="For adam and adamw [default: 0.9,0.999].")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True),
              help="For adam and adamw [default: 1e-8].")
@click.option("--weight-decay", type=click.FloatRange(min=0),
              help="adamw's decoupled weight decay, of every parameter [default: 0.01].")
@click.option("--clip-norm", type=click.FloatRange(min=0, min_open=True), metavar="MAX",
              help="Scale each batch's gradient down to this total 2-norm when it is longer "
                   "(not for rprop) [default: off].")
@click.option("--batch-size", type=Integer(min=1),
              help="[default: tabular 32, nielsen 10; the whole data for rprop]")
@click.option("--epochs", type=Integer(min=0),
              help="[default: tabular 200, nielsen 30; with --resume, the rest of the saved "
                   "run]")
@click.option("--l2", type=click.FloatRange(min=0),
              help="L2 regularisation lambda (Nielsen's) [default: tabular 1, nielsen 0].")
@click.option("--l1", type=click.FloatRange(min=0), help="L1 regularisation lambda.")
@click.option("--dropout", callback=float_list, metavar="P[,P...]",
              help="Dropout rate of the hidden layers: one, or one per hidden layer.")
@click.option("--lr-schedule", metavar="SPEC",
              help="constant, step:every=5,factor=0.5, plateau:patience=3,factor=0.1,"
                   "max_reductions=3, cosine[:total=N,min_lr=0], onecycle[:total=N,"
                   "pct_start=0.3] or warmup[:total=5,start_factor=0.333] (total: the run's "
                   "epochs by default).")
@click.option("--early-stopping", type=Integer(min=1), metavar="N",
              help="Stop after N epochs without a lower validation loss; keep the best weights "
                   "[default: tabular 20 when validating, nielsen off].")
@click.option("--restore-best", "restore_best", flag_value=True, default=None,
              help="Keep the weights of the epoch with the best validation accuracy "
                   "(needs --val or --val-split); checkpoints keep them too.")
@click.option("--augment", type=click.Choice(sorted(AUGMENTATIONS)),
              help="shift: move each square image by up to 2 pixels, every epoch.")
@click.option("--class-weight", type=click.Choice(["balanced"]),
              help="Weigh classes by n / (k * n_c).")
@click.option("--no-shuffle", "shuffle", flag_value=False, default=None,
              help="Visit the samples in their order each epoch.")
@threads_option
@click.option("--checkpoint-every", type=Integer(min=1), metavar="N",
              help="Save the model every N epochs (to -o, or beside it as "
                   "MODEL.checkpoint.safetensors if -o existed before the run).")
@click.option("--resume", type=click.Path(dir_okay=False),
              help="Continue training a saved model, with its optimizer state and options.")
@click.option("--history", type=click.Path(), metavar="FILE.json",
              help="Write the per-epoch metrics here.")
@click.option("--weights-only", is_flag=True,
              help="Leave the optimizer's state out of the finished -o model (smaller; "
                   "--resume from it starts a new optimizer). Checkpoints keep it.")
@click.option("--force", is_flag=True,
              help="Replace an existing -o or --history file even if it is not of the kind "
                   "written (never a directory, FIFO or device, nor an input).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object when done.")
@click.pass_context
def train(ctx, data, out, labels, label_col, delimiter, decimal, val_data, test_data, limit, resume,
          checkpoint_every, history, weights_only, force, quiet, as_json, threads, **options):
    from fastnn import load as load_model
    from fastnn.exceptions import TrainingDiverged
    from fastnn.schedules import parse as parse_schedule

    from fastnn.csvfile import parse_decimal, parse_delimiter

    given = {name for name in options if options[name] is not None
             and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    ensemble = options.pop("ensemble")
    if ensemble and resume:
        raise click.UsageError("--ensemble is fixed by the model file when resuming")
    delimiter, decimal = parse_delimiter(delimiter), parse_decimal(decimal)
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
        if hasattr(net, "members"):
            ensemble = len(net.members)
        run = dict(net.training_record.get("cli", {}))
        stored = net.training_record.get("cli_options", {})
        _refuse_changes(ctx, net, options, given, data=data, labels=labels,
                        label_col=label_col, limit=limit, delimiter=delimiter, decimal=decimal)
        for name in RESUMABLE:
            if name not in given and name in stored:
                options[name] = stored[name]
        data = data or run.get("data")
        labels, label_col = labels or run.get("labels"), label_col or run.get("label_col")
        delimiter, decimal = delimiter or run.get("delimiter"), decimal or run.get("decimal")
        val_data = val_data or run.get("val")
        test_data = test_data or run.get("test")
        limit = limit or run.get("limit")
        if options["epochs"] is None and not ensemble:
            options["epochs"] = max(run.get("epochs", 0) - run.get("epochs_done", 0), 0)
        out = out or resume
    data = data or "mnist"
    if checkpoint_every and not out:
        raise click.UsageError("--checkpoint-every needs -o MODEL")
    if test_data is None and data in DATASETS and val_data != data:
        test_data = data
    # every path, before any work: what is read, and where the run may write
    inputs = (data_inputs("DATA", data, labels) + data_inputs("--val", val_data)
              + data_inputs("--test", test_data))
    outputs = RunOutputs(out, history, resume, inputs, force, weights_only=weights_only)
    # a Ctrl-C outside this function's own handlers (between them, or on the
    # way out) says whether the finished run is saved: -o is replaced then
    ctx.meta[INTERRUPTED] = lambda: (_after_the_run_text(outputs) if outputs.finished_saved
                                     else "Interrupted")
    set_threads(threads)
    say = (lambda *a, **k: None) if quiet or as_json else click.echo

    csv = {"delimiter": delimiter, "decimal": decimal}
    if resume:
        reading = model_reading(net)
        del reading["n_features"]
    else:
        reading = {"missing": options["missing"], "drop": options["drop"]}
    train_set = load(data, "train", labels, label_col, limit=limit, quiet=quiet or as_json,
                     **csv, **reading)
    inferred = False
    notes = []
    recipe_line = None
    if not resume:
        net, inferred, notes, recipe_line = _new_network(train_set, options,
                                                         has_val=bool(val_data))
        run["recipe"] = options["recipe"]
    X_train = match_inputs(net, train_set.rows())
    if net.input_dtype is None:
        # a new network: fit will record the training inputs' kind, and the
        # validation and test data must be scaled the same way (uint8 / 255)
        pre = net.preprocessing
        first = pre.encode_X(X_train[:1]) if pre is not None else X_train
        net.input_dtype = str(first.dtype)
    if ensemble and not resume:
        from fastnn.ensemble import Ensemble

        net = Ensemble.of(net, ensemble)
    members = getattr(net, "members", [net])
    val = None
    if val_data:
        v = load(val_data, "test", label_col=label_col, quiet=quiet or as_json, **csv,
                 **model_reading(net))
        val = (model_rows(net, v, quiet or as_json)[0], v.y)
    test = (load(test_data, "test", label_col=label_col, quiet=quiet or as_json, **csv,
                 **model_reading(net)) if test_data else None)
    X_test = model_rows(net, test, quiet or as_json)[0] if test is not None else None

    # each network's run so far (an ensemble's networks each stop at their own epoch)
    runs = [dict(m.training_record.get("cli", {})) if resume else {} for m in members]
    done_of = [r.get("epochs_done", 0) for r in runs]
    epochs_of = ([max(r.get("epochs", 0) - r.get("epochs_done", 0), 0) for r in runs]
                 if options["epochs"] is None else [options["epochs"]] * len(members))
    epochs = epochs_of[0]
    if options["lr_schedule"] is not None:
        # kept in the model in its own words (bounded), not as typed
        options["lr_schedule"] = parse_schedule(options["lr_schedule"]).spec()
    cli_options = {k: options[k] for k in RESUMABLE if options[k] is not None}
    fit_options = dict(cli_options)
    if "lr_schedule" in fit_options:
        fit_options["lr_schedule"] = parse_schedule(fit_options["lr_schedule"])
    # each network's schedule, as it was where its run stopped
    schedules = [None] * len(members)
    for k, m in enumerate(members):
        if resume and m.training_record.get("lr_schedule_state"):
            schedule = parse_schedule(options["lr_schedule"] or m.training_record.get("lr_schedule"))
            schedule.load_state_dict(m.training_record["lr_schedule_state"])
            if "lr" in given:
                # the new rate from now on; the schedule goes on scaling it
                schedule.lr = options["lr"]
            schedules[k] = schedule
    if schedules[0] is not None and not ensemble:
        fit_options["lr_schedule"] = schedules[0]
    run.update(data=data, labels=labels, label_col=label_col, val=val_data, test=test_data,
               limit=limit, epochs=run.get("epochs_done", 0) + epochs)
    run.update({k: v for k, v in csv.items() if v is not None})
    run.setdefault("epochs_done", 0)
    done_before = run["epochs_done"]
    records = [[] for _ in members]     # each network's epochs

    def member_run(k, m):
        """Network k's run, for its model file: its own epochs."""
        done = done_of[k] + (m.history.epochs if m.history else 0)
        return {**run, "epochs": done_of[k] + epochs_of[k], "epochs_done": done}

    def record_run():
        for k, m in enumerate(members):
            m.training_record.update(cli=member_run(k, m), cli_options=cli_options)
        run["epochs_done"] = done_before + (net.history.epochs if net.history else 0)
        return history_text()

    def history_text():
        """The --history file: this run's epochs (each network's, for an ensemble)."""
        if not ensemble:
            return _history_text(records[0], net)
        return json.dumps(jsonable({"epochs": max(len(r) for r in records),
                                    "ensemble": len(members),
                                    "members": [_history_dict(r, m)
                                                for m, r in zip(members, records)]}), indent=2)

    # an ensemble's checkpoints: each network as it was after its last epoch,
    # copied in its own thread between its epochs (the others are training)
    snapshots = _Snapshots(members) if ensemble and checkpoint_every else None

    def after_epoch_of(k):
        """The callback of network k (its lines tagged when there are several)."""
        model, tag = members[k], (f"[{k + 1}/{len(members)}] " if ensemble else "")

        def after_epoch(epoch, metrics):
            record = dict(metrics)
            if test is not None:
                result = model.evaluate(X_test, test.y)
                record["test_loss"] = result["loss"]
                if "accuracy" in result:
                    record["test_accuracy"] = result["accuracy"]
            records[k].append(record)
            say(tag + epoch_line(done_of[k] + epoch + 1, record, of=done_of[k] + epochs_of[k]))
            if len(records[k]) == STALL_EPOCHS and not resume and k == 0:
                hint = stall_hint(records[k], train_labels)
                if hint and not (quiet or as_json):
                    click.echo(hint, err=True)
            if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
                if snapshots is None:
                    outputs.save_unfinished(net, record_run())
                else:
                    model.training_record.update(cli=member_run(k, model), cli_options=cli_options)
                    snapshots.save(k, lambda ens: outputs.save_unfinished(ens, history_text()))
        return after_epoch

    # messages name each file (a CSV's rows by their lines), not X and y
    net.check_data(X_train, train_set.y, name=train_set.source)
    if val_data:
        net.check_data(val[0], val[1], name=v.source)
    if test is not None:
        net.check_data(X_test, test.y, name=test.source)
    train_labels = net.training_labels(train_set.y, train_set.source)
    say(_task_line(net, inferred, resume))
    if train_set.dialect is not None and not train_set.dialect.usual:
        say(f"Read {train_set.source}: {train_set.dialect.describe()}")
    columns = net.preprocessing.columns if net.preprocessing is not None else None
    if columns is not None and not columns.identity and not resume:
        say(columns.summary())
        if columns.missing_summary():
            say(columns.missing_summary())
    for note in notes:
        if not (quiet or as_json):
            click.echo(note, err=True)
    if recipe_line:
        say(recipe_line)
    held = int(round(len(train_set) * options["val_split"])) if options["val_split"] else 0
    random_seed = not resume and options["seed"] is None
    say(f"{_network_text(net, random_seed)}: {net.n_params:,} parameters; training on "
        f"{len(train_set) - held:,} samples of {train_set.source}"
        + (f" ({held:,} more held out for validation)" if held else "")
        + (f"; seed: random (--seed {net.seed} repeats this run)" if random_seed else ""))
    progress = (_progress_bar() if not (quiet or as_json or ensemble) and sys.stderr.isatty()
                else None)
    checks = [SaveableCheck(run, cli_options, out)] if out else []
    finished = False
    try:
        if ensemble:
            from fastnn import fit_many

            # the networks with epochs to go, each with its own callback and schedule
            todo = [k for k in range(len(members)) if epochs_of[k] > 0]
            each = [{"epochs": epochs_of[k], "callback": after_epoch_of(k),
                     **({"lr_schedule": schedules[k]} if schedules[k] is not None else {})}
                    for k in todo]
            if todo:
                fit_many([members[k] for k in todo], X_train, train_set.y, each=each,
                         validation_data=val, validation_split=fit_options.pop("val_split", 0.0),
                         callbacks=checks, **fit_options)
            net.epochs_trained = min(m.epochs_trained for m in members)
        else:
            net.fit(X_train, train_set.y, epochs=epochs, validation_data=val,
                    validation_split=fit_options.pop("val_split", 0.0),
                    callback=after_epoch_of(0), progress=progress, callbacks=checks,
                    **fit_options)
        finished = True
        outputs.save_finished(net, record_run())
    except KeyboardInterrupt:
        if progress is not None:
            click.echo(err=True)  # end the progress bar's line
        if finished:
            # during or just before the final save: it is complete now
            outputs.save_finished(net, record_run())
            _interrupted_after_the_run(outputs)
        else:
            where = outputs.save_unfinished(net, record_run())
            click.echo(f"Interrupted: {_unfinished_text(outputs, where, net)}", err=True)
        ctx.exit(130)
    except TrainingDiverged as exc:
        where = outputs.save_unfinished(net, record_run(), model=any(records))
        if not where["model"]:
            raise click.ClickException(str(exc))
        raise click.ClickException(f"{exc} " + _unfinished_text(
            outputs, where, net, "Saved the weights of the last good epoch"))
    # the run is finished and saved: a Ctrl-C from here on (while the last
    # lines are written, the ensemble's metrics computed) must say so, not
    # only "Interrupted", since the -o file now holds the finished run
    try:
        if ensemble:
            # the mean of the networks' outputs, on --val and the test data
            ensemble_metrics = _ensemble_metrics(net, val, X_test, test)
            for line in _ensemble_lines(net, records, ensemble_metrics):
                say(line)
        best = net.training_record.get("best")
        if (options["early_stopping"] and not ensemble and net.history is not None
                and net.history.best_epoch is not None):
            index = net.history.best_epoch
            text = (f"kept the weights of epoch {done_before + index + 1}, the lowest validation "
                    f"loss ({records[0][index]['val_loss']:.4f})")
            say(f"Stopped early: {text}" if net.history.stopped == "early_stopping"
                else text[0].upper() + text[1:])
        if options["restore_best"] and best and not ensemble:
            say(f"Restored the weights of epoch {best['epoch']}, the best by {best['monitor']} "
                f"({best['value']:.4f})")
        if out:
            say(f"Saved the model to {out}")
        else:
            say("The model was not saved (no -o given); to keep it, run again with "
                "-o MODEL.safetensors")
        if as_json:
            result = {"model": out, "network": repr(net), "recipe": run.get("recipe"),
                      "epochs_trained": net.epochs_trained}
            if ensemble:
                result["members"] = [
                    {"seed": m.seed, "epochs_trained": m.epochs_trained,
                     "best": m.training_record.get("best"), "history": _history_dict(r, m),
                     "final": r[-1] if r else {}} for m, r in zip(members, records)]
                result["final"] = ensemble_metrics
            else:
                result.update(best=net.training_record.get("best"), history=_history_dict(records[0], net),
                              final=records[0][-1] if records[0] else {})
            echo_json(result)
    except KeyboardInterrupt:
        _interrupted_after_the_run(outputs)
        ctx.exit(130)


def _interrupted_after_the_run(outputs):
    """What a Ctrl-C says once the finished run is saved (the -o file holds it)."""
    click.echo(_after_the_run_text(outputs), err=True)


def _after_the_run_text(outputs):
    return f"Interrupted after the run finished: {outputs.describe_finished()}"


def _ensemble_metrics(ens, val, X_test, test):
    """The ensemble's own loss and accuracy on --val and the test data."""
    metrics = {}
    for prefix, data in (("val_", val), ("test_", (X_test, test.y) if test is not None else None)):
        if data is not None:
            result = ens.evaluate(*data)
            metrics.update({prefix + k: v for k, v in result.items() if k in ("loss", "accuracy")})
    return metrics


def _ensemble_lines(ens, records, metrics):
    """What train says after an ensemble's run: each network's last epoch
    (and the epoch whose weights it kept, by --restore-best or
    --early-stopping), then `metrics`, those of the mean of their outputs."""
    lines = []
    for k, (m, r) in enumerate(zip(ens.members, records)):
        if not r:
            continue
        line = f"network {k + 1} (seed {m.seed}): " + epoch_line(m.epochs_trained, r[-1])
        best = m.training_record.get("best")
        if best:
            line += f"; kept epoch {best['epoch']}'s weights (best {best['monitor']})"
        elif m.history is not None and m.history.best_epoch is not None:
            line += (f"; kept epoch {m.epochs_trained - len(r) + m.history.best_epoch + 1}'s "
                     f"weights (lowest val_loss)")
        lines.append(line)
    if metrics:
        lines.append(f"The ensemble of {len(ens.members)} (mean of their outputs): "
                     + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return lines


def _unfinished_text(outputs, where, net, what="saved the model"):
    """What an unfinished run left where (an ensemble's networks each after
    their own last epoch), and how to continue it."""
    if not hasattr(net, "members"):
        return outputs.describe(where, net.epochs_trained, what)
    return outputs.describe(where, "/".join(str(m.epochs_trained) for m in net.members),
                            what)


class _Snapshots:
    """An ensemble's checkpoints while its networks train at once, each at
    its own epoch: the last state of every network, each copied in its own
    thread between two of its epochs (its kernel is not running then; the
    others' are), joined into one model file under a lock."""

    def __init__(self, members):
        import copy
        import threading

        self.members = members
        self.copies = [copy.deepcopy(m) for m in members]
        self.lock = threading.Lock()

    def save(self, k, write):
        """Take network k's state now, then write(the ensemble of the copies)."""
        import copy

        from fastnn.ensemble import Ensemble

        state = copy.deepcopy(self.members[k])
        with self.lock:
            self.copies[k] = state
            write(Ensemble(self.copies))


def _refuse_changes(ctx, net, options, given, **data_options):
    """On --resume, refuse the options that would change the run itself: its
    data (DATA, --labels, --label-col, --limit, --val-split) and how it
    trains (--optimizer, --lr-schedule, --augment, --class-weight,
    --no-shuffle). The others (--epochs, --lr, --momentum, --betas, --eps,
    --weight-decay, --clip-norm, --batch-size, --l2, --l1, --dropout,
    --early-stopping, --val, --test) may change and apply from the next epoch."""
    from fastnn.exceptions import ConfigError
    from fastnn.files import same_file
    from fastnn.schedules import parse as parse_schedule

    run, training = net.training_record.get("cli", {}), net.training_record

    def refuse(flag, old):
        raise ConfigError(f"{flag} is fixed by the model file when resuming (it was {old!r}); "
                          f"start a new run to change it")

    for name, value in data_options.items():
        old = run.get(name)
        if value is None or value == old:
            continue
        if (isinstance(value, str) and isinstance(old, str) and os.path.exists(value)
                and os.path.exists(old) and same_file(value, old)):
            continue
        refuse("DATA" if name == "data" else "--" + name.replace("_", "-"), old)
    for name, key in FIXED_ON_RESUME.items():
        if name not in given:
            continue
        new, old = options[name], training.get(key)
        if name == "lr_schedule":
            new = parse_schedule(new).spec()
        if new != old and not (name == "val_split" and not new and not old):
            param = next(p for p in ctx.command.params if p.name == name)
            refuse(max(param.opts, key=len), old)


class RunOutputs:
    """Where a training run writes, checked before it starts.

    -o MODEL and --history FILE get the finished run. A run that does not
    finish (Ctrl-C, divergence) and --checkpoint-every write the same files
    if they did not exist when the run began, and otherwise their siblings
    STEM.checkpoint.SUFFIX: a run that did not finish never replaces a file
    that existed before it. Once the run finishes, the checkpoint files it
    wrote (or resumed from) are removed.
    """

    def __init__(self, out, history, resume, inputs, force, weights_only=False):
        from fastnn.exceptions import OutputError
        from fastnn.files import check_distinct, sibling
        from fastnn.history import HISTORY_FILE
        from fastnn.io import MODEL_FILE

        self.resume = resume
        # -o may be the --resume file (that is its default) or its
        # checkpoint; --history may be neither
        check_distinct([("-o", out), ("--history", history)], inputs, OutputError)
        check_distinct([("--history", history)], [("--resume", resume)], OutputError)
        first = check_outputs([("-o", out, MODEL_FILE), ("--history", history, HISTORY_FILE)],
                              force=force)
        later = []
        self.final, self.unfinished, self.written = {}, {}, set()
        self.finished_saved = False     # the finished run is in the final files
        for name, label, path, kind in (("model", "-o", out, MODEL_FILE),
                                        ("history", "--history", history, HISTORY_FILE)):
            if not path:
                continue
            self.final[name] = path
            if first[label].existed:
                self.unfinished[name] = sibling(path, "checkpoint")
                later.append((f"{label}'s checkpoint", self.unfinished[name], kind))
            else:
                self.unfinished[name] = path
        if later:
            check_distinct([("-o", out), ("--history", history)]
                           + [(label, path) for label, path, _ in later], inputs, OutputError)
            check_distinct([(label, path) for label, path, _ in later if "history" in label],
                           [("--resume", resume)], OutputError)
            check_outputs(later, force=force)
        self.force = force
        self.weights_only = weights_only

    def _write(self, net, history_text, paths, model=True, weights_only=False):
        from fastnn.files import atomic_write
        from fastnn.exceptions import FastnnError
        from fastnn.history import HISTORY_FILE

        written = {"model": None, "history": None}
        if model and "model" in paths:
            net.save(paths["model"], force=self.force, weights_only=weights_only)
            written["model"] = paths["model"]
        if "history" in paths:
            atomic_write(paths["history"], history_text, FastnnError, kind=HISTORY_FILE,
                         force=self.force)
            written["history"] = paths["history"]
        return written

    def save_unfinished(self, net, history_text, model=True):
        """Save the state of a run that has not finished; returns where."""
        written = self._write(net, history_text, self.unfinished, model)
        self.written.update(p for p in written.values() if p)
        return written

    def save_finished(self, net, history_text):
        """Save the finished run, then remove the checkpoints it leaves behind."""
        from fastnn.files import remove, same_file
        from fastnn.interrupts import Deferred

        # a Ctrl-C now takes effect once every file is written
        with Deferred() as interrupt:
            self._write(net, history_text, self.final, weights_only=self.weights_only)
            self.finished_saved = True
            for name, path in self.unfinished.items():
                if path != self.final[name] and (path in self.written or (
                        self.resume and os.path.exists(path) and same_file(path, self.resume))):
                    remove(path)
        interrupt.deliver()

    def describe_finished(self):
        """Where a finished run is."""
        if not self.final:
            return "nothing to save (no -o MODEL given)"
        return "saved " + " and ".join(f"the {name} to {path}" for name, path in self.final.items())

    def describe(self, written, epochs, what="saved the model"):
        """What an unfinished run left where, and how to continue it."""
        model = written["model"]
        if model is None:
            return ("no model saved (no -o MODEL given)" if "model" not in self.final
                    else "no model saved (no epoch was completed)")
        text = f"{what} after {epochs} epoch(s) to {model}"
        if model != self.final["model"]:
            text += f" ({self.final['model']}, which existed before this run, is unchanged)"
            return f"{text}; continue with: fastnn train --resume {model} -o {self.final['model']}"
        return f"{text}; continue with: fastnn train --resume {model}"


def _new_network(train_set, options, has_val):
    """A network for the data and options, its columns, task and scaling
    learned (Network.prepare); whether the task was inferred; the notes on
    the columns (IDs); the line that says the recipe (None for Nielsen's,
    chosen by default). The recipe (fastnn.recipes) fills the options not
    given, and options["recipe"] becomes the recipe's name."""
    from fastnn._validation import infer_targets
    from fastnn.columns import Columns
    from fastnn.network import Network
    from fastnn.preprocessing import resolve_scale
    from fastnn.recipes import choose, describe
    from fastnn.table import Table

    from fastnn.layers import parse

    targets = infer_targets(train_set.y, options["task"], train_set.source, LABELS_HINT,
                            ask=TASK_ASK)
    recipe, why = choose(options["recipe"], len(train_set), train_set.auto_scale,
                         options["scale"])
    filled = recipe.fill(options, targets.task, len(train_set), has_val)
    options["recipe"] = recipe.name
    line = (describe(recipe, why, filled, options)
            if recipe.name != "nielsen" or why.startswith("--recipe") else None)
    rows = train_set.rows()
    columns, notes = None, []
    if isinstance(rows, Table) or any(options[k] is not None
                                      for k in ("categorical", "drop", "missing")):
        columns = Columns.learn(rows, categorical=options["categorical"], drop=options["drop"],
                                missing=options["missing"], notes=notes)
    width = columns.n_features if columns is not None else train_set.X.shape[1]
    given_shape = options["input_shape"]
    if options["layers"]:
        shape = given_shape or train_set.shape or (width,)
        sizes = parse(options["layers"], input_shape=shape)
        if given_shape and tuple(sizes[0]) != tuple(given_shape):
            raise click.UsageError(f"--layers starts with the input shape {sizes[0]}, but "
                                   f"--input-shape says {given_shape}; give one of them")
    else:
        sizes = [given_shape or width, *options["hidden"], targets.n_outputs]
    kwargs = {k: options[k] for k in ("loss", "init", "slope", "dtype", "seed")
              if options[k] is not None}
    net = Network(sizes, activation=options["activation"], output=options["output_activation"],
                  **kwargs)
    scale = resolve_scale(options["scale"] or "auto", train_set.auto_scale)
    # messages name the file (a CSV's rows by their lines), not X and y
    net.prepare(rows, train_set.y, task=targets.task, scale=scale, columns=columns,
                name=train_set.source)
    if targets.task == "regression" and train_set.label_name and net.sizes[-1] == 1:
        from fastnn.exceptions import DataError
        from fastnn.preprocessing import MAX_NAME

        if len(train_set.label_name) > MAX_NAME:
            raise DataError(f"{train_set.source}: the target column's name has "
                            f"{len(train_set.label_name):,} characters; fastnn keeps names of "
                            f"at most {MAX_NAME} in a model (rename the column)")
        net.preprocessing.target_names = [train_set.label_name]
    return net, targets.inferred, notes, line


class SaveableCheck(Callback):
    """Refuse, before the first epoch, a run whose model file would not load
    (a name longer than the header keeps, say): what `save` would refuse at
    the end, checked on the header as it will be once fit has checked its
    options (only the final metrics and the schedule's state are missing)."""

    def __init__(self, run, cli_options, out):
        self.run, self.cli_options, self.out = run, cli_options, out

    def on_train_begin(self, net, metrics):
        from fastnn.exceptions import ModelFileError
        from fastnn.io import check_header

        super().on_train_begin(net, metrics)
        kept = net.training_record
        net.training_record = {**kept, "cli": self.run, "cli_options": self.cli_options}
        try:
            check_header(net)
        except ModelFileError as exc:
            raise ModelFileError(f"cannot train a model for {self.out}: it could not be saved "
                                 f"as a file fastnn loads ({exc})") from None
        finally:
            net.training_record = kept


def _network_text(net, random_seed):
    """The network as repr() writes it; a seed drawn at random for this run
    is left out of it, to be said once as the option that repeats the run."""
    text = repr(net)
    return text.replace(f", seed={net.seed})", ")") if random_seed else text


def _task_line(net, inferred, resumed):
    """The first line of train: the task and the scaling in force."""
    pre = net.preprocessing
    if pre is None:
        return "Task: not stated (an older model: labels are output units, inputs as given)"
    how = (" (inferred from the labels; state it with --task)" if inferred
           else " (from the model file)" if resumed else "")
    return f"Task: {pre.task_text()}{how}; scaling: {pre.scaling_text()}"


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


def _history_text(records, net):
    return json.dumps(jsonable(_history_dict(records, net)), indent=2)
