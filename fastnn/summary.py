"""What a network is, as a table and as JSON: ``Network.summary()`` and
``fastnn info`` (which prints this same text after a line about the file).

Like fastnn.modelfile, this module names neither Network nor Ensemble
(``Network.summary`` imports it): a network is a `Model`, and an ensemble is
told from it by `is_ensemble`."""
import json
from typing import Any

from fastnn.modelfile import Model, is_ensemble

# What the "training:" line leaves out: shown on lines of their own, or
# the CLI's bookkeeping.
_NOT_OPTIONS = ("final", "lr_schedule_state", "cli", "cli_options", "best")


def describe(net: Model) -> dict[str, Any]:
    """The network as JSON-ready values: sizes, one entry per layer (inputs,
    outputs, activation, parameters), how it was trained (an ensemble's:
    describe_ensemble)."""
    if is_ensemble(net):
        return describe_ensemble(net)
    plan = net.plan
    layers: list[dict[str, Any]]
    if plan.plain_dense:
        layers = [{"layer": l + 1, "inputs": i, "outputs": o, "activation": a,
                   "parameters": i * o + o}
                  for l, (i, o, a) in enumerate(zip(net.sizes, net.sizes[1:], net.activations))]
    else:
        # from the Plan's layer objects: shapes (H, W, C) or (n,), the
        # activation None for layers without one (pooling, Flatten, Dropout)
        layers = [{"layer": l + 1, "type": row["type"], "repr": row["layer"],
                   "inputs": list(plan.shapes[l]), "outputs": list(row["output_shape"]),
                   "output_shape": list(row["output_shape"]), "activation": row["activation"],
                   "parameters": row["params"]}
                  for l, row in enumerate(plan.describe())]
    state = net.optimizer_state
    return {
        "sizes": list(net.sizes), "input_shape": list(net.input_shape), "layers": layers,
        "parameters": net.n_params,
        "loss": net.loss, "dtype": net.compute_dtype, "init": net.init, "seed": net.seed,
        "slope": net.slope, "input_dtype": net.input_dtype, "input_scale": net.input_scale,
        "epochs_trained": net.epochs_trained,
        "optimizer": None if state is None else {"name": state.name, "steps": state.steps},
        "training": net.training_record,
        "preprocessing": None if net.preprocessing is None else net.preprocessing.to_dict(),
    }


def describe_ensemble(ens: Model) -> dict[str, Any]:
    """An ensemble as JSON-ready values: what its members share (inputs,
    outputs, preprocessing), and each member's own description."""
    members = [describe(m) for m in ens.members]
    shared = ("sizes", "input_shape", "loss", "dtype", "input_dtype", "input_scale",
              "preprocessing")
    return {**{k: members[0][k] for k in shared}, "ensemble": len(members),
            "combine": "mean of the members' outputs", "parameters": ens.n_params,
            "epochs_trained": ens.epochs_trained, "seeds": ens.seeds, "members": members}


def summary_lines(net: Model) -> list[str]:
    """The summary as lines: the network, a table of its layers, its inputs
    and how it was trained. An ensemble's: a line about it, then each
    member's (the inputs once)."""
    if is_ensemble(net):
        k = len(net.members)
        lines = [f"Ensemble of {k} networks, their outputs averaged: {net.n_params:,} "
                 f"parameters in all", ""]
        for i, m in enumerate(net.members):
            lines += [f"member {i + 1} of {k}:", *_network_lines(m)]
            lines += _input_lines(m) if i == 0 else []
            lines += [*_training_lines(m), ""]
        return lines[:-1]
    return [*_network_lines(net), *_input_lines(net), *_training_lines(net)]


def _network_lines(net: Model) -> list[str]:
    """The network's repr and a table of its layers."""
    lines = [f"{net}", ""]
    if net.plan.plain_dense:
        lines.append(f"{'layer':>5}  {'inputs':>7}  {'outputs':>7}  {'activation':<10}  "
                     f"{'parameters':>10}")
        for row in describe(net)["layers"]:
            lines.append(f"{row['layer']:>5}  {row['inputs']:>7}  {row['outputs']:>7}  "
                         f"{row['activation']:<10}  {row['parameters']:>10,}")
        lines += [f"{'total':>5}  {'':>7}  {'':>7}  {'':<10}  {net.n_params:>10,}", ""]
    else:
        # one row per layer: its repr, output shape, activation, parameters
        lines += [*net.plan.summary().splitlines(), ""]
    return lines


def _input_lines(net: Model) -> list[str]:
    """What the network does to its inputs (and labels)."""
    lines = []
    pre = net.preprocessing
    if pre is None:
        lines.append(f"inputs: {net.input_dtype or 'not trained yet'} "
                     f"({net.input_scaling.text()})")
    else:
        lines.append(f"task: {shown(pre.task_text())}")
        if pre.columns is not None:
            lines.append(f"columns: {shown(pre.columns.summary()[len('Columns: '):])}")
            missing = pre.columns.missing_summary()
            if missing:
                lines.append(f"missing values: {shown(missing[len('Missing values: '):])}")
        lines.append(f"scaling: {pre.scaling_text()}")
    return lines


def _training_lines(net: Model) -> list[str]:
    """How the network was trained."""
    lines = [f"epochs trained: {net.epochs_trained}"]
    state = net.optimizer_state
    if state is not None:
        lines.append(f"optimizer: {state.name}, {state.steps:,} steps")
    training = net.training_record
    options = {k: v for k, v in training.items() if k not in _NOT_OPTIONS}
    if options:
        lines.append("training: " + ", ".join(f"{shown(k)}={json.dumps(v)}"
                                              for k, v in options.items()))
    if training.get("final"):
        lines.append("final: " + ", ".join(f"{shown(k)}={v:.4g}"
                                           for k, v in training["final"].items()))
    best = training.get("best")
    if isinstance(best, dict) and net.best_params is None:
        lines.append(f"weights: epoch {best['epoch']}'s, the best by {best['monitor']} "
                     f"({best['value']:.4g}; restore_best)")
    elif isinstance(best, dict):
        lines.append(f"best so far: epoch {best['epoch']}, {best['monitor']} "
                     f"{best['value']:.4g} (restore_best; the weights are the last epoch's)")
    cli = training.get("cli")
    if isinstance(cli, dict) and cli.get("data"):
        lines.append(f"data: {shown(cli['data'])}")
    return lines


def shown(text: str) -> str:
    """text from a file, safe to print: as it is if printable, else quoted
    with escapes (a file name may hold a newline or a terminal escape)."""
    return text if text.isprintable() else ascii(text)
