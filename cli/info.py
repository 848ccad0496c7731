"""``fastnn info``."""
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
    from fastnn.summary import describe, summary_lines

    net = load_model(model)
    meta = read_metadata(model)
    result = {"model": model, "format_version": meta.get("format_version"),
              "fastnn_version": meta.get("fastnn_version"),
              "weight_layout": meta.get("weight_layout"), **describe(net)}
    if as_json:
        echo_json(result)
        return
    click.echo(f"{model}: fastnn model, format {result['format_version']}, written by fastnn "
               f"{result['fastnn_version']}")
    click.echo("\n".join(summary_lines(net)))
