"""The user's click comes first: background work gives the CPU to page runs and to the browser.

On this 2-core machine a background job (a dense forward over a 1024-token run, the oracles of
every layer) beside a page run made the run several times slower, and the browser, drawing what
the run sent on the same cores, slower too (`benchmarks/app_latency.py`, "explore: layer
(unseen)" right after a run opens). So every page body (`ui_errors.guard`) marks itself
running, and background work waits at its checkpoints (`background_turn`: between layers, at each
progress report of `ui_jobs.Job`) while a body runs and for `QUIET_S` after the last one ended,
the time the browser takes to draw.

Bounds, so that the background is late but never stuck:
- a body that has run `BUSY_MAX_S` is a long action (a capture, Generate, an experiment) that
  shows its own progress, and may need the model's lock that a paused forward holds: from then on
  background work goes on beside it;
- no checkpoint waits more than `WAIT_MAX_S`; a thread that waited that long (page runs kept
  coming: clicks in quick succession, other users) then runs for `FREE_S` without waiting, so
  its jobs still move at a third of their speed or more.

Between checkpoints a job runs on (a layer of a forward over a 1024-token run: tens of
milliseconds), so the background pools' threads also run at a lower CPU priority (`NICE`,
`lower_priority`): the operating system gives the cores to the page run and the browser first.
On a quiet machine this changed `benchmarks/app_latency.py`'s figures by less than their noise
(two alternating pairs of runs); it is there for the busy one.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

QUIET_S = 1.0      # after a page run ends: the browser draws what it sent
BUSY_MAX_S = 1.5   # a page run longer than this is a long action: background work goes on
WAIT_MAX_S = 2.0   # the most one checkpoint waits
FREE_S = 1.0       # then the thread runs this long without waiting
NICE = 10          # added to the background threads' nice value (19 is the lowest priority)

_cond = threading.Condition()
_running: dict[int, float] = {}   # page run -> its start (time.monotonic)
_last_end = float("-inf")
_ids = itertools.count()
_local = threading.local()        # .depth: page runs (guards) open on this thread; .free_until


@contextmanager
def page_run() -> Iterator[None]:
    """Mark a page body as running (nested bodies count once per guard, harmlessly)."""
    global _last_end
    with _cond:
        run = next(_ids)
        _running[run] = time.monotonic()
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        with _cond:
            _running.pop(run, None)
            _last_end = time.monotonic()
            _cond.notify_all()


def hold(now: float) -> float:
    """Seconds background work should still wait at `now` (0: its turn)."""
    busy = [BUSY_MAX_S - (now - t0) for t0 in _running.values() if now - t0 < BUSY_MAX_S]
    if busy:
        return max(busy)
    return max(0.0, _last_end + QUIET_S - now) if not _running else 0.0


def background_turn() -> float:
    """A background checkpoint: wait while page runs have the CPU (at most WAIT_MAX_S). A no-op on
    a thread that is running a page body itself. Returns the seconds waited."""
    t0 = time.monotonic()
    if getattr(_local, "depth", 0) or t0 < getattr(_local, "free_until", 0.0):
        return 0.0
    with _cond:
        while True:
            now = time.monotonic()
            held = hold(now)
            if held <= 0:
                return now - t0
            if now >= t0 + WAIT_MAX_S:
                _local.free_until = now + FREE_S
                return now - t0
            _cond.wait(min(held, t0 + WAIT_MAX_S - now))


def lower_priority() -> None:
    """A background pool's initializer: its thread runs `NICE` steps nicer, and so do the OpenMP
    threads its torch operations start (Linux threads take their creator's nice value). Where the
    system refuses, the thread keeps its priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE))
    except (AttributeError, OSError):
        pass
