"""Make the README's pictures: docs/curves.png, docs/confusion.png, docs/misclassified.png.

They come from one real MNIST run, the same as these commands (needs the
``fastnn[plot]`` extra, matplotlib):

    fastnn train mnist --hidden 100 --loss cross_entropy --lr 0.5 --l2 5 --epochs 10 \\
        --val-split 0.1667 --lr-schedule step:every=4,factor=0.5 --seed 1 \\
        --history run.json -o mnist.safetensors
    fastnn plot run.json -o docs/curves.png
    fastnn eval mnist.safetensors --confusion-png docs/confusion.png
    fastnn show mnist.safetensors --misclassified docs/misclassified.png

Run it from anywhere: ``python docs/make_pictures.py``. It calls the Click
commands in-process, exactly as the ``fastnn`` command does, and keeps the
model and history in a temporary directory. The run is seeded, so the
numbers repeat on one machine (BLAS may round differently on another).
"""
import tempfile
from pathlib import Path

from fastnn.cli.evaluate import eval_command
from fastnn.cli.plot import plot
from fastnn.cli.show import show
from fastnn.cli.train import train

DOCS = Path(__file__).resolve().parent


def run(command, *args):
    # standalone_mode=False: errors propagate instead of exiting the script halfway
    command.main([str(a) for a in args], prog_name=f"fastnn {command.name}",
                 standalone_mode=False)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        history, model = Path(tmp, "run.json"), Path(tmp, "mnist.safetensors")
        run(train, "mnist", "--hidden", "100", "--loss", "cross_entropy", "--lr", "0.5",
            "--l2", "5", "--epochs", "10", "--val-split", "0.1667",
            "--lr-schedule", "step:every=4,factor=0.5", "--seed", "1",
            "--history", history, "-o", model)
        run(plot, history, "-o", DOCS / "curves.png")
        run(eval_command, model, "--confusion-png", DOCS / "confusion.png")
        run(show, model, "--misclassified", DOCS / "misclassified.png")
    for name in ("curves.png", "confusion.png", "misclassified.png"):
        print(f"{DOCS / name}: {(DOCS / name).stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()
