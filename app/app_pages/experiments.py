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
         "not supported": ":orange-badge[not supported]", "inconclusive": ":gray-badge[inconclusive]"}


def _verdicts(verdicts: dict) -> None:
    for v in verdicts.values():
        if isinstance(v, dict) and "verdict" in v:
            st.markdown(f"{BADGE.get(v['verdict'], v['verdict'])} **{ui_text.md_escape(v['claim'])}** — "
                        f"{ui_text.md_escape(v['text'].split(': ', 1)[-1])}")
        else:
            st.info(str(v))


def _latest(kind: str, version: int):
    """The newest stored result of `kind` made by this version of the experiment (older ones
    were made under other rules and are not shown)."""
    rows = [r for r in ui_store.store().results(kind=kind) if r["params"].get("version") == version]
    return rows[-1] if rows else None


def _stored_or_run(kind: str, version: int, res):
    if res is not None:
        return res
    row = _latest(kind, version)
    if row:
        st.caption(f"Latest stored result ({row['model'] or 'all models'}, {row['created_at']}).")
        return {**row["result"], "model": row["model"]}
    return None


_BARS: list = []  # this script run's progress bars, removed when the page is drawn (main)


def _progress_bar():
    bar = st.progress(0.0)
    _BARS.append(bar)
    return lambda f, msg=None: bar.progress(min(1.0, float(f)), text=msg)


def _ci(e: dict) -> str:
    return f"[{e['lo']:.3f}, {e['hi']:.3f}]"


