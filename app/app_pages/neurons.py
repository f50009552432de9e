"""Neurons: one neuron's dashboard from a neuron atlas (its top contexts in a corpus, histogram,
vocabulary effect, how often each method keeps it, inertia), a search over the atlas, and the
neurons whose activity differs most between two stored runs.

Reached from Explore (a heatmap cell's "Open neuron ... in Neurons" link: ?layer=&neuron=) or by
typing the id. Every string from the corpus is HTML-escaped before it is drawn."""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import moyu_charts as charts
import ui_errors
import ui_reads
import ui_state
import ui_store
import ui_text
from moyu_core import models
from moyu_core.atlas.diff import BY, neuron_differences
from moyu_core.atlas.query import open_atlas
from moyu_core.errors import MoyuError

TOP_N = 20


def default_folder(model: str) -> str:
    return str(Path(models.CACHE_DIR) / "atlas" / model)


def build_hint(folder: str, model: str) -> None:
    st.info("No neuron atlas in this folder yet. Build one from the command line (a few minutes for "
            "the built-in pydoc text on 2 cores; `--max-tokens` makes it shorter):", icon=":material/info:")
    st.code(f"python -m moyu_core atlas build --corpus pydoc --model {model} --out {folder}", language="bash")


def choose_atlas(model: str):
    """The atlas the page shows: a local folder chosen here (default cache/atlas/<model>); None
    (with a message saying what to do) when there is none, or it is still being built and the
    user has not asked to see the part that is done."""
    folder = st.text_input("Atlas folder", value=default_folder(model), key="atlas_folder",
                           help="A folder written by `python -m moyu_core atlas build` (on this server; "
                                "s3:// and http(s):// atlases are read by the command line)")
    if "://" in folder:
        st.warning("The app reads atlases on this server's disk; use `python -m moyu_core atlas neuron` "
                   "for an s3:// or http(s):// location.", icon=":material/cloud_off:")
        return None
    if not (Path(folder).expanduser() / "manifest.json").is_file():
        build_hint(folder, model)
        return None
    atlas = open_atlas(folder, allow_partial=True)
    if not atlas.complete:
        p = atlas.progress()
        st.warning(f"This atlas is incomplete: {p['chunks_done']} of {p['chunks']} chunks "
                   f"({p['tokens_done']:,} of {p['tokens']:,} tokens) are built. Resume it with the same "
                   "`atlas build` command.", icon=":material/hourglass_top:")
        if not st.toggle("Show the part that is done", key="atlas_partial"):
            return None
    s = atlas.summary()
    st.caption(f"{ui_text.md_escape(s['model'])} · {s['tokens']:,} tokens of "
               f"{ui_text.md_escape(Path(str(s['settings']['corpus'])).name)} · {s['documents']:,} documents · "
               f"top {s['settings']['top_k']} contexts per neuron"
               + (f" · skipped: {', '.join(s['skipped_methods'])}" if s["skipped_methods"] else ""))
    return atlas


def neuron_data(atlas, layer: int, neuron: int) -> dict:
    key = (atlas.location, atlas.manifest.get("updated"), layer, neuron)
    return ui_reads.NEURONS.get_or_put(key, lambda: atlas.neuron(layer, neuron))


def _esc(text: str) -> str:
    return html.escape(text.replace("\n", "⏎"), quote=True)


def contexts_html(top: list[dict]) -> str:
    """Each top context as one line: value, then the text with the token highlighted (the shade
    follows the value relative to the largest); everything escaped."""
    vmax = max((abs(t["value"]) for t in top), default=1.0) or 1.0
    rows = []
    for t in top:
        alpha = 0.15 + 0.75 * min(1.0, max(0.0, t["value"] / vmax))
        rows.append(
            f'<div style="font-family: monospace; white-space: pre-wrap; margin: 2px 0">'
            f'<span style="display:inline-block; width: 6em; color: #666">{t["value"]:.3f}</span>'
            f'{_esc(t["before"])}<mark title="document {t["doc"]}, position {t["pos"]}" '
            f'style="background: rgba(231, 111, 81, {alpha:.2f}); padding: 0 1px; border-radius: 2px">'
            f'{_esc(t["token"]) or "∅"}</mark>{_esc(t["after"])}</div>')
    return "".join(rows)


