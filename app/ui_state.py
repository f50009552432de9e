"""Per-session state mirrored in the URL, so that a link shows a teammate the same view: the run,
and each widget registered with `url_state`."""
from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlencode

import streamlit as st

PAGE_PATHS = ("explore", "heavy_hitters", "methods", "compare", "runs", "experiments")


def current_run() -> str | None:
    """The run this session looks at: `?run=` wins (a shared link), then the session's last."""
    rid = st.query_params.get("run")
    if rid:
        st.session_state["run_id"] = rid
    else:
        rid = st.session_state.get("run_id")
        if rid:
            st.query_params["run"] = rid
    return rid


def set_run(run_id: str) -> None:
    st.session_state["run_id"] = run_id
    st.query_params["run"] = run_id


def url_state(name: str, default: Any, cast: Callable[[str], Any] = str,
              valid: Callable[[Any], bool] | None = None) -> str:
    """Session key for a widget whose value is mirrored in `?name=`: initialised from the URL,
    then the session's last value, then `default`. Call `sync_url(name)` after the widget."""
    key = f"url_{name}"
    if key not in st.session_state:
        prefs = st.session_state.setdefault("prefs", {})
        value = prefs.get(name, default)
        raw = st.query_params.get(name)
        if raw is not None:
            try:
                value = cast(raw)
            except (TypeError, ValueError):
                value = prefs.get(name, default)
        if valid is not None and not valid(value):
            value = default
        st.session_state[key] = value
    elif valid is not None and not valid(st.session_state[key]):
        st.session_state[key] = default
    return key


def entering(page: str) -> None:
    """Called before each run of `page`. A widget's id includes its page, so the widget that takes
    over a URL-backed key from another page's (Explore's layer on Methods) would start from its
    default: on a page change every such key is set again through the API, which that widget
    takes. Only on a change: a value set through the API is sent to the browser, and would undo
    what the user did while the run was under way."""
    if st.session_state.get("page") == page:
        return
    st.session_state["page"] = page
    for key in [k for k in st.session_state if str(k).startswith("url_")]:
        st.session_state[key] = st.session_state[key]


def sync_url(name: str, to_str: Callable[[Any], str] = str) -> Any:
    value = st.session_state[f"url_{name}"]
    st.session_state.setdefault("prefs", {})[name] = value
    st.query_params[name] = to_str(value)
    return value


def share_link(params: dict[str, str], page: str = "explore") -> str:
    """Absolute link to a view, for a teammate on the same server (Explore is the app's root)."""
    base = (st.context.url or "").rstrip("/")
    if base.rsplit("/", 1)[-1] in PAGE_PATHS:
        base = base.rsplit("/", 1)[0]
    return f"{base}/{'' if page == 'explore' else page}?{urlencode(params)}"


def run_picker_hint() -> None:
    st.info("No run selected. Capture a prompt on **Explore**, or open one from **Runs**.",
            icon=":material/info:")
    st.page_link("app_pages/explore.py", label="Go to Explore", icon=":material/travel_explore:")
