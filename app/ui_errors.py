"""The guard every page body runs under: a friendly message in the browser, the traceback in the
server log."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from moyu_core.errors import MoyuError
import ui_turns

log = logging.getLogger("moyu.app")


_TIMING_LOG = os.environ.get("MOYU_TIMING_LOG")  # benchmarks: one JSON line per timed body


def _log_time(what: str, t0: float) -> None:
    if _TIMING_LOG:
        line = json.dumps({"t": time.time(), "what": what, "ms": round((time.perf_counter() - t0) * 1000, 1)})
        with open(_TIMING_LOG, "a") as f:
            f.write(line + "\n")


def guard(body: Callable[[], None], what: str = "") -> None:
    """Run a page body; MoyuError becomes its one-line message, anything else a generic one (the
    traceback goes to the server log, never to the browser). st.rerun / st.stop / st.switch_page
    pass through. Background work waits while it runs (`ui_turns`). With MOYU_TIMING_LOG set, the
    body's server time is appended there as `what` (benchmarks/app_latency.py reads it)."""
    t0 = time.perf_counter()
    try:
        with ui_turns.page_run():   # background jobs wait while it runs and the browser draws
            body()
    except ScriptControlException:
        raise
    except MoyuError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:  # noqa: BLE001
        log.exception("page failed")
        st.error(f"Something went wrong ({type(e).__name__}). The details are in the server log; "
                 "try again or pick another run.", icon=":material/error:")
    finally:
        if what:
            _log_time(what, t0)
