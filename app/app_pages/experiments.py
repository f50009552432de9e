"""Experiments: the paper's claims, one click each, with verdicts in numbers (UI only; the work is
in moyu_core.experiments, cached in the store's results table)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui_errors
import ui_store
import ui_text
from moyu_core.experiments import applicability, hh_ablation, inertia
from moyu_core.experiments import relu_swiglu as rs

BADGE = {"supported": ":green-badge[supported]", "contradicted": ":red-badge[contradicted]",
         "not supported": ":orange-badge[not supported]"}


def _verdicts(verdicts: dict) -> None:
    for v in verdicts.values():
        if isinstance(v, dict) and "verdict" in v:
            st.markdown(f"{BADGE.get(v['verdict'], v['verdict'])} **{ui_text.md_escape(v['claim'])}** — "
                        f"{ui_text.md_escape(v['text'].split(': ', 1)[-1])}")
        else:
            st.info(str(v))


def _latest(kind: str):
    rows = ui_store.store().results(kind=kind)
    return rows[-1] if rows else None


def _progress_bar():
    bar = st.progress(0.0)
    return lambda f, msg=None: bar.progress(min(1.0, float(f)), text=msg)


def _inertia_tab() -> None:
    st.caption("Figure 2 a–d: sentences from the Python docs vs seeded random word lists from the same "
               "vocabulary, each token alone (parallel) or in one sequence (sequential). Inertia = mean "
               "pairwise Jaccard of the per-token top-10% |z| neuron sets, first token excluded.")
    models = ui_store.available_models()
    with st.form("inertia"):
        c1, c2, c3 = st.columns(3)
        model = c1.selectbox("Model", models, index=ui_store.default_model_index(models), key="inertia_model")
        n = c2.number_input("Texts of each kind", 2, 32, 8, key="inertia_texts")
        t = c3.number_input("Tokens per text", 4, 256, 40, key="inertia_tokens")
        go_ = st.form_submit_button("Run (cached when already done)", type="primary", key="inertia_run")
    res = None
    if go_:
        lm = ui_store.model(model)
        res = inertia.run(lm, ui_store.store(), inertia.InertiaParams(n_texts=int(n), n_tokens=int(t)),
                          progress=_progress_bar())
    else:
        row = _latest(inertia.KIND)
        if row:
            res = {**row["result"], "model": row["model"]}
            st.caption(f"Latest stored result ({row['model']}, {row['created_at']}).")
    if not res:
        st.info("No inertia result yet: press Run.")
        return
    _verdicts(res["verdicts"])
    table = pd.DataFrame([{"condition": c, "Jaccard top-10%": res[c]["jaccard_top10"]["mean"],
                           "95% CI": f"[{res[c]['jaccard_top10']['lo']:.3f}, {res[c]['jaccard_top10']['hi']:.3f}]",
                           "consecutive overlap": res[c]["consecutive_top10"]["mean"],
                           "flocking share (top 10%)": res[c]["flocking_share"]["mean"]}
                          for c in inertia.CONDITIONS])
    st.dataframe(table, hide_index=True, width="stretch")
    fig = go.Figure()
    for c in inertia.CONDITIONS:
        pl = res[c]["per_layer"]
        fig.add_scatter(x=[r["layer"] for r in pl], y=[r["jaccard"] for r in pl], mode="lines+markers", name=c)
    fig.update_layout(height=320, xaxis_title="layer", yaxis_title="mean pairwise Jaccard",
                      margin=dict(l=10, r=10, t=30, b=10), title="Inertia per layer")
    st.plotly_chart(fig, width="stretch")
    heat = res.get("heatmaps")
    if heat:
        st.caption(f"|z| / max per token, layer {heat['layer']}, first text of each kind (pooled).")
        cols = st.columns(2)
        for i, c in enumerate(("sentence/parallel", "random/parallel", "sentence/sequential", "random/sequential")):
            if c in heat:
                f = go.Figure(go.Heatmap(z=heat[c], colorscale="Viridis", zmin=0, zmax=1, showscale=False))
                f.update_layout(height=240, title=c, margin=dict(l=10, r=10, t=30, b=10),
                                xaxis_title="neurons (pooled)", yaxis_title="token")
                cols[i % 2].plotly_chart(f, width="stretch")


def _ablation_tab() -> None:
    st.caption("Block every later query from attending to the earliest heavy hitter (or, as the control, "
               "a random other token), then compare activations, Griffin's neurons and Griffin's "
               "continuation perplexity with the unablated run.")
    models = ui_store.available_models()
    with st.form("ablation"):
        c1, c2, c3 = st.columns(3)
        model = c1.selectbox("Model", models, index=ui_store.default_model_index(models), key="ablation_model")
        n = c2.number_input("Texts", 2, 32, 8, key="ablation_texts")
        skip = c3.checkbox("Never pick token 0 (the sink)", key="ablation_skip_first")
        go_ = st.form_submit_button("Run (cached when already done)", type="primary", key="ablation_run")
    res = None
    if go_:
        res = hh_ablation.run(ui_store.model(model), ui_store.store(),
                              hh_ablation.AblationParams(n_texts=int(n), skip_first=skip), progress=_progress_bar())
    else:
        row = _latest(hh_ablation.KIND)
        if row:
            res = {**row["result"], "model": row["model"]}
            st.caption(f"Latest stored result ({row['model']}, {row['created_at']}).")
    if not res:
        st.info("No ablation result yet: press Run.")
        return
    _verdicts(res["verdicts"])
    st.dataframe(pd.DataFrame([{"ablated": n, "activation overlap": res[n]["pattern_overlap"]["mean"],
                                "Griffin neurons Jaccard": res[n]["griffin_jaccard"]["mean"],
                                "Griffin ppl ratio": res[n]["ppl_ratio_vs_clean_griffin"]["mean"]}
                               for n in ("heavy", "control")]), hide_index=True, width="stretch")
    st.caption(f"The earliest heavy hitter was token 0 in {res['target_is_token0_share']:.0%} of texts.")


def _relu_tab() -> None:
    st.caption("Two tiny Llamas that differ only in the MLP activation (ReLU-gated vs SiLU-gated, same "
               "parameter count, data, seed and steps). Training runs from the command line: "
               "`python -m moyu_core relu-swiglu` (up to 15 min per model); this page shows the stored "
               "comparison.")
    rows = ui_store.store().results(kind=rs.KIND + ":model")
    if not rows:
        st.info("No comparison stored yet: run `python -m moyu_core relu-swiglu`.")
        return
    latest = {}
    for r in rows:
        latest[r["model"]] = r["result"]
    st.dataframe(pd.DataFrame([{"model": m, "activation": r["hidden_act"], "exact zeros": r["exact_zero"],
                                "near zeros": r["near_zero"], "share for 90% of |z|": r["share_for_90pct_mass"],
                                "router recall": r["recall"], "static recall": r["static_recall"],
                                "random recall": r["random_recall"]} for m, r in latest.items()]),
                 hide_index=True, width="stretch")
    _verdicts(rs.verdicts(latest, rs.CompareParams()))


def _applicability_tab() -> None:
    with st.form("applicability"):
        keep = st.slider("keep", 0.1, 1.0, 0.5, 0.05, key="applicability_keep")
        go_ = st.form_submit_button("Run (slow the first time: trains missing DejaVu routers; cached after)",
                                    type="primary", key="applicability_run")
    res = applicability.run(ui_store.store(), applicability.ApplicabilityParams(keep=keep),
                            progress=_progress_bar()) if go_ else None
    if res is None:
        row = _latest(applicability.KIND)
        res = row["result"] if row else None
    if not res:
        st.info("No result yet: press Run.")
        return
    df = pd.DataFrame(res["table"])
    st.dataframe(df, hide_index=True, width="stretch")


def main() -> None:
    st.title("Experiments")
    tabs = st.tabs(["Activation inertia", "Heavy-hitter ablation", "ReLU vs SwiGLU", "Applicability"])
    for tab, body in zip(tabs, (_inertia_tab, _ablation_tab, _relu_tab, _applicability_tab)):
        with tab:
            ui_errors.guard(body)


ui_errors.guard(main)
