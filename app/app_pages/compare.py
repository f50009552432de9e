"""Compare: quality against speed-up across methods and keep levels, from stored metrics."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui_errors
import ui_state
import ui_store
from moyu_core import analysis, decode
from moyu_core.models import DEFAULT_MODEL

QUALITY = {"ppl_ratio": "perplexity ratio (lower is better)", "kl": "KL(dense‖method)",
           "top1_agree": "top-1 agreement with dense"}


X_AXES = {"speedup": "measured speed-up", "keep": "keep"}
BETTER = {"ppl_ratio": "lower", "kl": "lower", "top1_agree": "higher"}
TABLE = ["method", "keep", "ppl_ratio", "ppl_ratio_lo", "ppl_ratio_hi", "kl", "top1_agree", "sparsity", "windows",
         "speedup", "speedup_lo", "speedup_hi", "pairs", "timing", "ceiling"]


def _bars(d: pd.DataFrame, col: str) -> dict | None:
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo not in d or d[lo].isna().all():
        return None
    return dict(type="data", symmetric=False, array=(d[hi] - d[col]).clip(lower=0).fillna(0).tolist(),
                arrayminus=(d[col] - d[lo]).clip(lower=0).fillna(0).tolist(), thickness=1, width=3)


def quality_figure(plot: pd.DataFrame, x: str, quality: str) -> go.Figure:
    """Quality against speed-up (or keep), one line per method with 95% intervals over the
    protocol's windows (and the middle half of the speed pairs), the Pareto frontier ringed."""
    fig = go.Figure()
    for method, d in plot.groupby("method", sort=True):
        fig.add_scatter(x=d[x], y=d[quality], mode="lines+markers+text", name=method,
                        text=[f"k={k:.2f}" if pd.notna(k) else "" for k in d["keep"]], textposition="top center",
                        textfont=dict(size=10), error_y=_bars(d, quality),
                        error_x=_bars(d, x) if x == "speedup" else None,
                        customdata=d[["timing"]].fillna("–").to_numpy() if "timing" in d else None,
                        hovertemplate=f"{method} %{{text}}<br>{x} %{{x:.3f}}<br>{quality} %{{y:.4f}}"
                                      + ("<br>%{customdata[0]}" if x == "speedup" else "") + "<extra></extra>")
    if len(plot):
        cost = -plot[x].to_numpy(float) if x == "speedup" else plot[x].to_numpy(float)
        gain = plot[quality].to_numpy(float) * (1 if BETTER[quality] == "higher" else -1)
        front = plot[analysis.pareto_front(cost, gain)].sort_values(x)
        fig.add_scatter(x=front[x], y=front[quality], mode="lines+markers", name="Pareto frontier",
                        line=dict(color="black", dash="dot", width=1, shape="hv" if x == "keep" else "linear"),
                        marker=dict(symbol="circle-open", size=16, color="black", line=dict(width=2)),
                        hovertemplate="Pareto frontier: %{x:.3f}, %{y:.4f}<extra></extra>")
    if x == "keep":
        fig.update_xaxes(range=[0, 1.02], title="keep (fraction of neurons kept)")
    else:
        hi = max([1.0] + plot[x].dropna().tolist() + plot.get("speedup_hi", pd.Series(dtype=float)).dropna().tolist()
                 + plot.get("ceiling", pd.Series(dtype=float)).dropna().tolist())
        lo = min([1.0] + plot[x].dropna().tolist() + plot.get("speedup_lo", pd.Series(dtype=float)).dropna().tolist())
        fig.update_xaxes(range=[lo - 0.05, hi + 0.05], title="decode speed-up over dense (×, median of pairs)")
    if quality == "top1_agree":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    else:
        top = max([1.0 if quality == "ppl_ratio" else 0.0] + plot[quality].dropna().tolist()
                  + plot.get(f"{quality}_hi", pd.Series(dtype=float)).dropna().tolist())
        fig.update_yaxes(range=[0.99 if quality == "ppl_ratio" else 0.0, top * 1.05 + 1e-9])
    fig.update_yaxes(title=f"{QUALITY[quality]} ({BETTER[quality]} is better)")
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.18))
    return fig