def _bin_labels(edges: list[float]) -> list[str]:
    lo = [-math.inf] + edges
    hi = edges + [math.inf]
    return [f"{a:.3g} … {b:.3g}" for a, b in zip(lo, hi)]


def dashboard(atlas, layer: int, neuron: int) -> None:
    d = neuron_data(atlas, layer, neuron)
    st.subheader(f"Layer {layer}, neuron {neuron}")
    c = st.columns(5)
    c[0].metric("Activation frequency", ui_text.pct(d["frequency"]),
                help="share of the corpus' tokens (position 0 of each piece left out) with this neuron in "
                     "its layer's top 10% by |z|; 10% on average")
    c[1].metric("Inertia", ui_text.pct(d["inertia"]),
                help=f"probability that it is still in the top 10% at the next token ({d['inertia_pairs']:,} "
                     "token pairs); its frequency is what chance would give")
    c[2].metric("Mean |z|", f"{d['mean_abs']:.4f}" if d["tokens"] else "–")
    c[3].metric("Max |z|", f"{d['max_abs']:.4f}" if d["tokens"] else "–")
    c[4].metric("Tokens", f"{d['tokens']:,}")
    left, right = st.columns([3, 2])
    with left:
        st.markdown(f"**Top {len(d['top'])} contexts** (largest z first)")
        st.markdown(contexts_html(d["top"]) or "–", unsafe_allow_html=True)
    with right:
        counts = np.array(d["histogram"]["counts"], float)
        if counts.size:
            nz = np.nonzero(counts)[0]
            lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, len(counts))
            labels = _bin_labels(d["histogram"]["edges"])[lo:hi]
            st.plotly_chart(charts.bars(counts[lo:hi], labels, "Histogram of z (quarter-decade bins)",
                                        y_title="tokens"), width="stretch", key="atlas_hist")
        kept = d["methods"]
        if kept:
            names = list(kept)
            st.plotly_chart(charts.bars(np.array([kept[n] for n in names], float), names,
                                        "How often each method keeps it (keep 0.5)",
                                        highlight=[names.index("oracle")] if "oracle" in names else None,
                                        y_title="share of tokens"), width="stretch", key="atlas_methods")
            every = atlas.manifest["settings"].get("method_every", 1)
            st.caption(f"Counted on {d['methods_tokens']:,} tokens"
                       + (f": one piece of 512 tokens in every {every} (`--method-every`)" if every > 1 else ""))
    st.markdown("**Vocabulary effect** (its W_down column through the final norm and the unembedding)")
    v1, v2 = st.columns(2)
    for col, kind, title in ((v1, "promoted", "Promotes"), (v2, "suppressed", "Suppresses")):
        rows = d[kind]
        col.dataframe(pd.DataFrame({title: [repr(r["token"]) for r in rows],
                                    "logit effect": [round(r["value"], 3) for r in rows]}),
                      hide_index=True, width="stretch")


def _open(layer: int, neuron: int) -> None:
    st.session_state["url_layer"] = int(layer)
    st.session_state["url_neuron"] = int(neuron)


def _open_choice(key: str) -> None:
    choice = st.session_state.get(key)
    if choice:
        layer, neuron = (int(x) for x in choice.split(":"))
        _open(layer, neuron)


def opener(rows: list[dict], key: str) -> None:
    """A picker that opens one of `rows` (layer, neuron) in the dashboard above."""
    options = [""] + [f"{r['layer']}:{r['neuron']}" for r in rows]
    st.selectbox("Open in the dashboard", options, key=key, on_change=_open_choice, args=(key,),
                 format_func=lambda o: "…" if not o else "layer {} neuron {}".format(*o.split(":")))


