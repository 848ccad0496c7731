"""``fastnn export``."""
import click

from fastnn.cli.common import Command, force_option

HELP = """Export MODEL to run without fastnn: an ONNX model, one dependency-free
C99 source file, or a NumPy module (OUT.py with its weights in OUT.npz).

Every export takes raw feature rows (e.g. MNIST pixels 0..255) and scales
them as fastnn did in training. Without --format, OUT's suffix decides
(.onnx, .c, .py).

\b
Examples:
    fastnn export mnist.safetensors --format onnx -o mnist.onnx
    fastnn export mnist.safetensors --format c -o mnist.c
    cc -std=c99 -O2 -DFASTNN_MAIN mnist.c -o mnist -lm
    fastnn export mnist.safetensors --format numpy -o mnist_model.py
    python mnist_model.py images.npy
"""


@click.command(cls=Command, help=HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-f", "--format", "format_", type=click.Choice(["onnx", "c", "numpy"]),
              help="What to write [default: from OUT's suffix].")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The file to write (for numpy, OUT.py and OUT.npz).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: what was written.")
@force_option
def export(model, format_, out, as_json, force):
    from fastnn.cli.common import check_outputs
    from fastnn.export import EXPORTERS, export as export_model, format_from_suffix
    from fastnn.io import load

    if format_ is None:
        format_ = format_from_suffix(out)
        if format_ is None:
            raise click.UsageError(f"cannot tell the format from the name {out!r}; give "
                                   f"--format ({', '.join(EXPORTERS)})")
    check_outputs([("-o", path, kind) for path, kind in EXPORTERS[format_].outputs(out)],
                  [("MODEL", model)], force)
    net = load(model)
    written = export_model(net, out, format_, source=model, force=force)
    # pooling, Flatten and Dropout layers have no activation (None)
    activations = [a for a in net.activations if a]
    members = len(getattr(net, "members", [net]))
    if as_json:
        from fastnn.cli.common import echo_json

        echo_json({"model": model, "format": format_, "files": list(written),
                   "sizes": list(net.sizes), "activations": list(net.activations),
                   "ensemble": members if members > 1 else None})
        return
    what = (f"an ensemble of {members} networks, the mean of their outputs" if members > 1
            else f"{list(net.sizes)}, {'/'.join(activations)}")
    click.echo(f"Exported {model} ({what}) as {EXPORTERS[format_].title} to "
               f"{' and '.join(written)}")
