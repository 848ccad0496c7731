"""The errors fastnn raises for mistakes a user can make.

Every message is one line that says what is wrong, with the actual values,
and where possible a way out. The CLI prints them without a traceback.
"""
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class FastnnError(Exception):
    """Base class of every error fastnn raises on purpose."""


class ConfigError(FastnnError, ValueError):
    """An invalid option: unknown name, out-of-range value, bad pairing."""


class DataError(FastnnError, ValueError):
    """Input data that cannot be used: wrong shape, NaN, labels out of range."""


class DatasetNotFound(FastnnError, FileNotFoundError):
    """A named dataset was not found in any of the places searched."""


class ModelFileError(FastnnError):
    """A file that is not a readable fastnn model."""


class OutputError(FastnnError):
    """An output that must not or cannot be written: the same file as an
    input, not a regular file, not the kind of file being written (without
    force), or in a directory that is missing or not writable."""


class ResourceError(FastnnError, MemoryError):
    """A request that needs more memory than the machine makes available."""


class NetworkBusy(FastnnError, RuntimeError):
    """A Network used by two fit calls at once."""


class TrainingDiverged(FastnnError, ArithmeticError):
    """The training loss became NaN or infinite; the last good weights are kept."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ConfigError:
    """The error for a name missing from a registry, listing the valid ones."""
    return ConfigError(f"Unknown {kind} {name!r}; expected one of {sorted(valid)}")


def lookup(registry: Mapping[str, T], kind: str, name: str) -> T:
    """registry[name], or a ConfigError that lists the valid names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise unknown_name(kind, name, registry) from None


class FastnnWarning(UserWarning):
    """Something a user should know that is not an error (the CLI shows it
    as one line on stderr): bfloat16 emulated on a CPU without it."""
