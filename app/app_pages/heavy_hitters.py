"""Heavy hitters: which tokens collect the attention (H2O score), the sink, massive activations."""
from __future__ import annotations

import html

import numpy as np
import streamlit as st

import moyu_charts as charts
import ui_errors
import ui_jobs
import ui_reads
import ui_state
import ui_text
from moyu_core import analysis


def _fit_columns(a: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(rows, T) -> at most MAX_CELLS cells; columns pooled when needed; x labels = token starts."""
    max_cols = max(1, charts.MAX_CELLS // a.shape[0])
    if a.shape[1] <= max_cols:
        return a, [str(i) for i in range(a.shape[1])]
    pooled, _, ce = analysis.pool2d(a, a.shape[0], max_cols)
    return pooled, [f"{ce[i]}–{ce[i + 1] - 1}" for i in range(len(ce) - 1)]


def highlighted_text(pieces: list[str], score: np.ndarray, top: list[int]) -> str:
    """The prompt with each token shaded by its score; the top heavy hitters boxed and ranked."""
    s = np.sqrt(np.maximum(score, 0) / max(float(score.max()), 1e-12))
    rank = {p: r + 1 for r, p in enumerate(top)}
    out = []
    for i, (p, v) in enumerate(zip(pieces, s)):
        text = html.escape(p).replace("\n", "⏎<br>").replace("  ", "&nbsp; ")
        style = f"background: rgba(231,111,81,{0.08 + 0.8 * v:.2f}); border-radius: 3px; padding: 1px 0;"
        title = f"token {i}: score {score[i]:.3f}"
        if i in rank:
            style += " outline: 2px solid #264653; font-weight: 600;"
            text += f"<sup style='color:#264653'>#{rank[i]}</sup>"
        out.append(f"<span title='{html.escape(title)}' style='{style}'>{text}</span>")
    return ("<div style='line-height: 2.1; font-family: ui-monospace, monospace; font-size: 0.9rem; "
            "max-height: 320px; overflow-y: auto'>" + "".join(out) + "</div>")


def main() -> None:
    st.title("Heavy hitters")
    rid = ui_state.current_run()
    if not rid:
        ui_state.run_picker_hint()
        return
    rec = ui_reads.run_record(rid)
    if rec is None:
        return
    ui_text.run_header(rec)
    attn, norm = ui_reads.token_stats(rid)  # (L, H, T), (L, T)
    pieces = [p for _, p in ui_reads.tokens(rid)]
    L, H, T = attn.shape
    if rec.mode == "parallel":
        st.info("Parallel run: each token was alone after the prefix, so its score is the attention "
                "it gives its own key, not attention from other tokens.", icon=":material/info:")

    c1, c2, c3, c4 = st.columns([3, 1.2, 1.5, 1.5], vertical_alignment="bottom")
    k_layers = ui_state.url_state("layers", (0, L - 1), lambda s: tuple(int(v) for v in s.split("-")),
                            lambda v: len(v) == 2 and 0 <= v[0] <= v[1] < L)
    c1.slider("Layers summed", 0, L - 1, key=k_layers)
    lo, hi = ui_state.sync_url("layers", lambda v: f"{v[0]}-{v[1]}")
    k_k = ui_state.url_state("k", 5, int, lambda v: 1 <= v <= 50)
    c2.number_input("Top k", 1, 50, key=k_k)
    k = ui_state.sync_url("k")
    k_pq = ui_state.url_state("per_query", False, lambda s: s == "True", lambda v: isinstance(v, bool))
    c3.toggle("Per reader", key=k_pq, help="divide by the number of queries that can see the token "
                                              "(T - t under causal attention)")
    per_query = ui_state.sync_url("per_query")
    k_sf = ui_state.url_state("skip_first", False, lambda s: s == "True", lambda v: isinstance(v, bool))
    c4.toggle("Skip token 0", key=k_sf, help="leave out the first token (the attention sink)")
    skip_first = ui_state.sync_url("skip_first")

    score = analysis.accumulated_attention(attn, layers=range(lo, hi + 1), per_query=per_query)  # (T,)
    top = analysis.heavy_hitters(score, int(k), skip_first=skip_first)
    sink = analysis.sink_share(attn)  # (L,)

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Top heavy hitter", f"#{top[0]} {pieces[top[0]].strip()[:16] or repr(pieces[top[0]])}" if top else "–")
    m2.metric("Share of score in top k", f"{score[top].sum() / max(score.sum(), 1e-12):.1%}")
    m3.metric("Attention sink (token 0)", f"{sink.mean():.1%}",
              help="share of all attention (mean over layers) that lands on the first token")
    massive = analysis.massive_activations(norm)
    m4.metric("Tokens with massive activations", str(len(massive)),
              help="residual-stream norm above 5x the median token's, at its largest over layers")

    st.markdown("**Prompt, shaded by accumulated attention** (boxed: top heavy hitters)")
    st.markdown(highlighted_text(pieces, score, top), unsafe_allow_html=True)

    labels = ui_text.token_labels(pieces)
    fig = charts.bars(score, labels, f"Accumulated attention received, layers {lo}–{hi} (log scale)",
                      highlight=top, y_title="score")
    fig.update_yaxes(type="log")
    st.plotly_chart(fig, width="stretch")

    per_layer = attn.sum(axis=1)  # (L, T)
    vals, xs = _fit_columns(per_layer)
    left, right = st.columns(2)
    left.plotly_chart(charts.matrix_heatmap(
        np.log1p(vals), xs, list(range(L)), "Attention received per layer (log(1+x), all heads)",
        "token", "layer", hover_value="log(1+score) %{z:.3f}"), width="stretch")
    k_hl = ui_state.url_state("head_layer", min(L - 1, 2), int, lambda v: 0 <= v < L)
    with right:
        st.slider("Layer for the per-head view", 0, L - 1, key=k_hl)
        hl = ui_state.sync_url("head_layer")
        hv, hx = _fit_columns(attn[hl])
        st.plotly_chart(charts.matrix_heatmap(
            np.log1p(hv), hx, list(range(H)), f"Layer {hl}: attention received per head (log(1+x))",
            "token", "head", height=260, hover_value="log(1+score) %{z:.3f}"), width="stretch")

    left, right = st.columns(2)
    nv, nx = _fit_columns(norm)
    left.plotly_chart(charts.matrix_heatmap(
        np.log10(np.maximum(nv, 1e-6)), nx, list(range(L)),
        "Residual norm, log10 (massive activations)", "token", "layer",
        colors="Cividis", hover_value="log10 norm %{z:.2f}"), width="stretch")
    right.plotly_chart(charts.lines(
        {"share to token 0": sink}, np.arange(L), "Attention sink: share of attention on token 0",
        "layer", "share"), width="stretch")
    if massive:
        st.caption("Massive activations at tokens: " + ", ".join(f"{i} ({pieces[i]!r})" for i in massive[:20]))
    ui_jobs.prefetch_methods(rec)


ui_errors.guard(main)
