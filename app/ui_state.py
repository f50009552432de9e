"""Per-session state mirrored in the URL, so that a link shows a teammate the same view: the run,
and each widget registered with `url_state`."""
from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException

PAGE_PATHS = ("explore", "heavy_hitters", "neurons", "methods", "compare", "runs", "experiments")


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


def notice(name: str, text: str, value: Any = None) -> None:
    """A message, shown in plain view beside the `name` control on this page until the user
    changes that control (or leaves the page), that something asked for was not shown as asked."""
    st.session_state.setdefault("url_notices", {})[name] = (text, value)


def _show_notice(name: str, value: Any) -> None:
    """The notice about `name`, while its control still shows the value it was reset to."""
    notices = st.session_state.get("url_notices", {})
    got = notices.get(name)
    if got and got[1] != value:   # the user changed the control: the notice is old news
        notices.pop(name, None)
    elif got:
        st.warning(got[0], icon=":material/link_off:")


def url_state(name: str, default: Any, cast: Callable[[str], Any] = str,
              valid: Callable[[Any], bool] | None = None, allowed: str = "") -> str:
    """Session key for a widget whose value is mirrored in `?name=`: initialised from the URL,
    then the session's last value, then `default`. Call `sync_url(name)` after the widget. A
    URL value that cannot be used is reset with a notice naming it, what is allowed (`allowed`,
    e.g. "0–29") and what is shown instead."""
    key = f"url_{name}"
    if key not in st.session_state:
        prefs = st.session_state.setdefault("prefs", {})
        value = prefs.get(name, default)
        raw = st.query_params.get(name)
        bad = False
        if raw is not None:
            try:
                value = cast(raw)
            except (TypeError, ValueError):
                value, bad = prefs.get(name, default), True
        if valid is not None and not valid(value):
            value, bad = default, raw is not None
        if bad:
            notice(name, f"The link's `{name}={str(raw)[:40]}` cannot be shown here"
                         f"{f' (allowed: {allowed})' if allowed else ''}; reset to {_shown(value)}.", value)
        st.session_state[key] = value
    elif valid is not None and not valid(st.session_state[key]):
        # e.g. another run with fewer layers, or another page's "nothing chosen": the link's value
        # where it fits, else quietly the default
        st.session_state[key] = _from_url(name, cast, valid, default)
    elif key not in st.session_state.setdefault("bound_url_keys", set()):
        # the first widget of this page to take the key (a page may draw it only on a later run,
        # e.g. Neurons once an atlas is chosen): the value goes through the API, which that
        # widget takes, where a widget new to the key would otherwise start from its default
        st.session_state[key] = st.session_state[key]
    st.session_state["bound_url_keys"].add(key)
    _show_notice(name, st.session_state[key])
    return key


def _from_url(name: str, cast: Callable[[str], Any], valid: Callable[[Any], bool], default: Any) -> Any:
    raw = st.query_params.get(name)
    try:
        value = cast(raw) if raw is not None else default
    except (TypeError, ValueError):
        return default
    return value if valid(value) else default


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def entering(page: str) -> None:
    """Called before each run of `page`. A widget's id includes its page, so the widget that takes
    over a URL-backed key from another page's (Explore's layer on Methods) would start from its
    default: on a page change every such key is set again through the API, which that widget
    takes. Only on a change: a value set through the API is sent to the browser, and would undo
    what the user did while the run was under way."""
    if st.session_state.get("page") == page:
        return
    st.session_state["page"] = page
    st.session_state.pop("url_notices", None)
    st.session_state["bound_url_keys"] = set()
    hold_url_values()


def hold_url_values() -> None:
    """Before an `st.rerun()` from inside a fragment: every URL-backed key is set again through
    the API. A rerun from a fragment ends a run in which the page's other widgets did not
    register, and Streamlit may then drop their values as stale (streamlit#11266, #10805; seen
    as an empty Methods box); a value set through the API is kept, and the widget takes it."""
    for key in [k for k in st.session_state if str(k).startswith("url_")]:
        try:
            st.session_state[key] = st.session_state[key]
        except StreamlitAPIException:   # its widget is drawn in this very run: its value is current
            pass


def sync_url(name: str, to_str: Callable[[Any], str] = str) -> Any:
    value = st.session_state[f"url_{name}"]
    st.session_state.setdefault("prefs", {})[name] = value
    if value is None:   # nothing chosen: no parameter
        st.query_params.pop(name, None)
    else:
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