def main() -> None:
    st.title("Compare")
    store = ui_store.store()
    models = sorted({r["model"] for r in store.results() if r.get("model")}) or [DEFAULT_MODEL]
    c1, c2, c3 = st.columns([2, 2, 2])
    k_model = ui_state.url_state("model", models[0], str, lambda v: v in models, allowed=", ".join(models))
    c1.selectbox("Model", models, key=k_model)
    model = ui_state.sync_url("model")
    ceiling = ((lambda name, keep, lm=ui_store.model(model): decode.ceiling(lm, name, keep))
               if model in ui_store.available_models() else None)  # each method's ceiling at its keep
    df = pd.DataFrame(analysis.metrics_table(store.results(model=model), ceiling))
    if df.empty:
        st.info("No stored metrics yet. Evaluate a method on the **Methods** page, or run "
                "`python -m moyu_core eval --method NAME --keep F` and `benchmarks/pareto.py`; their "
                "results land in this database.", icon=":material/info:")
        return
    k_q = ui_state.url_state("quality", "ppl_ratio", str, lambda v: v in QUALITY, allowed=", ".join(QUALITY))
    c2.selectbox("Quality", list(QUALITY), key=k_q, format_func=QUALITY.get)
    quality = ui_state.sync_url("quality")
    df["keep"] = df["keep"].fillna(df["kept"])   # methods without a keep: the share they kept
    has_speed = df["speedup"].notna().any()
    k_x = ui_state.url_state("x", "speedup" if has_speed else "keep", str, lambda v: v in X_AXES,
                             allowed=", ".join(X_AXES))
    c3.radio("x axis", list(X_AXES), key=k_x, horizontal=True, format_func=X_AXES.get,
             help="measured decode speed-up (median of dense/method pairs; bars: their middle half) or the "
                  "fraction of neurons kept")
    x = ui_state.sync_url("x")
    plot = df.dropna(subset=[quality, x]).sort_values(["method", x])
    if plot.empty:
        st.info(f"Nothing stored has both {X_AXES[x]} and {QUALITY[quality]}: "
                + ("press Generate on the Methods page to store a speed-up." if x == "speedup"
                   else "press Evaluate quality on the Methods page."), icon=":material/info:")
    fig = quality_figure(plot, x, quality)
    has_speed = x == "speedup"
    if has_speed and df["ceiling"].notna().any():
        ceil = df.dropna(subset=["ceiling", "speedup"]).drop_duplicates(["method", "keep"]).sort_values("ceiling")
        fig.add_scatter(x=ceil["ceiling"], y=[plot[quality].min()] * len(ceil), mode="markers+text",
                        marker=dict(symbol="line-ns-open", size=16, color="grey"),
                        text=[f"{m} k={k:g}" for m, k in zip(ceil["method"], ceil["keep"])],
                        textposition="bottom center", textfont=dict(size=9, color="grey"),
                        name="ceiling: 1/(1-s(1-k)), s = the bytes the method can skip")
    st.plotly_chart(fig, width="stretch", key="compare_chart")
    num = st.column_config.NumberColumn
    st.dataframe(df[[c for c in TABLE if c in df]], hide_index=True, width="stretch", column_config={
        "keep": num("keep", format="%.2f"), "ppl_ratio": num("ppl ratio", format="%.3f"),
        "ppl_ratio_lo": num("ppl ratio 95% lo", format="%.3f"), "ppl_ratio_hi": num("ppl ratio 95% hi", format="%.3f"),
        "kl": num("KL", format="%.4f"), "top1_agree": num("top-1 agree", format="percent"),
        "sparsity": num(format="percent"), "speedup": num("speed-up × (median)", format="%.2f"),
        "speedup_lo": num("speed-up 25%", format="%.2f"), "speedup_hi": num("speed-up 75%", format="%.2f"),
        "pairs": num("pairs"), "ceiling": num("ceiling ×", format="%.2f")})
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name=f"moyu-compare-{model}.csv",
                       mime="text/csv", icon=":material/download:", key="compare_csv")
    st.caption("Quality: stored runs of the standard protocol (pydoc_data.topics windows; bars: 95% t intervals "
               "over the windows). Speed-ups: Generate on the Methods page and benchmarks/decode_speed.py, median "
               "of alternating dense/method pairs, labelled executed (skipped weights not read) or simulated "
               "(masking only). Ringed: the Pareto frontier (no stored point is better on both axes).")


ui_errors.guard(main, what="compare")
