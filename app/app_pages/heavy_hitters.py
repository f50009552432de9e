"""Heavy hitters: which tokens collect the attention (H2O score), the sink, massive activations."""
from __future__ import annotations

import numpy as np
import streamlit as st

import moyu_charts as charts
import ui_errors
import ui_jobs
import ui_reads
import ui_state
import ui_text
from moyu_core import analysis
from moyu_core.tokens_display import per_token


def _fit_columns(a: np.ndarray, labels: list[str], texts: list[str], first: int = 0) -> tuple[np.ndarray, list[str]]:
    """(rows, T) from token `first` on -> at most MAX_CELLS cells, columns pooled when needed; x
    labels name the token (with its text) or the pooled range (with the range's text)."""
    a = a[:, first:]
    max_cols = max(1, charts.MAX_CELLS // a.shape[0])
    if a.shape[1] <= max_cols:
        return a, labels[first:]
    pooled, _, ce = analysis.pool2d(a, a.shape[0], max_cols)
    ce = ce + first
    out = []
    for i in range(len(ce) - 1):
        words = "".join(texts[ce[i]:ce[i + 1]]).replace("\n", "⏎")
        out.append(f"{ce[i]}–{ce[i + 1] - 1} «{words[:20]}»")
    return pooled, out


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
    spans = ui_reads.spans(rid, rec.model)
    labels = ui_text.token_labels(ui_reads.pieces(rid, rec.model))
    whole = [t for t, _, _ in per_token(spans)]           # each token's text (a cut character whole)
    texts = [t if k == 1 else "" for t, k, _ in per_token(spans)]  # the text once per span
    L, H, T = attn.shape
    if rec.mode == "parallel":
        st.info("Parallel run: each token was alone after the prefix, so its score is the attention "
                "it gives its own key, not attention from other tokens.", icon=":material/info:")

    c1, c2, c3, c4 = st.columns([3, 1.2, 1.5, 1.5], vertical_alignment="bottom")
    k_layers = ui_state.url_state("layers", (0, L - 1), lambda s: tuple(int(v) for v in s.split("-")),
                                  lambda v: len(v) == 2 and 0 <= v[0] <= v[1] < L, allowed=f"A-B within 0–{L - 1}")
    c1.slider("Layers summed", 0, L - 1, key=k_layers)
    lo, hi = ui_state.sync_url("layers", lambda v: f"{v[0]}-{v[1]}")
    k_k = ui_state.url_state("k", 5, int, lambda v: 1 <= v <= 50, allowed="1–50")
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

    first = 1 if skip_first and T > 1 else 0
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Top heavy hitter", f"#{top[0]} {whole[top[0]].strip()[:16] or repr(whole[top[0]])}" if top else "–")
    m2.metric("Share of score in top k", f"{score[top].sum() / max(score[first:].sum(), 1e-12):.1%}",
              help="of the score of every token shown" + (" (token 0 left out)" if first else ""))
    m3.metric("Attention sink (token 0)", f"{sink.mean():.1%}",
              help="share of all attention (mean over layers) that lands on the first token")
    massive = analysis.massive_activations(norm)
    m4.metric("Tokens with massive activations", str(len(massive)),
              help="residual-stream norm above 5x the median token's, at its largest over layers")

    st.markdown("**Prompt, shaded by accumulated attention** (boxed: top heavy hitters"
                + ("; token 0 left out" if first else "") + ")")
    titles = [f"token {i}: score {v:.3f}" for i, v in enumerate(score)]
    st.html(ui_text.shaded_tokens(spans, score, titles, top, skip={0} if first else None))

    st.plotly_chart(charts.token_scores(
        score[first:], labels[first:], f"Accumulated attention received, layers {lo}–{hi} (log scale; "
        "ringed: the top k)" + (", token 0 left out" if first else ""), [i - first for i in top], log=True),
        width="stretch")

    per_layer = attn.sum(axis=1)  # (L, T)
    vals, xs = _fit_columns(per_layer, labels, texts, first)
    left, right = st.columns(2)
    left.plotly_chart(charts.matrix_heatmap(
        np.log1p(vals), xs, list(range(L)), "Attention received per layer (log(1+x), all heads)",
        "token", "layer", hover_value="log(1+score) %{z:.3f}"), width="stretch")
    right.plotly_chart(charts.lines(
        {"share to token 0": sink}, np.arange(L), "Attention sink: share of attention on token 0",
        "layer", "share"), width="stretch")
    if massive:
        st.caption("Massive activations at tokens: " + ", ".join(f"{i} ({whole[i]!r})" for i in massive[:20]))
    details(attn, norm, labels, texts, first)
    ui_jobs.prefetch_methods(rec)


def details(attn: np.ndarray, norm: np.ndarray, labels: list[str], texts: list[str], first: int) -> None:
    """Attention per head and the residual norms, drawn only while their box is open (a tracked
    expander reruns the page when toggled): two more token-wide heatmaps on every visit made the
    page slower to draw than a click should be."""
    L, H, _ = attn.shape
    box = st.expander("Per head, and residual norms (massive activations)", key="hh_details",
                      expanded="head_layer" in st.query_params, on_change="rerun")
    with box:
        if not box.open:
            return
        left, right = st.columns(2)
        k_hl = ui_state.url_state("head_layer", min(L - 1, 2), int, lambda v: 0 <= v < L, allowed=f"0–{L - 1}")
        with left:
            st.slider("Layer for the per-head view", 0, L - 1, key=k_hl)
            hl = ui_state.sync_url("head_layer")
            hv, hx = _fit_columns(attn[hl], labels, texts, first)
            st.plotly_chart(charts.matrix_heatmap(
                np.log1p(hv), hx, list(range(H)), f"Layer {hl}: attention received per head (log(1+x))",
                "token", "head", height=260, hover_value="log(1+score) %{z:.3f}"), width="stretch")
        nv, nx = _fit_columns(norm, labels, texts, first)
        right.plotly_chart(charts.matrix_heatmap(
            np.log10(np.maximum(nv, 1e-6)), nx, list(range(L)),
            "Residual norm, log10 (massive activations)", "token", "layer",
            colors="Cividis", hover_value="log10 norm %{z:.2f}"), width="stretch")


ui_errors.guard(main, what="heavy_hitters")
