"""The ``fastnn`` command: a Click group and its commands (installed as fastnn.cli)."""
import click

from fastnn._version import __version__
from fastnn.cli.common import Command, MainMixin


class Group(MainMixin, click.Group):
    """The fastnn group: its commands are `Command`s, which turn fastnn's
    errors into one line with exit status 1 and Ctrl-C into status 130."""

    command_class = Command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fastnn")
def main():
    """fastnn: fast fully-connected neural networks for the CPU.

    \b
    A session:
        fastnn train mnist --hidden 100 --epochs 10 -o mnist.safetensors
        fastnn eval mnist.safetensors
        fastnn predict mnist.safetensors mnist -o predictions.csv
        fastnn info mnist.safetensors
        fastnn export mnist.safetensors -o mnist.onnx
    """


from fastnn.cli import (datasets, ensemble, evaluate, export, info, plot, predict,  # noqa: E402
                        show, train)

for command in (train.train, evaluate.eval_command, predict.predict, info.info,
                ensemble.ensemble, datasets.datasets, datasets.download, export.export,
                plot.plot, show.show):
    main.add_command(command)
