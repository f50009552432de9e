"""Runs: the cached runs of this server's database; filter, open, delete, share."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import share_ui
import ui_errors
import ui_reads
import ui_state
import ui_store
import ui_text


def _label(r: dict) -> str:
    text = " ".join(r["text"].split())
    return f"{r['run_id'][:10]} · {r['n_tokens']} tok · {r['mode']} · {text[:60]}"


def main() -> None:
    st.title("Runs")
    store = ui_store.store()
    st.caption(f"Database: `{ui_store.db_path()}`")
    everything = store.list_runs(limit=5000)
    c1, c2, c3 = st.columns([1.2, 1.2, 3])
    models = ["all"] + sorted({r["model"] for r in everything})
    methods = ["all"] + sorted({r["method"] for r in everything})
    k_model = ui_state.url_state("rmodel", "all", str, lambda v: v in models)
    model = c1.selectbox("Model", models, key=k_model)
    ui_state.sync_url("rmodel")
    k_method = ui_state.url_state("rmethod", "all", str, lambda v: v in methods)
    method = c2.selectbox("Method", methods, key=k_method)
    ui_state.sync_url("rmethod")
    k_text = ui_state.url_state("rtext", "", str, lambda v: isinstance(v, str) and len(v) <= 200)
    text = c3.text_input("Text contains", placeholder="filter by a word of the prompt", key=k_text)
    ui_state.sync_url("rtext")
    runs = store.list_runs(model=None if model == "all" else model, method=None if method == "all" else method,
                           text=text or None, limit=1000)
    if not runs:
        st.info("No runs match. Capture one on **Explore**." if not everything else "No runs match the filter.",
                icon=":material/info:")
    else:
        df = pd.DataFrame(runs)
        df["context"] = [ui_text.context_label(r["mode"], r["prefix"]) for r in runs]
        df = df[["run_id", "created_at", "model", "mode", "context", "method", "n_tokens", "dtype", "text"]]
        df["text"] = df["text"].map(lambda t: " ".join(t.split())[:120])
        st.dataframe(df, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(df)),
                     column_config={"n_tokens": st.column_config.NumberColumn("tokens"),
                                    "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm")})

    by_id = {r["run_id"]: r for r in runs}
    current = st.session_state.get("run_id")
    selected = st.multiselect("Selected runs", list(by_id), format_func=lambda i: _label(by_id[i]),
                              default=[current] if current in by_id else [], key="runs_selected")
    if selected:
        b1, b2, _ = st.columns([1, 1, 3])
        if b1.button("Open in Explore", type="primary", icon=":material/open_in_new:", key="runs_open"):
            ui_state.set_run(selected[0])
            st.switch_page("app_pages/explore.py", query_params={"run": selected[0]})
        confirm = b2.checkbox(f"Confirm delete of {len(selected)} run(s)", key="runs_confirm")
        if b2.button("Delete", icon=":material/delete:", disabled=not confirm, key="runs_delete"):
            for rid in selected:
                store.delete_run(rid)
                if st.session_state.get("run_id") == rid:
                    st.session_state.pop("run_id", None)
            ui_reads.clear_run_caches()
            st.session_state.pop("runs_selected", None)
            st.toast(f"Deleted {len(selected)} run(s)")
            st.rerun()
        st.markdown("**Share link** (a teammate on this server sees the same run)")
        for rid in selected:
            st.code(ui_state.share_link({"run": rid}, "explore"), language=None)

    st.divider()
    share_ui.render_share(store, selected)


ui_errors.guard(main)
