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


class RunLockedError(ImaeError):
    """Another live process holds the run folder (or campaign manifest) this one was asked to write."""

    def __init__(self, message: str, *, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


class DataFileError(ImaeError):
    """A dataset file is readable but wrong (keys, sizes, counts, label range, undecodable images)."""


class RunFileError(ImaeError):
    """A run's own file (``metrics.jsonl``, ``config.yaml``) is damaged or holds what imae never writes."""


class StorageError(ImaeError):
    """The operating system refused a write or a read: disk full, read-only file system, no permission."""

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.path = path


# errno -> (what happened, what to do); the failures a user's machine causes, not bugs in imae.
_OS_REASONS = {
    "ENOSPC": ("the disk is full", "free space on that disk (or choose a folder on another one)"),
    "EDQUOT": ("the disk quota is exhausted", "free space within your quota (or choose a folder on another disk)"),
    "EROFS": ("the file system is read-only", "choose a writable folder (or remount that one read-write)"),
    "EACCES": ("permission denied", "choose a folder you may write to (or fix its permissions)"),
    "EPERM": ("the operation is not permitted", "choose a folder you may write to (or fix its permissions)"),
    "EFBIG": ("the file grew past the size limit", "raise the file-size limit (ulimit -f) or use another disk"),
}
STORAGE_ERRNOS = frozenset(_OS_REASONS)


def os_reason(e: BaseException) -> tuple[str, str] | None:
    """(what happened, the fix) for an OSError a machine causes (disk full, read-only, permissions); None for
    any other error (a bug, or something a caller handles itself)."""
    import errno as _errno

    code = getattr(e, "errno", None)
    name = _errno.errorcode.get(code) if isinstance(code, int) else None
    return _OS_REASONS.get(name) if name else None


def storage_error(e: OSError, *, doing: str, path=None, intact: str | None = None) -> StorageError:
    """One line for an OSError of the machine: what imae was doing, where, why, what is safe, the fix.

    Args:
        e: the OSError (its errno picks the words; see :data:`STORAGE_ERRNOS`).
        doing: what imae was doing, e.g. ``"writing the checkpoint"``.
        path: the file or folder (default: the error's own filename).
        intact: a sentence on what is safe, e.g. ``"the checkpoint of step 40 in RUN is intact"``.
    """
    why, fix = os_reason(e) or (e.strerror or type(e).__name__, "check the folder and try again")
    where = path if path is not None else (getattr(e, "filename", None) or "")
    safe = f"; {intact}" if intact else ""
    return StorageError(f"{doing} {where} failed: {why} ({_errno_name(e)}){safe}. Fix: {fix}, then run the same "
                        f"command again", errno=getattr(e, "errno", None), path=str(where))


def _errno_name(e: BaseException) -> str:
    import errno as _errno

    code = getattr(e, "errno", None)
    return _errno.errorcode.get(code, str(code)) if isinstance(code, int) else type(e).__name__
