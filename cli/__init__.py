"""The ``fastnn`` command: a Click group and its commands (installed as fastnn.cli)."""
import click

from fastnn._version import __version__
from fastnn.exceptions import FastnnError


class Group(click.Group):
    """A Click group that shows fastnn's own errors as one line, exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FastnnError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fastnn")
def main():
    """fastnn: fast fully-connected neural networks for the CPU.

    \b
    Train Nielsen's chapter-1 network on MNIST and evaluate it:
        fastnn train -o mnist.safetensors
        fastnn eval mnist.safetensors
    """


from fastnn.cli import evaluate, train  # noqa: E402  (the commands register on main)

main.add_command(train.train)
main.add_command(evaluate.eval_command)
