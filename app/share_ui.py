"""Share runs as files: download the selected runs as one Parquet bundle, import a teammate's
bundle, see the attached team folder. UI only: every check lives in moyu_core.bundle."""
from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

import ui_reads
import ui_state
from ui_errors import log
from moyu_core import share as bundle
from moyu_core.errors import MoyuError


def _bundle_bytes(store, run_ids: list[str]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return bundle.export_runs(store, run_ids, Path(d) / "runs.parquet").read_bytes()


def _download(store, run_ids: list[str]) -> None:
    local = [r for r in run_ids if not getattr(store, "is_team_run", lambda _: False)(r)]
    if len(local) < len(run_ids):
        st.caption(f"{len(run_ids) - len(local)} selected run(s) come from the team folder: they are shared already.")
    if not local:
        return
    name = f"moyu-{local[0][:10]}{f'-and-{len(local) - 1}-more' if len(local) > 1 else ''}.parquet"
    st.download_button(f"Download {len(local)} run(s) as a bundle", data=lambda: _bundle_bytes(store, local),
                       file_name=name, mime="application/vnd.apache.parquet", icon=":material/download:",
                       on_click="ignore", key="share_download",
                       help="One Parquet file: tokens, activations, attention summaries, metrics, method "
                            "parameters, model fingerprint. Import it with `python -m moyu_core import FILE` "
                            "or the uploader below.")


def _upload(store) -> None:
    up = st.file_uploader("Import a bundle (.parquet made by moyu)", type=["parquet"],
                          max_upload_size=bundle.MAX_BUNDLE_MB, key="share_upload",
                          help=f"Checked before anything is written; at most {bundle.MAX_BUNDLE_MB} MB.")
    if up is None:
        return
    done = st.session_state.setdefault("share_imported", {})
    if up.file_id not in done:
        try:
            ids = bundle.import_bytes(getattr(store, "local", store), up.getvalue(), up.name)
            done[up.file_id] = ("ok", ids)
        except MoyuError as e:
            done[up.file_id] = ("error", str(e))
        except Exception:  # noqa: BLE001 - never a traceback in the browser
            log.exception("import failed")
            done[up.file_id] = ("error", f"{up.name}: could not be imported (details in the server log)")
        if done[up.file_id][0] == "ok":
            ui_reads.clear_run_caches()
            st.rerun()  # the run list above shows the new runs
    status, value = done[up.file_id]
    if status == "error":
        st.error(f"Not imported. {value}", icon=":material/error:")
        return
    st.success(f"Imported {len(value)} run(s) from {up.name}.", icon=":material/check_circle:")
    for rid in value:
        st.code(ui_state.share_link({"run": rid}, "explore"), language=None)


def _team(store) -> None:
    team = getattr(store, "team", None)
    if team is None:
        st.caption("Team folder: none attached. Set `MOYU_TEAM_DIR` to a folder of exported bundles "
                   "(local or network path) to list its runs here without copying them.")
        return
    n = sum(1 for r in store.list_runs(limit=100_000) if r.get("source", "").startswith("team:"))
    st.caption(f"Team folder `{team.folder}` (read-only): {n} run(s) listed beside the local ones.")
    if team.skipped:
        with st.expander(f"{len(team.skipped)} file(s) in the team folder were skipped"):
            for name, why in sorted(team.skipped.items()):
                st.text(why)


def render_share(store, selected_run_ids: list[str]) -> None:
    """Download the selected runs as a bundle; import a bundle; show the team folder."""
    st.subheader("Share as a file")
    c1, c2 = st.columns(2)
    with c1:
        if selected_run_ids:
            try:
                _download(store, list(selected_run_ids))
            except MoyuError as e:
                st.error(str(e), icon=":material/error:")
        else:
            st.caption("Select runs above to download them as one bundle.")
    with c2:
        _upload(store)
    _team(store)
