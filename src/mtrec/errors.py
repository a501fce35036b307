"""Exceptions raised by mtrec.

Every error a user can cause derives from :class:`MtrecError`; the command line turns
them into one clear message and a non-zero exit, never a traceback.
"""


class MtrecError(Exception):
    """Base class of the errors a user can cause (bad data, bad configuration, ...)."""


class ConfigError(MtrecError, ValueError):
    """A hyper-parameter or option is outside what is allowed."""


class DataError(MtrecError):
    """Input data is missing, malformed or inconsistent."""


class DownloadError(DataError):
    """A dataset could not be downloaded or failed verification."""


class ModelFileError(MtrecError):
    """A saved model is missing, truncated, of another version or tampered with."""


class UnknownUserError(MtrecError):
    """A user id the model was not trained on."""


class UnknownItemError(MtrecError):
    """An item id or title the model was not trained on."""


class AmbiguousItemError(MtrecError):
    """A title that names several items; ``candidates`` holds their ``(raw id, title)``."""

    def __init__(self, message: str, candidates: list[tuple[object, str]]) -> None:
        super().__init__(message)
        self.candidates = candidates


class TrainingDiverged(MtrecError):
    """A loss or a parameter became NaN or infinite during training."""


class RunExistsError(MtrecError):
    """A run directory already holds a finished run (or other files) that would be replaced."""
