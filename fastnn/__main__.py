"""``python -m fastnn``: the same as the ``fastnn`` command."""
from fastnn.cli import main

main(prog_name="fastnn")
