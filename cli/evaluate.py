"""``fastnn eval``."""
import click


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the MNIST files are.")
def eval_command(model, data_dir):
    """Report a model's loss and accuracy on the MNIST test set.

    \b
    Example:
        fastnn eval mnist.safetensors
    """
    from fastnn.datasets import load_mnist
    from fastnn.io import load

    net = load(model)
    _, (X_test, y_test) = load_mnist(data_dir)
    result = net.evaluate(X_test, y_test)
    correct = round(result["accuracy"] * result["n"])
    click.echo(f"{model}: test accuracy {correct} / {result['n']} ({result['accuracy']:.2%}), "
               f"loss {result['loss']:.4f}")
