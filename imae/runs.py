"""Run directories: ``config.yaml`` + ``metrics.jsonl`` + ``checkpoint.pt``.

A directory belongs to one configuration (its fingerprint). Reopening it with the same config resumes or
returns the finished run (this is how notebooks cache training); with a different config it is refused
unless ``overwrite=True``, so finished work is never silently replaced (a folder where nothing was trained
yet, left by a start that failed, is not finished work: a corrected command takes it over). The notebooks'
cached runs live under :func:`runs_root`.

One process at a time writes a run folder: :class:`FolderLock` holds ``.imae.lock`` in it (pid and host of the
holder) while training, and a second process gets one line naming the holder. What a run folder holds is
checked on read: a damaged ``metrics.jsonl`` line or ``config.yaml`` is a :class:`~imae.errors.RunFileError`
naming the file and line (a last line cut by a kill is the one exception: it is skipped, and re-run on resume).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import yaml

from .checkpoint import CHECKPOINT_NAME
from .config import RunConfig, config_key_problems
from .errors import RunDirError, RunFileError, RunLockedError, os_reason, storage_error

try:  # POSIX; elsewhere the lock is the pid/host record alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CONFIG_NAME, METRICS_NAME, LOCK_NAME = "config.yaml", "metrics.jsonl", ".imae.lock"
RUN_CONFIG_KEYS = ("fingerprint", "derived", "config")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds the cached runs: ``runs_dir``, else ``$IMAE_RUNS``, else ``./runs``."""
    return Path(runs_dir or os.environ.get("IMAE_RUNS", "runs"))


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.yaml`` of a run folder, checked: valid YAML, a mapping of the keys imae writes
    (fingerprint, derived, config) whose ``config`` has only known sections and fields. Anything else is a
    :class:`~imae.errors.RunFileError` naming the file and line (and, for an unknown key, the nearest known)."""
    p = Path(run_dir) / CONFIG_NAME
    fix = (f"Fix: correct that line, or delete {p} if nothing was trained in {Path(run_dir)} yet (imae writes it "
           f"again when the run starts); otherwise restore it from a copy")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise RunFileError(f"{p}, line {line}: not text (undecodable byte 0x{e.object[e.start]:02x}): the file is "
                           f"damaged. {fix}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise RunFileError(f"{p}{where}: not valid YAML ({problem}). {fix}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunFileError(f"{p}, line 1: holds a {type(data).__name__}, not the mapping imae writes "
                           f"({', '.join(RUN_CONFIG_KEYS)}). {fix}")
    problems = [((k,), difflib.get_close_matches(str(k), RUN_CONFIG_KEYS, n=1)) for k in data
                if k not in RUN_CONFIG_KEYS]
    if isinstance(data.get("config"), dict):
        problems += [(("config", *path), close) for path, close in config_key_problems(data["config"])]
    if problems:
        path, close = problems[0]
        line = _yaml_line(text, path)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        more = f"; {len(problems) - 1} more unknown key(s) after it" if len(problems) > 1 else ""
        raise RunFileError(f"{p}{f', line {line}' if line else ''}: unknown key {'.'.join(map(str, path))!r}"
                           f"{hint}{more}: imae does not read it, so it would be silently ignored. {fix}")
    return data


def _yaml_line(text: str, path: tuple) -> int | None:
    """The 1-based line of the key at ``path`` (a tuple of mapping keys) in the YAML ``text``, if found."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        for k, v in node.value:
            if k.value == str(key):
                found, node = k, v
                break
        else:
            return None
    return found.start_mark.line + 1


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: readers (and a
    process killed midway) see the old or the new content, never half (stale temporaries: ``.*.tmp``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # a failed write (disk full) leaves no partial temporary behind
            tmp.unlink()
    return path


def atomic_write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """``np.savez_compressed`` to a temporary name beside ``path``, then a rename over it (as
    :func:`atomic_write_text`: never half a file, and no stale temporary on an error)."""
    import numpy as np

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_yaml(path: Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """``data`` as indented JSON at ``path`` (parent folders created, written atomically); numpy scalars are
    written as floats."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=1, default=float))


def load_result(result_file: str | os.PathLike) -> dict:
    """One stored evaluation ``<folder>/<what>.json`` with its example images and per-item arrays attached
    (``examples`` {alpha: {name: array}}, ``items`` {name: array}; float16 items read back as float32)."""
    result_file = Path(result_file)
    folder = result_file.parent
    result = json.loads(result_file.read_text())
    if result.get("examples_file"):
        import numpy as np

        with np.load(folder / result["examples_file"]) as z:
            examples: dict = {}
            for key in z.files:
                alpha, name = key.split("/", 1)
                arr = z[key]  # float16: the campaign's compact storage of example images
                examples.setdefault(float(alpha[len("alpha"):]), {})[name] = (arr.astype(np.float32)
                                                                              if arr.dtype == np.float16 else arr)
        result["examples"] = examples
    if result.get("items_file"):
        import numpy as np

        with np.load(folder / result["items_file"]) as z:
            # float16 arrays are the campaign's compact storage (imae.campaign.collect.compact_items): the
            # metrics see float32, as computed.
            result["items"] = {name: (z[name].astype(np.float32) if z[name].dtype == np.float16 else z[name])
                               for name in z.files}
    return result


def check_run_dir(out: str | os.PathLike, cfg: RunConfig, fingerprint: str, *, overwrite: bool = False) -> str:
    """What ``out`` holds for a run of ``cfg`` (nothing is written): ``"new"`` (no config.yaml yet), ``"same"``
    (this configuration's folder) or ``"replace"`` (another configuration's folder that ``overwrite`` may
    replace, or one where nothing was trained: a start that failed before its first step claims nothing).

    Raises RunDirError when it holds another configuration's results and not ``overwrite``.
    """
    out = Path(out)
    cfg_file = out / CONFIG_NAME
    if cfg_file.is_file():
        old = read_run_config(out)
        if old.get("fingerprint") == fingerprint:
            return "same"
        if overwrite or not _trained_anything(out):
            return "replace"
        new_flat, old_flat = _flatten(cfg.to_dict()), _flatten(old.get("config", {}))
        diff = [f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}"
                for k in sorted(set(new_flat) | set(old_flat)) if new_flat.get(k) != old_flat.get(k)]
        detail = "; ".join(diff[:6]) if diff else "the teacher differs"
        raise RunDirError(
            f"{out} holds results of a different configuration (fingerprint {old.get('fingerprint')}, "
            f"now {fingerprint}; {detail}). Refusing to overwrite them. Fix: choose another output "
            f"folder, or pass --overwrite (overwrite=True) to delete and replace them")
    if out.exists() and not overwrite and (out / CHECKPOINT_NAME).exists():
        raise RunDirError(f"{out} holds a checkpoint but no {CONFIG_NAME}; refusing to reuse it. "
                          "Fix: choose another output folder or pass --overwrite")
    return "new" if not (out / CHECKPOINT_NAME).exists() else "replace"


def _trained_anything(out: Path) -> bool:
    """Whether a run folder holds any result: a checkpoint, or a metrics line."""
    if (out / CHECKPOINT_NAME).exists():
        return True
    m = out / METRICS_NAME
    return m.is_file() and m.stat().st_size > 0


def claim_run_dir(out: str | os.PathLike, cfg: RunConfig, fingerprint: str, *, derived: dict, state: str,
                  fresh: bool = False) -> Path:
    """Make ``out`` the folder of ``cfg``: remove what another configuration left (``state="replace"``, from
    :func:`check_run_dir`), or this configuration's checkpoint and metrics too when ``fresh``; remove stale
    temporaries; write ``config.yaml``. Call it once the run can start (its data and model were built)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = (CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME) if state == "replace" else (
        (METRICS_NAME, CHECKPOINT_NAME) if fresh else ())
    for name in names:
        (out / name).unlink(missing_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a process killed while writing; the real file is intact
        stale.unlink(missing_ok=True)
    cfg_file = out / CONFIG_NAME
    if not cfg_file.is_file():
        write_yaml(cfg_file, {"fingerprint": fingerprint, "derived": derived, "config": cfg.to_dict()})
    return out


def open_run_dir(out: str | os.PathLike, cfg: RunConfig, fingerprint: str, *, derived: dict,
                 overwrite: bool = False, write: bool = True) -> Path:
    """Create or reopen a run directory for ``cfg``; refuse one that holds a different run.

    Returns the directory. Raises RunDirError when it holds another config's results (``overwrite=True``
    deletes them first). :func:`check_run_dir` then :func:`claim_run_dir` in one call (the training engine
    calls them apart, claiming the folder only once the run can start).
    """
    state = check_run_dir(out, cfg, fingerprint, overwrite=overwrite)
    if write:
        claim_run_dir(out, cfg, fingerprint, derived=derived, state=state)
    return Path(out)


# ------------------------------------------------------------------------------------------------ locks
class FolderLock:
    """An exclusive lock held by one process: a run folder while it trains (``.imae.lock`` inside it), or a
    campaign manifest while a window runs (``.<name>.lock`` beside it).

    The lock file records the holder (pid, host, start time, command). On POSIX it is also ``flock``-ed, which
    the kernel releases whatever way the process ends; a record whose process is gone (same host, no such
    pid, or the flock free) is stale and taken over. A live holder is a :class:`~imae.errors.RunLockedError`
    naming it. ``release`` (or leaving the ``with`` block) removes the file.

    Args:
        path: the lock file.
        doing: what the holder does to ``target``, for the message (``"training"``).
        target: the folder or file the lock guards, for the message.
    """

    def __init__(self, path: str | os.PathLike, *, doing: str, target: str | os.PathLike):
        self.path, self.doing, self.target = Path(path), doing, str(target)
        self.fd: int | None = None
        self.flocked = False

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> "FolderLock":
        return cls(Path(run_dir) / LOCK_NAME, doing="training", target=run_dir)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "FolderLock":
        for _ in range(20):  # the file may be replaced by a releasing holder between open and flock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if os_reason(e) is None:
                    raise
                raise storage_error(e, doing=f"locking {self.target} (creating", path=f"{self.path})") from None
            try:
                self.flocked = False
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        self.flocked = True
                    except (BlockingIOError, PermissionError):  # held by a live process (here, or on another
                        raise self._busy(_read_holder(fd)) from None  # host sharing the disk)
                    except OSError:  # a file system without flock (ENOLCK, EOPNOTSUPP): the record alone decides
                        pass
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                if current is None or not os.path.samestat(os.fstat(fd), current):
                    os.close(fd)
                    fd = None
                    continue
                holder = _read_holder(fd)
                if holder and not self._stale(holder):
                    raise self._busy(holder)
                record = {"pid": os.getpid(), "host": socket.gethostname(),
                          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                self.fd = fd
                return self
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
        raise RunLockedError(f"could not lock {self.target}: its lock file {self.path} kept changing (several "
                             f"processes starting at once?). Fix: run the command again")

    def _stale(self, holder: dict) -> bool:
        """Whether the recorded holder is gone: on this host, its pid is dead, or (with flock, which we now
        hold) it is not holding the file any more. A holder on another host cannot be checked from here."""
        if holder.get("host") != socket.gethostname():
            return False
        if self.flocked:
            return True  # we hold the flock, so the recorded process does not: it ended
        return not _pid_alive(holder.get("pid"))

    def _busy(self, holder: dict) -> RunLockedError:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        since = f", since {holder['since']}" if holder.get("since") else ""
        other_host = host != socket.gethostname() and host != "?"
        fix = (f"wait for it to finish or stop it (kill {pid} on {host}), then run this command again" +
               (f"; if no process of {host} uses it any more, delete {self.path}" if other_host else ""))
        return RunLockedError(f"another process (pid {pid} on {host}{since}) is {self.doing} {self.target}. "
                              f"Nothing was written. Fix: {fix}", holder=holder)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)  # while still holding it: a waiting opener then sees a new file
            except OSError:
                pass
        finally:
            os.close(fd)  # releases the flock


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


# ----------------------------------------------------------------------------------------- disk space
def check_free_space(folder: str | os.PathLike, needed: int, *, what: str, intact: str | None = None) -> int:
    """Raise a :class:`~imae.errors.StorageError` unless ``folder``'s disk has ``needed`` bytes free; returns
    the free bytes. ``what`` says what the space is for; ``intact`` what stays safe (for the message)."""
    from .errors import StorageError

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        safe = f" {intact}." if intact else ""
        raise StorageError(
            f"not enough free space for {folder}: {_mb(free)} free on its disk, and {what} needs at least "
            f"{_mb(needed)}.{safe} Fix: free space on that disk (or choose a folder on another one), then run the "
            f"same command again", errno=None, path=str(folder))
    return free


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


class MetricsLog:
    """Append-only JSONL of training metrics, truncated back to a checkpoint's step on resume."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (written after the checkpoint we resume from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in read_metrics(self.path) if line.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.jsonl`` (or of the one inside a run directory).

    Every line must be one JSON object (as imae writes them); one that is not (edited, damaged, binary) is a
    :class:`~imae.errors.RunFileError` naming the file and line. The one exception is a last line without its
    newline that does not parse: a write cut by a kill, skipped (its step is re-run on resume)."""
    p = Path(path)
    p = p / METRICS_NAME if p.is_dir() else p
    if not p.exists():
        return []
    lines = p.read_bytes().split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline; else a line whose newline was never written
    out = []
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            out.append(_metrics_record(raw, p, number))
    if last.strip():
        try:
            out.append(_metrics_record(last, p, len(lines) + 1))
        except RunFileError:
            pass  # a line cut by a kill; its step is re-run on resume
    return out


def _metrics_record(raw: bytes, path: Path, number: int) -> dict:
    fix = (f"Fix: delete line {number} (the run's checkpoint does not depend on it), or restore {path.name} "
           "from a copy")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path}, line {number}: not text (undecodable byte 0x{raw[e.start]:02x} at column "
                           f"{e.start + 1}): the file is damaged. {fix}") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}, line {number}: not a JSON record ({e.msg} at column {e.colno}: "
                           f"{text[:60]!r}). {fix}") from None
    if not isinstance(rec, dict):
        raise RunFileError(f"{path}, line {number}: holds {text.strip()[:60]!r}, not a record (a JSON object "
                           f"with step, loss, ...). {fix}")
    return rec


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the training loop checks at step boundaries, so that a stopped run
    writes its checkpoint first (a second signal interrupts at once)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
