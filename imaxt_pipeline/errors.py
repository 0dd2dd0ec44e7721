"""Error and warning types.

Base classes also subclass builtins so callers can catch ``ValueError`` or
``FileNotFoundError`` without knowing this package (as zarr's ``errors.py`` does).
"""

from __future__ import annotations


class ImaxtError(Exception):
    """Base class of every error raised on purpose by imaxt_pipeline."""


class InputError(ImaxtError, ValueError):
    """Raw input that breaks the contract in ``spec/raw-layout.md``.

    The message always names the offending file and the problem, on one line.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class StoreError(ImaxtError, OSError):
    """A Zarr store that is missing, incomplete or inconsistent."""


class ConfigError(ImaxtError, ValueError):
    """An invalid run configuration."""


class NotEnoughOverlapError(ImaxtError, ValueError):
    """Two tiles or slices share too little signal to be registered."""


class DataWarning(UserWarning):
    """Data-quality problem that does not stop processing (e.g. a blank tile)."""