def search(atlas) -> None:
    with st.expander("Find neurons", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        token = c1.text_input("Top-context token", key="atlas_q_token", help="e.g. ' the' or 'def' (trimmed, any case)")
        promotes = c2.text_input("Promotes token", key="atlas_q_promotes")
        fmin = c3.number_input("Min frequency", 0.0, 1.0, 0.0, 0.01, key="atlas_q_fmin")
        method = c4.selectbox("Departs most from the oracle", [""] + [m for m in atlas.manifest["methods"]
                                                                      if m != "oracle"], key="atlas_q_method")
        if not st.button("Search", key="atlas_search", icon=":material/search:"):
            rows = st.session_state.get("atlas_results")
        else:
            rows = atlas.search(token=token or None, promotes=promotes or None,
                                min_frequency=fmin or None, method=method or None, limit=50)
            st.session_state["atlas_results"] = rows
        if rows is None:
            return
        if not rows:
            st.info("No neuron matches.", icon=":material/search_off:")
            return
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=240)
        opener(rows, "atlas_open_result")


def run_label(r: dict) -> str:
    text = str(r.get("text") or "").replace("\n", " ")
    return f"{r['run_id'][:10]} · {r['model']} · {r['n_tokens']} tok · {text[:50]}"


def diff_runs() -> None:
    with st.expander("Diff two runs", expanded=False):
        runs = ui_store.store().list_runs(limit=200)
        if len(runs) < 2:
            st.info("Capture at least two prompts on Explore to compare their neurons.", icon=":material/info:")
            return
        labels = {r["run_id"]: run_label(r) for r in runs}
        ids = list(labels)
        c1, c2, c3, c4 = st.columns([3, 3, 2, 1.5])
        a = c1.selectbox("Run A", ids, format_func=labels.get, key="diff_a")
        b = c2.selectbox("Run B", ids, index=1, format_func=labels.get, key="diff_b")
        by = c3.radio("Figure", BY, horizontal=True, key="diff_by",
                      format_func={"mean_abs": "mean |z|", "frequency": "top-10% frequency"}.get)
        ra, rb = ui_reads.run_record(a), ui_reads.run_record(b)
        if ra is None or rb is None:
            return
        if (ra.n_layers, ra.d_ff) != (rb.n_layers, rb.d_ff):
            st.warning("The two runs come from models of different shapes; pick runs of one model.",
                       icon=":material/compare_arrows:")
            return
        layer = c4.selectbox("Layer", ["all"] + list(range(ra.n_layers)), key="diff_layer")
        layers = list(range(ra.n_layers)) if layer == "all" else [int(layer)]
        rows = neuron_differences(lambda i: ui_reads.layer(a, i), lambda i: ui_reads.layer(b, i), layers,
                                  by=by, top=TOP_N)
        st.caption(f"The {TOP_N} neurons whose {'mean |z|' if by == 'mean_abs' else 'top-10% frequency'} "
                   "differs most between the two runs (token 0 of each left out).")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=260)
        opener(rows, "diff_open")


def main() -> None:
    st.title("Neurons")
    rid = ui_state.current_run()
    rec = ui_store.store().run(rid) if rid and ui_store.store().has_run(rid) else None
    model = rec.model if rec is not None else models.DEFAULT_MODEL
    atlas = choose_atlas(model)
    if atlas is not None:
        L, D = atlas.n_layers, atlas.d_ff
        c1, c2, _ = st.columns([1, 1, 3])
        k_layer = ui_state.url_state("layer", L // 2, int, lambda v: isinstance(v, int) and 0 <= v < L,
                                     allowed=f"0–{L - 1}")
        c1.number_input("Layer", 0, L - 1, step=1, key=k_layer)
        layer = ui_state.sync_url("layer")
        k_neuron = ui_state.url_state("neuron", 0, int, lambda v: isinstance(v, int) and 0 <= v < D,
                                      allowed=f"0–{D - 1}")
        c2.number_input("Neuron", 0, D - 1, step=1, key=k_neuron)
        neuron = ui_state.sync_url("neuron")
        search(atlas)
        try:
            dashboard(atlas, int(layer), int(neuron))
        except MoyuError as e:
            st.error(str(e), icon=":material/error:")
    diff_runs()


ui_errors.guard(main, "neurons")
