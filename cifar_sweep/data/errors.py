"""The data layer's exceptions (torch-free, so a config check can raise them before torch loads)."""

from cifar_sweep.errors import CifarSweepError


class DataError(CifarSweepError, ValueError):
    """A dataset problem the user can fix: the message names the file or key and the fix."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The dataset is not where the config points."""
