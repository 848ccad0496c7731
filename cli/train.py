"""``fastnn train``."""
import click

from fastnn.activations import ACTIVATIONS
from fastnn.losses import LOSSES
from fastnn.network import DTYPES


def parse_layers(ctx, param, value):
    try:
        sizes = [int(s) for s in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 784,30,10, not {value!r}")
    if len(sizes) < 2 or min(sizes) < 1:
        raise click.BadParameter(f"needs at least two layer sizes >= 1, not {value!r}")
    return sizes


@click.command()
@click.option("--layers", default="784,30,10", show_default=True, callback=parse_layers,
              help="Units per layer, input first.")
@click.option("--activation", default="sigmoid", show_default=True,
              type=click.Choice(sorted(a for a in ACTIVATIONS if not ACTIVATIONS[a].output_only)),
              help="Activation of the hidden layers.")
@click.option("--output", "output_activation", type=click.Choice(sorted(ACTIVATIONS)),
              help="Activation of the output layer [default: the hidden one].")
@click.option("--loss", default="mse", show_default=True, type=click.Choice(sorted(LOSSES)))
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=0))
@click.option("--batch-size", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Learning rate eta.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(sorted(DTYPES)))
@click.option("--seed", type=click.IntRange(min=0), help="Makes the run reproducible [default: random, printed].")
@click.option("--train-size", default=50000, show_default=True, type=click.IntRange(1, 60000),
              help="Train on the first N MNIST training images (Nielsen keeps the last 10,000 for validation).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the MNIST files are.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, writable=True),
              help="Save the trained model here (safetensors).")
def train(layers, activation, output_activation, loss, epochs, batch_size, lr, dtype, seed,
          train_size, data_dir, out):
    """Train a network on MNIST, reporting test accuracy after each epoch.

    The defaults are Nielsen's chapter-1 recipe: [784, 30, 10], sigmoid,
    quadratic cost, 30 epochs, mini-batches of 10, eta = 3.0, trained on
    the first 50,000 training images.

    \b
    Examples:
        fastnn train -o mnist.safetensors
        fastnn train --layers 784,100,10 --epochs 10 --seed 1
        fastnn train --activation relu --output softmax --loss cross_entropy --lr 0.1
    """
    from fastnn.datasets import load_mnist
    from fastnn.network import Network

    (X, y), (X_test, y_test) = load_mnist(data_dir)
    net = Network(layers, activation=activation, output=output_activation, loss=loss,
                  dtype=dtype, seed=seed)
    click.echo(f"{net}: {net.n_params:,} parameters; training on {train_size:,} images")

    def report(epoch, metrics):
        correct = round(metrics["val_accuracy"] * len(X_test))
        click.echo(f"Epoch {epoch + 1}/{epochs}: test accuracy {correct} / {len(X_test)} "
                   f"({metrics['val_accuracy']:.2%}), training loss {metrics['loss']:.4f}, "
                   f"{metrics['seconds']:.2f} s")

    net.fit(X[:train_size], y[:train_size], epochs=epochs, batch_size=batch_size, lr=lr,
            validation_data=(X_test, y_test), callback=report)
    if out:
        net.save(out)
        click.echo(f"Saved the model to {out}")
