"""Compare: quality against speed-up across methods and keep levels, from stored metrics."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

import ui_errors
import ui_state
import ui_store
from moyu_core import analysis
from moyu_core.models import DEFAULT_MODEL

QUALITY = {"ppl_ratio": "perplexity ratio (lower is better)", "kl": "KL(dense‖method)",
           "top1_agree": "top-1 agreement with dense"}


def main() -> None:
    st.title("Compare")
    store = ui_store.store()
    models = sorted({r["model"] for r in store.results() if r.get("model")}) or [DEFAULT_MODEL]
    c1, c2, c3 = st.columns([2, 2, 2])
    k_model = ui_state.url_state("model", models[0], str, lambda v: v in models)
    c1.selectbox("Model", models, key=k_model)
    model = ui_state.sync_url("model")
    mlp_share = (analysis.mlp_weight_share(ui_store.model(model).model)
                 if model in ui_store.available_models() else None)  # for the ceiling at each keep
    df = pd.DataFrame(analysis.metrics_table(store.results(model=model), mlp_share))
    if df.empty:
        st.info("No stored metrics yet. Evaluate a method on the **Methods** page, or run "
                "`python -m moyu_core eval --method NAME --keep F` and `benchmarks/pareto.py`; their "
                "results land in this database.", icon=":material/info:")
        return
    k_q = ui_state.url_state("quality", "ppl_ratio", str, lambda v: v in QUALITY)
    c2.selectbox("Quality", list(QUALITY), key=k_q, format_func=QUALITY.get)
    quality = ui_state.sync_url("quality")
    has_speed = df["speedup"].notna().any()
    x = "speedup" if has_speed else "keep"
    c3.caption("x axis: measured decode speed-up" + ("" if has_speed else " — none stored yet, so keep is shown"))

    plot = df.dropna(subset=[quality, x])
    plot = plot.sort_values(x).assign(label=lambda d: d["keep"].map(lambda k: "" if pd.isna(k) else f"k={k:g}"))
    fig = px.line(plot, x=x, y=quality, color="method", markers=True, text="label",
                  symbol="timing" if has_speed else None,
                  hover_data=["keep", "ppl_ratio", "kl", "top1_agree", "sparsity", "windows"],
                  labels={"speedup": "decode speed-up over dense (×)", "keep": "keep (fraction of neurons)",
                          quality: QUALITY[quality]})
    fig.update_traces(textposition="top center", textfont_size=10)
    if has_speed and df["ceiling"].notna().any():
        ceil = df.dropna(subset=["ceiling"]).drop_duplicates("keep").sort_values("ceiling")
        fig.add_scatter(x=ceil["ceiling"], y=[plot[quality].min()] * len(ceil), mode="markers+text",
                        marker=dict(symbol="line-ns-open", size=16, color="grey"),
                        text=[f"ceiling k={k:g}" for k in ceil["keep"]], textposition="bottom center",
                        textfont=dict(size=9, color="grey"), name="ceiling at keep (1/(1-m(1-k)))")
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(fig, width="stretch")
    num = st.column_config.NumberColumn
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "ppl_ratio": num("ppl ratio", format="%.3f"), "kl": num("KL", format="%.4f"),
        "top1_agree": num("top-1 agree", format="percent"), "sparsity": num(format="percent"),
        "speedup": num("speed-up ×", format="%.2f"), "ceiling": num("ceiling ×", format="%.2f")})
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name=f"moyu-compare-{model}.csv",
                       mime="text/csv", icon=":material/download:", key="compare_csv")
    st.caption("Speed-ups are labelled executed (skipped weights not read) or simulated (masking only).")


ui_errors.guard(main)
