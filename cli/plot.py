"""``fastnn plot``."""
import os

import click

from fastnn.cli.common import Command

HELP = """Draw the learning curves of a training run as a PNG: loss and accuracy per
epoch for the training, validation and test data, with dashed lines where
the learning rate changed. HISTORY is the JSON file written by
fastnn train --history (or from History.to_dict()). Needs matplotlib:
pip install 'fastnn[plot]'.

\b
Examples:
    fastnn train mnist --hidden 100 --val-split 0.1667 --history run.json -o m.safetensors
    fastnn plot run.json -o curves.png
"""


@click.command(cls=Command, help=HELP)
@click.argument("history", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False),
              help="Write the PNG here [default: HISTORY with the suffix .png].")
@click.option("--title", help="A title above the panels [default: the number of epochs].")
def plot(history, out, title):
    from fastnn.plot import plot_history

    out = out or os.path.splitext(history)[0] + ".png"
    if os.path.abspath(out) == os.path.abspath(history):
        raise click.UsageError(f"-o {out} would overwrite the history file")
    plot_history(history, out, title=title)
    click.echo(f"Wrote the learning curves to {out}")