def _inertia_tab() -> None:
    st.caption("Figure 2 a–d: sentences from the Python docs vs seeded random word lists from the same "
               "vocabulary, each token alone after a one-token context (parallel) or in one sequence after "
               "the same context (sequential). The context is the model's BOS, else one newline token, so no "
               "measured token sits at position 0 (the attention sink). Inertia = overlap of consecutive tokens' "
               "top-10% |z| neuron sets over text tokens 1..n-1 (the verdicts' metric; mean pairwise Jaccard "
               "alongside; pairs of the same token left out); 95% t intervals over texts; the no-difference claim is judged by two one-sided tests against a "
               "stated margin.")
    models = ui_store.available_models()
    with st.form("inertia"):
        c1, c2, c3 = st.columns(3)
        model = c1.selectbox("Model", models, index=ui_store.default_model_index(models), key="inertia_model")
        n = c2.number_input("Texts of each kind", 2, 200, inertia.InertiaParams.n_texts, key="inertia_texts")
        t = c3.number_input("Tokens per text", 4, 256, inertia.InertiaParams.n_tokens, key="inertia_tokens")
        go_ = st.form_submit_button("Run (cached when already done)", type="primary", key="inertia_run")
    res = None
    if go_:
        lm = ui_store.model(model)
        res = inertia.run(lm, ui_store.store(), inertia.InertiaParams(n_texts=int(n), n_tokens=int(t)),
                          progress=_progress_bar())
    res = _stored_or_run(inertia.KIND, inertia.VERSION, res)
    if not res:
        st.info("No inertia result yet: press Run.")
        return
    ctx = res["context"]
    st.caption(f"Context before every text: «{ui_text.md_escape(ctx['text'].replace(chr(10), '⏎'))}» "
               f"({ctx['rule']}); scored positions {ctx['scored_positions']}.")
    _verdicts(res["verdicts"])
    table = pd.DataFrame([{"condition": c, "n texts": res[c]["consecutive_top10"]["n"],
                           "consecutive overlap (verdicts)": res[c]["consecutive_top10"]["mean"],
                           "95% CI": _ci(res[c]["consecutive_top10"]),
                           "pairwise Jaccard": res[c]["jaccard_top10"]["mean"],
                           "flocking share (top 10%)": res[c]["flocking_share"]["mean"]}
                          for c in inertia.CONDITIONS])
    st.dataframe(table, hide_index=True, width="stretch")
    fig = go.Figure()
    for c in inertia.CONDITIONS:
        pl = res[c]["per_layer"]
        fig.add_scatter(x=[r["layer"] for r in pl], y=[r[inertia.HEADLINE] for r in pl], mode="lines+markers", name=c)
    fig.update_layout(height=320, xaxis_title="layer", yaxis_title="consecutive top-10% overlap",
                      margin=dict(l=10, r=10, t=30, b=10), title="Inertia per layer (means over texts)")
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
    st.caption("Block every later query from attending to the earliest heavy hitter (ranked by attention "
               "received per query that can see it), or, as the control, to the non-heavy-hitter nearest in "
               "position; both scored over the tokens after the later of the two. Two arms: the attention "
               "sink (token 0) may be chosen, or never is.")
    models = ui_store.available_models()
    with st.form("ablation"):
        c1, c2 = st.columns(2)
        model = c1.selectbox("Model", models, index=ui_store.default_model_index(models), key="ablation_model")
        n = c2.number_input("Texts", 2, 200, hh_ablation.AblationParams.n_texts, key="ablation_texts")
        go_ = st.form_submit_button("Run (cached when already done)", type="primary", key="ablation_run")
    res = None
    if go_:
        res = hh_ablation.run(ui_store.model(model), ui_store.store(),
                              hh_ablation.AblationParams(n_texts=int(n)), progress=_progress_bar())
    res = _stored_or_run(hh_ablation.KIND, hh_ablation.VERSION, res)
    if not res:
        st.info("No ablation result yet: press Run.")
        return
    _verdicts(res["verdicts"])
    rows = []
    for arm in hh_ablation.ARMS:
        for n in ("heavy", "control"):
            e = res[arm][n]
            rows.append({"arm": arm.replace("_", " "), "ablated": n, "n texts": e["pattern_overlap"]["n"],
                         "activation overlap": e["pattern_overlap"]["mean"], "95% CI": _ci(e["pattern_overlap"]),
                         "Griffin neurons Jaccard": e["griffin_jaccard"]["mean"],
                         "Griffin ppl ratio": e["ppl_ratio_vs_clean_griffin"]["mean"]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    inc = res["sink_included"]
    st.caption(f"With the sink included the heavy hitter was token 0 in {inc['target_is_token0_share']:.0%} of "
               f"texts. " + " ".join(f"{k.replace('_', ' ').capitalize()}: {v}." for k, v in res["scoring"].items()))


def _relu_tab() -> None:
    st.caption("Pairs of tiny Llamas that differ only in the MLP activation (ReLU-gated vs SiLU-gated): same "
               "parameter count, data and, within a seed, the same initialisation seed, batches, step count and "
               "learning-rate schedule. The step count is fixed before any model trains (a few timed steps "
               "turn the time cap into steps), so the cap never makes the two differ. Intervals are across "
               "seeds.")
    with st.form("relu"):
        c1, c2, c3 = st.columns(3)
        seeds = c1.number_input("Seeds (pairs)", 2, 10, len(rs.TrainParams.seeds), key="relu_seeds")
        steps = c2.number_input("Steps", 1, 100_000, rs.TrainParams.steps, key="relu_steps")
        minutes = c3.number_input("Cap per model (min)", 0.1, 120.0, rs.TrainParams.max_minutes, key="relu_minutes")
        tp = rs.TrainParams(steps=int(steps), max_minutes=float(minutes), seeds=tuple(range(int(seeds))))
        st.caption(f"Trains {2 * int(seeds)} models: at most about {rs.estimate_minutes(tp):.0f} min "
                   "(reused when already trained); the bar shows the time left once the step time is measured.")
        go_ = st.form_submit_button("Train and compare", type="primary", key="relu_run")
    if go_:
        bar = _progress_bar()
        trained = rs.train_pair(tp, progress=bar)
        res = rs.compare(rs.CompareParams(), tuple(trained["models"]), ui_store.store(),
                         progress=lambda f, msg=None: bar(f, f"comparing: {msg}"))
        latest = res["models"]
        st.caption(f"Every model trained {trained['budget']['steps']} steps ({trained['budget']['schedule']}).")
    else:
        rows = [r for r in ui_store.store().results(kind=rs.KIND + ":model") if r["params"].get("version") == rs.VERSION]
        if not rows:
            st.info("No comparison stored yet: press Train and compare (or run `python -m moyu_core relu-swiglu`).")
            return
        latest = {}
        for r in rows:
            latest[r["model"]] = r["result"]
    st.dataframe(pd.DataFrame([{"model": m, "activation": r["hidden_act"], "seed": r.get("seed"),
                                "exact zeros": r["exact_zero"], "near zeros": r["near_zero"],
                                "share for 90% of |z|": r["share_for_90pct_mass"], "router rank": r["router_rank"],
                                "router recall": r["recall"], "static recall": r["static_recall"],
                                "random recall": r["random_recall"]} for m, r in latest.items()]),
                 hide_index=True, width="stretch")
    _verdicts(rs.verdicts(latest, rs.CompareParams()))


def _applicability_tab() -> None:
    st.caption("Every method's quality at the same keep on each shipped model (quality protocol, "
               f"{applicability.ApplicabilityParams.windows} windows); intervals are 95% t intervals over windows.")
    with st.form("applicability"):
        keep = st.slider("keep", 0.1, 1.0, 0.5, 0.05, key="applicability_keep")
        go_ = st.form_submit_button("Run (slow the first time: trains missing DejaVu routers; cached after)",
                                    type="primary", key="applicability_run")
    res = applicability.run(ui_store.store(), applicability.ApplicabilityParams(keep=keep),
                            progress=_progress_bar()) if go_ else None
    res = _stored_or_run(applicability.KIND, applicability.VERSION, res)
    if not res:
        st.info("No result yet: press Run.")
        return
    rows = []
    for r in res["table"]:
        if "error" in r:
            rows.append({"model": r["model"], "method": r["method"], "error": r["error"]})
        else:
            rows.append({"model": r["model"], "method": r["method"], "n windows": r["windows"],
                         "ppl ratio": r["ppl_ratio"], "ppl ratio 95% CI": _ci(r["ppl_ratio_ci"]),
                         "top-1 agreement": r["top1_agree"], "top-1 95% CI": _ci(r["top1_ci"]),
                         "KL": r["kl"], "sparsity": r["sparsity"]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def main() -> None:
    st.title("Experiments")
    tabs = st.tabs(["Activation inertia", "Heavy-hitter ablation", "ReLU vs SwiGLU", "Applicability"])
    for tab, body in zip(tabs, (_inertia_tab, _ablation_tab, _relu_tab, _applicability_tab)):
        with tab:
            ui_errors.guard(body)
    for bar in _BARS:   # the experiments have ended: their bars go, their results stay
        bar.empty()


ui_errors.guard(main)
