"""The campaign's clock and watchdog: stop cleanly before the deadline, whatever is running.

:class:`Clock` turns a wall budget into a deadline on the monotonic clock (the CLI counts the seconds the
process spent starting, imports included). :class:`Watchdog` sends SIGTERM to its own process
``reserve_s`` before the deadline, from a ``threading.Timer``:

* during training, the engine's own handler (``imae.train._Signals``) turns it into a stop at the next step
  boundary with a checkpoint written, and ``pretrain`` raises :class:`~imae.errors.TrainingInterrupted`;
* anywhere else (evaluations, packing, a benchmark subprocess being waited for), the watchdog's handler raises
  :class:`DeadlineReached`, a ``BaseException`` so that no ``except Exception`` on the way swallows it;
* inside :meth:`Watchdog.hold` (writing a stage's files and the manifest: short and must not be torn) the
  signal is deferred to the end of the block.

An external SIGTERM (``timeout -s TERM``, the machine going away) takes the same paths.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time


class DeadlineReached(BaseException):
    """The campaign's time is up (the watchdog or an external SIGTERM): stop, write what is done, exit."""


def process_age_s(limit: float = 120.0) -> float:
    """Seconds since this process started (Linux ``/proc``), 0 where unknown or implausible (> ``limit``)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5): starttime, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    return age if 0.0 <= age <= limit else 0.0


class Clock:
    """A wall budget as a monotonic deadline. ``started`` defaults to now."""

    def __init__(self, budget_s: float, started: float | None = None):
        self.budget_s = float(budget_s)
        self.started = time.monotonic() if started is None else float(started)
        self.deadline = self.started + self.budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class Watchdog:
    """SIGTERM to this process at ``fire_at`` (monotonic seconds); see the module docstring.

    Use as a context manager (or :meth:`start` / :meth:`cancel`) from the main thread.
    """

    def __init__(self, fire_at: float, *, signum: int = signal.SIGTERM):
        self.fire_at, self.signum = float(fire_at), signum
        self.fired_at: float | None = None  # when the timer sent the signal
        self.received = 0  # signals seen by this handler
        self._timer: threading.Timer | None = None
        self._old = None
        self._hold = 0
        self._pending = False
        self._raised = False

    # ------------------------------------------------------------------------------------------- timer
    def start(self) -> "Watchdog":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the watchdog must be started from the main thread (signal handlers live there)")
        self._old = signal.signal(self.signum, self._handle)
        self._timer = threading.Timer(max(0.0, self.fire_at - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _fire(self) -> None:
        self.fired_at = time.monotonic()
        os.kill(os.getpid(), self.signum)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._old is not None:
            signal.signal(self.signum, self._old)
            self._old = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cancel()

    @property
    def fired(self) -> bool:
        """The deadline signal arrived (from the timer or from outside)."""
        return self.fired_at is not None or self.received > 0

    # ------------------------------------------------------------------------------------------ handler
    def _handle(self, signum, frame) -> None:
        self.received += 1
        if self._hold:
            self._pending = True
            return
        self._raise()

    def _raise(self) -> None:
        if self._raised:  # already unwinding towards the final write: repeats change nothing
            return
        self._raised = True
        raise DeadlineReached(f"deadline signal ({signal.Signals(self.signum).name}) received")

    @contextlib.contextmanager
    def hold(self):
        """Defer the deadline to the end of this block (short writes that must not be torn)."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1
            if not self._hold and self._pending:
                self._pending = False
                self._raise()

    def stop_raising(self) -> None:
        """From now on (the final writes) signals are only counted."""
        self._raised = True
