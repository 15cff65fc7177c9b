"""User-facing errors.

Every error a user can cause by what they type or where they point us is an :class:`ImaeError`. Its
message names the offending value and the fix; the CLI prints it without a traceback and exits with
status 2. Anything else escaping is a bug and keeps its traceback.
"""


class ImaeError(Exception):
    """A problem with the user's input, files or environment (never a bug in imae)."""


class ConfigError(ImaeError, ValueError):
    """A configuration value is unknown, out of range or of the wrong type."""


class DatasetNotFoundError(ImaeError, FileNotFoundError):
    """The dataset is neither under the data root nor downloadable."""


class CheckpointError(ImaeError):
    """A checkpoint is missing, truncated, corrupted, or does not fit the model."""


class RunDirError(ImaeError):
    """A run/results folder belongs to a different configuration."""


class NonFiniteLossError(ImaeError, FloatingPointError):
    """Training produced a NaN/Inf loss."""

    def __init__(self, message: str, *, step: int, terms: dict, checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.terms = terms
        self.checkpoint = checkpoint


class TrainingInterrupted(ImaeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written before stopping."""

    def __init__(self, message: str, *, signum: int, checkpoint: str):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
