"""``fastnn show``."""
import click

from fastnn.cli.common import (DATA_HELP, Command, Integer, check_outputs, data_inputs,
                               data_options, force_option, load, match_inputs, set_threads,
                               threads_option, training_label_col)
from fastnn.plot import MAX_SAMPLES

HELP = """Draw the samples of DATA (default: the mnist test split) that MODEL gets
most wrong, as a grid of images in a PNG: the misclassified samples whose
true class gets the lowest output activation, each titled
"true 7 → predicted 2" with its row number. With --filters, draw the first
convolution layer's filters (no DATA needed): at most 64 filters of at most
16 input channels, the title says when more were left out. Needs matplotlib:
pip install 'fastnn[plot]'.

\b
Examples:
    fastnn show mnist.safetensors --misclassified grid.png
    fastnn show conv.safetensors --filters filters.png
    fastnn show model.safetensors test.csv --label-col label --misclassified grid.png \\
        --count 49 --image-shape 8x8

""" + DATA_HELP


def image_shape(ctx, param, value):
    if value is None:
        return None
    from fastnn._validation import parse_int, short_text
    from fastnn.exceptions import ConfigError

    sides = value.lower().split("x")
    if len(sides) != 2:
        raise click.BadParameter(f"expected HEIGHTxWIDTH like 28x28, not {short_text(value)}")
    try:
        height, width = (parse_int(d, "a side") for d in sides)
    except ConfigError as exc:
        raise click.BadParameter(f"expected HEIGHTxWIDTH like 28x28: {exc}") from None
    if height < 1 or width < 1:
        raise click.BadParameter(f"the sides must be >= 1, not {value!r}")
    return height, width


@click.command(cls=Command, help=HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", required=False, default="mnist")
@click.option("--misclassified", type=click.Path(), metavar="FILE.png",
              help="Write the grid of the worst-classified samples here "
                   "(.png, .svg or .pdf).")
@click.option("--filters", type=click.Path(), metavar="FILE.png",
              help="Write the first convolution layer's filters here (.png, .svg or .pdf).")
@click.option("--count", type=Integer(min=1, max=MAX_SAMPLES), default=25, show_default=True,
              help=f"Draw at most this many samples (at most {MAX_SAMPLES}).")
@click.option("--image-shape", callback=image_shape, metavar="HxW",
              help="Height and width of one sample [default: square, 28x28 for 784 inputs].")
@data_options
@click.option("--limit", type=Integer(min=1), help="Use only the first N samples.")
@threads_option
@force_option
def show(model, data, misclassified, filters, count, image_shape, labels, label_col, limit,
         threads, force):
    from fastnn import load as load_model
    from fastnn.plot import image_shape_for, picture_format, plot_filters, plot_misclassified

    if not misclassified and not filters:
        raise click.UsageError("give --misclassified FILE.png, --filters FILE.png or both")
    outputs = [(name, path, picture_format(path)[1])
               for name, path in (("--misclassified", misclassified), ("--filters", filters))
               if path]
    check_outputs(outputs, [("MODEL", model)]
                  + (data_inputs("DATA", data, labels) if misclassified else []), force)
    set_threads(threads)
    net = load_model(model)
    if filters:
        drawn = plot_filters(net, filters, force=force)
        click.echo(f"Wrote {drawn} filters of the first convolution layer to {filters}")
    if not misclassified:
        return
    # before loading DATA: a shape that cannot be drawn fails at once
    image_shape_for(net.sizes[0], image_shape, hint="give --image-shape HEIGHTxWIDTH")
    dataset = load(data, "test", labels, training_label_col(net, label_col),
                   n_features=net.sizes[0], limit=limit)
    X = match_inputs(net, dataset.X)
    net.check_data(X, dataset.y, name=dataset.source)     # messages name the file and its lines
    shown = plot_misclassified(net, X, dataset.y, misclassified, n=count,
                               image_shape=image_shape, force=force)
    click.echo(f"Wrote the {len(shown)} worst-classified samples of {dataset.source} "
               f"to {misclassified}")
