"""What a network is, as a table and as JSON: ``Network.summary()`` and
``fastnn info`` (which prints this same text after a line about the file)."""
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastnn.network import Network

# What the "training:" line leaves out: shown on lines of their own, or
# the CLI's bookkeeping.
_NOT_OPTIONS = ("final", "lr_schedule_state", "cli", "cli_options", "best")


def describe(net: "Network") -> dict[str, Any]:
    """The network as JSON-ready values: sizes, one entry per layer (inputs,
    outputs, activation, parameters), how it was trained."""
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
        "loss": net.loss, "dtype": str(net.dtype), "init": net.init, "seed": net.seed,
        "slope": net.slope, "input_dtype": net.input_dtype, "input_scale": net.input_scale,
        "epochs_trained": net.epochs_trained,
        "optimizer": None if state is None else {"name": state.name, "steps": state.steps},
        "training": net.training,
        "preprocessing": None if net.preprocessing is None else net.preprocessing.to_dict(),
    }


def summary_lines(net: "Network") -> list[str]:
    """The summary as lines: the network, a table of its layers, its inputs
    and how it was trained."""
    info = describe(net)
    lines = [f"{net}", ""]
    if net.plan.plain_dense:
        lines.append(f"{'layer':>5}  {'inputs':>7}  {'outputs':>7}  {'activation':<10}  "
                     f"{'parameters':>10}")
        for row in info["layers"]:
            lines.append(f"{row['layer']:>5}  {row['inputs']:>7}  {row['outputs']:>7}  "
                         f"{row['activation']:<10}  {row['parameters']:>10,}")
        lines += [f"{'total':>5}  {'':>7}  {'':>7}  {'':<10}  {net.n_params:>10,}", ""]
    else:
        # one row per layer: its repr, output shape, activation, parameters
        lines += [*net.plan.summary().splitlines(), ""]
    pre = net.preprocessing
    if pre is None:
        scale = "uint8 pixels divided by 255" if net.input_dtype == "uint8" else "used as given"
        lines.append(f"inputs: {net.input_dtype or 'not trained yet'} ({scale})")
    else:
        lines.append(f"task: {shown(pre.task_text())}")
        if pre.columns is not None:
            lines.append(f"columns: {shown(pre.columns.summary()[len('Columns: '):])}")
            missing = pre.columns.missing_summary()
            if missing:
                lines.append(f"missing values: {shown(missing[len('Missing values: '):])}")
        lines.append(f"scaling: {pre.scaling_text()}")
    lines.append(f"epochs trained: {net.epochs_trained}")
    if info["optimizer"]:
        lines.append(f"optimizer: {info['optimizer']['name']}, "
                     f"{info['optimizer']['steps']:,} steps")
    training = net.training
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
