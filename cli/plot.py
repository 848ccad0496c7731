"""``fastnn plot``."""
import os

import click

from fastnn.cli.common import Command, check_outputs, force_option

HELP = """Draw the learning curves of a training run as a picture (PNG, SVG or PDF,
from OUT's suffix): loss and accuracy per
epoch for the training, validation and test data, with dashed lines where
the learning rate changed. HISTORY is the JSON file written by
fastnn train --history, the output of fastnn train --json, or
History.to_dict() as JSON; an ensemble's (train --ensemble) draws each
network in a colour of its own. Needs matplotlib:
pip install 'fastnn[plot]'.

\b
Examples:
    fastnn train mnist --hidden 100 --val-split 0.1667 --history run.json -o m.safetensors
    fastnn plot run.json -o curves.png
    fastnn train mnist --epochs 5 --json > run.json && fastnn plot run.json
"""


@click.command(cls=Command, help=HELP)
@click.argument("history", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(),
              help="Write the picture here: .png, .svg or .pdf [default: HISTORY with the "
                   "suffix .png].")
@click.option("--title", help="A title above the panels [default: the number of epochs].")
@force_option
def plot(history, out, title, force):
    from fastnn.plot import picture_format, plot_history

    out = out or os.path.splitext(history)[0] + ".png"
    check_outputs([("-o", out, picture_format(out)[1])], [("HISTORY", history)], force)
    plot_history(history, out, title=title, force=force)
    click.echo(f"Wrote the learning curves to {out}")
