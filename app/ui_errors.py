"""The guard every page body runs under: a friendly message in the browser, the traceback in the
server log."""
from __future__ import annotations

import logging
from typing import Callable

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from moyu_core.errors import MoyuError

log = logging.getLogger("moyu.app")


def guard(body: Callable[[], None]) -> None:
    """Run a page body; MoyuError becomes its one-line message, anything else a generic one (the
    traceback goes to the server log, never to the browser). st.rerun / st.stop / st.switch_page
    pass through."""
    try:
        body()
    except ScriptControlException:
        raise
    except MoyuError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:  # noqa: BLE001
        log.exception("page failed")
        st.error(f"Something went wrong ({type(e).__name__}). The details are in the server log; "
                 "try again or pick another run.", icon=":material/error:")
