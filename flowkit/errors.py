"""Exceptions raised by flowkit.

Every error a user can cause derives from :class:`FlowkitError`; the CLI prints its message
as one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

__all__ = [
    "FlowkitError",
    "ConfigError",
    "UnknownComponentError",
    "DataError",
    "DatasetNotFoundError",
    "TrainingDivergedError",
    "ModelFileError",
    "NotFittedError",
    "NotExportableError",
    "RunLockedError",
    "FlowkitPluginWarning",
]


class FlowkitError(Exception):
    """Base class of the errors flowkit reports to users."""

    exit_code = 1


class ConfigError(FlowkitError, ValueError):
    """A component, option or argument that flowkit cannot accept."""

    exit_code = 2


class UnknownComponentError(ConfigError, KeyError):
    """A registry name that does not exist; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(FlowkitError, ValueError):
    """Images that cannot be used: wrong shape or channels, unreadable files, NaNs."""

    exit_code = 2


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset whose files are missing and could not be downloaded."""

    exit_code = 2


class TrainingDivergedError(FlowkitError, RuntimeError):
    """Training produced a non-finite loss that the usual guards could not recover."""

    def __init__(self, stage: str, epoch: int, detail: str = "") -> None:
        self.stage = stage
        self.epoch = epoch
        msg = f"{stage} training diverged at epoch {epoch}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class ModelFileError(FlowkitError, ValueError):
    """A model file that is not flowkit's, is truncated, tampered or incompatible."""

    exit_code = 2


class NotFittedError(ConfigError, AttributeError):
    """A Detector used before ``fit`` or ``load`` (as scikit-learn's ``NotFittedError``)."""


class NotExportableError(FlowkitError):
    """A component has no ONNX form (e.g. a scorer that compresses images as PNG)."""


class RunLockedError(FlowkitError):
    """Another process holds the bench run directory."""

    exit_code = 2


class FlowkitPluginWarning(UserWarning):
    """A plugin failed to import or to register its components and was skipped."""
