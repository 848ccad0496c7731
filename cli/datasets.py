"""``fastnn datasets`` and ``fastnn download``."""
import click

from fastnn.cli.common import Command


@click.command(cls=Command)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: each dataset's place, files and problems.")
def datasets(as_json):
    """List the known datasets, where each was found, and verify their checksums.

    Exits with status 1 when a dataset is missing or corrupt.

    \b
    Example:
        fastnn datasets
    """
    from fastnn.datasets import MNIST_FILES, find_mnist, mnist_search_path, verify_mnist
    from fastnn.exceptions import DatasetNotFound

    from fastnn.cli.common import echo_json

    try:
        place = find_mnist()
    except DatasetNotFound:
        places = ", ".join(str(p) for p in mnist_search_path())
        if as_json:
            echo_json({"mnist": {"found": False, "path": None, "ok": False,
                                 "searched": [str(p) for p in mnist_search_path()]}})
        else:
            click.echo(f"mnist: not found (looked in {places})")
        raise click.ClickException("mnist was not found; run 'fastnn download mnist'") from None
    problems = verify_mnist(place)
    bad = {name: p for name, p in problems.items() if p}
    if as_json:
        echo_json({"mnist": {"found": True, "path": str(place), "ok": not bad,
                             "files": problems}})
        if bad:
            raise click.ClickException(f"mnist in {place} has corrupt files")
        return
    status = "ok, checksums verified" if not bad else "CORRUPT"
    click.echo(f"mnist: {place} ({len(MNIST_FILES)} files, {status})")
    for name, problem in bad.items():
        click.echo(f"  {name}: {problem}")
    if bad:
        raise click.ClickException(f"mnist in {place} has corrupt files; run "
                                   f"'fastnn download mnist --dir {place} --force' to replace "
                                   f"them")


@click.command(cls=Command)
@click.argument("dataset", type=click.Choice(["mnist"]))
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where to put the files [default: ~/.cache/fastnn/mnist].")
@click.option("--mirror", "mirrors", multiple=True, metavar="URL",
              help="Fetch from this base URL instead of the default mirrors (repeatable).")
@click.option("--force", is_flag=True,
              help="Replace files of the same names that are not gzip files.")
def download(dataset, directory, mirrors, force):
    """Download a dataset's original files, verifying their MD5 checksums.

    \b
    Examples:
        fastnn download mnist
        fastnn download mnist --dir data/mnist
    """
    from fastnn.datasets import download_mnist

    place = download_mnist(directory, list(mirrors) or None, report=click.echo, force=force)
    click.echo(f"mnist is ready in {place}")
