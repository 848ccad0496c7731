"""``fastnn ensemble``."""
import click

from fastnn.cli.common import Command, force_option


@click.command("ensemble", cls=Command)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The ensemble's model file (safetensors).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object when done.")
@force_option
def ensemble(models, out, as_json, force):
    """Join trained MODELS (2 or more) into one model file whose prediction
    is the mean of their outputs (for softmax or sigmoid outputs, of their
    probabilities). They must take the same inputs and give the same
    outputs: the same task, classes and scaling, as networks trained by
    the same command with different seeds. eval, predict, info, show and
    export take the file as they take one network's; fastnn train
    --ensemble K trains such a file at once.

    \b
    Example:
        fastnn ensemble seed1.safetensors seed2.safetensors seed3.safetensors -o vote.safetensors
        fastnn eval vote.safetensors
    """
    from fastnn import load
    from fastnn.cli.common import check_outputs, echo_json
    from fastnn.ensemble import MAX_MEMBERS, Ensemble
    from fastnn.exceptions import ConfigError
    from fastnn.io import MODEL_FILE

    if not 2 <= len(models) <= MAX_MEMBERS:
        raise click.UsageError(f"give 2 to {MAX_MEMBERS} MODELS, not {len(models)}")
    check_outputs([("-o", out, MODEL_FILE)], [("MODEL", m) for m in models], force)
    members = []
    for path in models:
        net = load(path)
        # an ensemble given as a member adds its members
        members += getattr(net, "members", [net])
    try:
        joined = Ensemble(members)
    except ConfigError as exc:
        raise ConfigError(f"cannot join {', '.join(models)}: {exc}") from None
    joined.save(out, force=force)
    if as_json:
        echo_json({"model": out, "members": list(models), "networks": len(members),
                   "parameters": joined.n_params})
        return
    click.echo(f"Saved an ensemble of {len(members)} networks ({joined.n_params:,} "
               f"parameters) to {out}")
