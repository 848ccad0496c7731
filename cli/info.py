"""``fastnn info``."""
import json

import click

from fastnn.cli.common import Command, echo_json


@click.command(cls=Command)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model, as_json):
    """Describe MODEL: its layers (type, output shape, activation, parameters,
    like Keras' summary()), how it was trained.

    \b
    Example:
        fastnn info mnist.safetensors
    """
    from fastnn import load as load_model
    from fastnn.io import read_metadata

    net = load_model(model)
    meta = read_metadata(model)
    layers = [{"layer": l + 1, "type": d["type"], "config": d["layer"],
               "inputs": i, "outputs": o, "output_shape": list(d["output_shape"]),
               "activation": d["activation"], "parameters": d["params"]}
              for l, (i, o, d) in enumerate(zip(net.sizes, net.sizes[1:], net.plan.describe()))]
    result = {
        "model": model, "format_version": meta.get("format_version"),
        "fastnn_version": meta.get("fastnn_version"), "sizes": list(net.sizes),
        "input_shape": list(net.input_shape),
        "layers": layers, "parameters": net.n_params, "loss": net.loss, "dtype": str(net.dtype),
        "init": net.init, "seed": net.seed, "slope": net.slope,
        "input_dtype": net.input_dtype, "input_scale": net.input_scale,
        "epochs_trained": net.epochs_trained,
        "optimizer": None if net.optimizer_state is None else
        {"name": net.optimizer_state.name, "steps": net.optimizer_state.steps},
        "training": net.training,
    }
    if as_json:
        echo_json(result)
        return
    click.echo(f"{model}: fastnn model, format {result['format_version']}, written by fastnn "
               f"{result['fastnn_version']}")
    click.echo(f"{net}\n")
    click.echo(net.plan.summary() + "\n")
    scale = "uint8 pixels divided by 255" if net.input_dtype == "uint8" else "used as given"
    click.echo(f"inputs: {net.input_dtype or 'not trained yet'} ({scale})")
    click.echo(f"epochs trained: {net.epochs_trained}")
    if result["optimizer"]:
        click.echo(f"optimizer: {result['optimizer']['name']}, {result['optimizer']['steps']:,} steps")
    options = {k: v for k, v in net.training.items()
               if k not in ("final", "lr_schedule_state", "cli", "cli_options")}
    if options:
        click.echo("training: " + ", ".join(f"{_shown(k)}={json.dumps(v)}"
                                           for k, v in options.items()))
    if net.training.get("final"):
        click.echo("final: " + ", ".join(f"{_shown(k)}={v:.4g}"
                                        for k, v in net.training["final"].items()))
    if net.training.get("cli", {}).get("data"):
        click.echo(f"data: {_shown(net.training['cli']['data'])}")


def _shown(text):
    """text from a file, safe to print: as it is if printable, else quoted
    with escapes (a file name may hold a newline or a terminal escape)."""
    return text if text.isprintable() else ascii(text)
