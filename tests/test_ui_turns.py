"""Background work waits for page runs (app/ui_turns.py): while a body runs, for a quiet time
after, never past its bounds, and never on the page's own thread."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import ui_turns


@pytest.fixture
def turns(monkeypatch):
    monkeypatch.setattr(ui_turns, "QUIET_S", 0.3)
    monkeypatch.setattr(ui_turns, "BUSY_MAX_S", 1.0)
    monkeypatch.setattr(ui_turns, "WAIT_MAX_S", 2.0)
    monkeypatch.setattr(ui_turns, "_last_end", float("-inf"))
    return ui_turns


def in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()))
    t.start()
    return t, out


def running_body(turns):
    """A page body running on its own thread until the returned event is set: (thread, event)."""
    started, release = threading.Event(), threading.Event()

    def body():
        with turns.page_run():
            started.set()
            release.wait()

    page, _ = in_thread(body)
    started.wait()
    return page, release


def test_no_page_run_no_wait(turns):
    assert turns.background_turn() < 0.05


def test_waits_for_the_body_and_the_quiet_time_after(turns):
    page, release = running_body(turns)
    t0 = time.monotonic()
    worker, waited = in_thread(turns.background_turn)
    time.sleep(0.4)
    assert worker.is_alive()                     # the body still runs: the worker waits
    release.set()
    page.join()
    ended = time.monotonic()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - ended >= 0.3 - 0.05     # and the quiet time after it
    assert 0.65 <= waited["v"] <= time.monotonic() - t0 + 0.05


def test_a_long_body_lets_the_background_go_on(turns):
    page, release = running_body(turns)
    waited = turns.background_turn()             # held until the body has run BUSY_MAX_S
    assert 0.8 <= waited <= 1.3
    assert turns.background_turn() < 0.05        # then not held at all
    release.set()
    page.join()


def test_bounded_wait_then_free_running_and_no_wait_on_the_page_thread(turns, monkeypatch):
    monkeypatch.setattr(turns, "BUSY_MAX_S", 10.0)
    monkeypatch.setattr(turns, "WAIT_MAX_S", 0.5)
    monkeypatch.setattr(turns, "FREE_S", 0.6)
    with turns.page_run():
        assert turns.background_turn() < 0.05    # the page's own thread never waits for itself

        def worker():
            first = turns.background_turn()       # starved: waits WAIT_MAX_S
            second = turns.background_turn()      # then runs free
            time.sleep(0.7)
            return first, second, turns.background_turn()   # FREE_S over: waits again

        t, out = in_thread(worker)
        t.join(timeout=5)
    first, second, third = out["v"]
    assert 0.45 <= first <= 1.0 and second < 0.05 and 0.45 <= third <= 1.0


@pytest.mark.skipif(not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"),
                    reason="thread priorities are read from Linux's /proc")
def test_background_pool_threads_and_their_torch_threads_run_nicer():
    """A pool started with `lower_priority` runs NICE steps nicer, and so do the OpenMP threads its
    torch operations start; the page's own threads keep their priority."""
    import torch

    def nice(tid: int) -> int:
        return int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])

    def work():
        a = torch.randn(512, 512)
        for _ in range(3):
            a = a @ a / 512
        return threading.get_native_id()

    mine = nice(threading.get_native_id())
    before = set(os.listdir("/proc/self/task"))
    with ThreadPoolExecutor(max_workers=1, initializer=ui_turns.lower_priority) as pool:
        worker = pool.submit(work).result()
        started = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
        assert worker in started and len(started) >= min(2, torch.get_num_threads())   # and its OpenMP team
        want = min(19, mine + ui_turns.NICE)
        assert all(nice(t) == want for t in started), {t: nice(t) for t in started}
    assert nice(threading.get_native_id()) == mine
