"""Known datasets: MNIST, read from the original IDX files with MD5 checks,
found on a search path or downloaded."""
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from fastnn._typing import Array, PathLike
from fastnn.exceptions import DataError, DatasetNotFound
from fastnn.files import GZIP_FILE, atomic_write, check_output
from fastnn.idx import parse_idx
from fastnn.reading import gunzip, read_file

#: The four original MNIST files and their official MD5 checksums.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}

#: Where ``download_mnist`` fetches the files (LeCun's site is often down; these
#: mirrors serve the same files, which the MD5 check confirms).
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

#: data/mnist of the source tree fastnn runs from (found when installed with -e).
SOURCE_TREE_MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"


#: ((X_train, y_train), (X_test, y_test))
Splits = tuple[tuple[Array, Array], tuple[Array, Array]]


def user_cache_dir() -> Path:
    """Where fastnn keeps downloaded data: $XDG_CACHE_HOME/fastnn or ~/.cache/fastnn."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastnn"


def mnist_search_path(path: Optional[PathLike] = None) -> list[Path]:
    """The directories load_mnist looks in, in order.

    `path`, then $FASTNN_DATA (the directory itself or its ``mnist``
    subdirectory), then ``data/mnist`` of the source tree fastnn runs from and
    of the current directory, then the user cache.
    """
    places: list[Path] = []
    if path is not None:
        places.append(Path(path))
    env = os.environ.get("FASTNN_DATA")
    if env:
        places += [Path(env), Path(env) / "mnist"]
    places.append(SOURCE_TREE_MNIST)
    places.append(Path.cwd() / "data" / "mnist")
    places.append(user_cache_dir() / "mnist")
    unique: list[Path] = []
    for p in places:
        if p not in unique:
            unique.append(p)
    return unique


def find_mnist(path: Optional[PathLike] = None) -> Path:
    """The first directory on the search path holding all four MNIST files."""
    places = mnist_search_path(path)
    for place in places:
        if all((place / name).is_file() for name, _ in MNIST_FILES.values()):
            return place
    listed = ", ".join(str(p) for p in places)
    raise DatasetNotFound(
        f"MNIST not found: looked for {MNIST_FILES['train_images'][0]} and the other three "
        f"files in {listed}. Copy them into one of these, set FASTNN_DATA, or run "
        f"'fastnn download mnist'")


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def verify_mnist(place: PathLike) -> dict[str, Optional[str]]:
    """{file name: problem or None} for the four files in a directory."""
    problems: dict[str, Optional[str]] = {}
    for name, expected in MNIST_FILES.values():
        file = Path(place) / name
        if not file.is_file():
            problems[name] = "missing"
            continue
        digest = md5(read_file(file))
        problems[name] = None if digest == expected else f"MD5 {digest}, expected {expected}"
    return problems


def load_mnist(path: Optional[PathLike] = None) -> Splits:
    """Load MNIST from the original IDX files, verifying their official MD5s.

    Parameters
    ----------
    path : str or Path, optional
        A directory to look in first (see ``mnist_search_path``).

    Returns
    -------
    ((X_train, y_train), (X_test, y_test))
        uint8 images of shape (60000, 784) and (10000, 784), and int64 labels.

    Raises
    ------
    DatasetNotFound
        If no directory on the search path has the four files; the message
        lists every place searched.
    DataError
        If a file's checksum or contents are wrong.
    """
    place = find_mnist(path)
    arrays = {}
    for key, (name, expected) in MNIST_FILES.items():
        file = place / name
        raw = read_file(file)
        if md5(raw) != expected:
            raise DataError(f"{file} is corrupt: MD5 {md5(raw)}, expected {expected}. "
                            f"Replace it with the original file")
        arrays[key] = parse_idx(gunzip(raw, file), str(file))
    X_train = arrays["train_images"].reshape(len(arrays["train_images"]), -1)
    X_test = arrays["test_images"].reshape(len(arrays["test_images"]), -1)
    y_train = arrays["train_labels"].astype("int64")
    y_test = arrays["test_labels"].astype("int64")
    return (X_train, y_train), (X_test, y_test)


def download_mnist(directory: Optional[PathLike] = None, mirrors: Optional[Sequence[str]] = None,
                   timeout: float = 60, report: Optional[Callable[[str], object]] = None,
                   force: bool = False) -> Path:
    """Fetch the four MNIST files into `directory` (default: the user cache),
    verifying each against its official MD5 before it is written.

    Files already there with the right checksum are kept; others are
    replaced, if they are gzip files (a damaged download) or with
    force=True. Each file is written atomically under the output policy of
    fastnn.files, so an interrupted download leaves no partial file.
    `report(message)` is told what happens. Returns the directory.
    """
    directory = Path(directory) if directory else user_cache_dir() / "mnist"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {directory}: {exc.strerror}") from None
    for name, _ in MNIST_FILES.values():
        check_output(directory / name, GZIP_FILE, force, DataError)
    mirrors = mirrors or MNIST_MIRRORS
    for name, expected in MNIST_FILES.values():
        target = directory / name
        if target.is_file() and md5(read_file(target)) == expected:
            if report:
                report(f"{target}: already there, checksum ok")
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    data = response.read()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
                continue
            if md5(data) != expected:
                failures.append(f"{url}: MD5 {md5(data)}, expected {expected}")
                continue
            atomic_write(target, data, DataError, kind=GZIP_FILE, force=force)
            if report:
                report(f"{target}: downloaded from {url}, checksum ok")
            break
        else:
            raise DataError(f"could not download {name}: " + "; ".join(failures))
    return directory


#: Named datasets: name -> loader returning ((X_train, y_train), (X_test, y_test)).
DATASETS: dict[str, Callable[..., Splits]] = {"mnist": load_mnist}
#: The shape of one sample of the datasets of images.
IMAGE_SHAPES: dict[str, tuple[int, ...]] = {"mnist": (28, 28)}
