"""Methods: pick DA methods and their keep live; see what each keeps against the oracle, its
quality, and its measured speed next to the ceiling."""
from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import streamlit as st

import moyu_charts as charts
import ui_errors
import ui_jobs
import ui_reads
import ui_state
import ui_store
import ui_text
from moyu_core import analysis, decode, masks, methods, router
from moyu_core.evaluate import evaluate

WINDOW_TOKENS, WINDOW_NEURONS = 40, 256
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="moyu-agreement")
HIDDEN = {"dense", "oracle"}  # dense is the reference, oracle the comparator: both drawn anyway


# ---- cached computations (content-addressed by run, method name and parameters) ---------------------

@st.cache_resource(show_spinner=False, max_entries=16)
def _keep_masks(model_name: str, run_id: str, name: str, params_json: str):
    """The method's keep masks for the run's prompt, bit-packed: (L, T, d_ff / 8) uint8.
    `masks.run_masks` decides where they come from; what it reads is shared with the rest of the
    app: the stored z the heatmap shows, and the run's method inputs from the background job."""
    method = methods.make(name, **json.loads(params_json))
    got = masks.run_masks(ui_store.model(model_name), ui_store.store(), run_id, method,
                          inputs=lambda: ui_jobs.method_inputs(model_name, run_id).result(),
                          layer_z=lambda li: ui_reads.layer(run_id, li))
    packed = np.packbits(got, axis=-1)
    packed.setflags(write=False)
    return packed


def keep_mask(model_name: str, run_id: str, name: str, params_json: str, layer: int, d_ff: int):
    """bool (T, d_ff): which neurons the method keeps at `layer` for each token."""
    packed = _keep_masks(model_name, run_id, name, params_json)
    return np.unpackbits(packed[layer], axis=-1, count=d_ff).astype(bool)


def oracle_for(run_id: str, layer: int, keep: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The oracle keeping the same share as `keep` (bool (T, d_ff)) at this layer."""
    return ui_jobs.oracle_mask(run_id, layer, max(np.count_nonzero(keep) / max(1, keep.size), 1e-6), z)


@st.cache_resource(show_spinner=False, max_entries=32)
def _per_layer_agreement(model_name: str, run_id: str, name: str, params_json: str, n_layers: int, d_ff: int):
    """Agreement with the oracle at every layer, on two threads."""
    keeps = [keep_mask(model_name, run_id, name, params_json, li, d_ff) for li in range(n_layers)]
    zs = [ui_reads.layer(run_id, li) for li in range(n_layers)]
    return list(_POOL.map(lambda li: analysis.mask_agreement(keeps[li], oracle_for(run_id, li, keeps[li], zs[li])),
                          range(n_layers)))


def kept_share(model_name: str, run_id: str, name: str, params_json: str) -> float:
    """Share of all (layer, token, neuron) entries the method keeps on this prompt."""
    packed = _keep_masks(model_name, run_id, name, params_json)
    L, T, _ = packed.shape
    return int(np.bitwise_count(packed).sum()) / (L * T * ui_store.store().run(run_id).d_ff)


@st.cache_resource(show_spinner=False, max_entries=4)
def _mlp_share(model_name: str) -> float:
    return analysis.mlp_weight_share(ui_store.model(model_name).model)


# ---- helpers ----------------------------------------------------------------------------------------

def build(name: str, keep: float, overrides: dict):
    """The method with `keep` (when its parameters have one) and the user's parameter edits."""
    takes_keep = any(f.name == "keep" for f in dataclasses.fields(methods.REGISTRY[name].Params))
    return methods.make(name, **({"keep": keep} if takes_keep else {}), **overrides)


def param_editor(name: str, method) -> dict:
    """Number/text inputs for the method's parameters other than keep; returns the edits."""
    edits = {}
    fields = [f for f in dataclasses.fields(method.params) if f.name != "keep"]
    if not fields:
        return edits
    cols = st.columns(min(4, len(fields)))
    for col, f in zip(cols * 4, fields):
        value = getattr(method.params, f.name)
        key = f"p_{name}_{f.name}"
        if isinstance(value, bool):
            new = col.checkbox(f.name, value=value, key=key)
        elif isinstance(value, int):
            new = col.number_input(f.name, value=value, step=1, key=key)
        elif isinstance(value, float):
            new = col.number_input(f.name, value=value, format="%.4f", key=key)
        elif isinstance(value, str) or value is None:
            new = col.text_input(f.name, value="" if value is None else value, key=key) or value
        else:
            col.caption(f"{f.name} = {value!r}")
            continue
        if new != value:
            edits[f.name] = new
    return edits


def find_eval(model_name: str, name: str, params: dict) -> dict | None:
    """The stored quality figures of this method and parameters, if any."""
    for r in reversed(ui_store.store().results(kind="eval", model=model_name)):
        res = r["result"]
        if res.get("method") == name and res.get("params", {}) == params:
            return res
    return None


def quality_block(lm, method, params: dict) -> None:
    res = find_eval(lm.name, method.name, params)
    key = f"eval_{method.name}_{json.dumps(params, sort_keys=True)}"
    res = res or st.session_state.get(key)
    if res is None:
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        windows = c2.select_slider("Windows", [2, 4, 12], value=4, key=f"w_{key}",
                                   help="the protocol uses 12 windows of 256 + 64 tokens; fewer is quicker")
        if c1.button("Evaluate quality", key=f"b_{key}", icon=":material/analytics:"):
            bar = st.progress(0.0, text="evaluating on pydoc_data.topics windows")
            res = evaluate(lm, method, store=ui_store.store(), windows=int(windows),
                           progress=lambda f, msg=None: bar.progress(min(1.0, float(f)), text=msg))
            bar.empty()
            st.session_state[key] = res
        else:
            st.caption("No stored quality figures for these parameters yet.")
            return
    m = st.columns(5)
    m[0].metric("Perplexity ratio", f"{res['ppl_ratio']:.3f}", help=f"{res['ppl']:.2f} vs dense {res['dense_ppl']:.2f}")
    m[1].metric("KL(dense‖method)", f"{res['kl']:.4f}")
    m[2].metric("Top-1 agreement", f"{res['top1_agree']:.1%}")
    m[3].metric("Measured sparsity", f"{res['sparsity']:.1%}")
    m[4].metric("Windows", str(res.get("windows", "–")))


def generation_block(lm, rec, method, params: dict, keep: float) -> None:
    key = f"gen_{rec.run_id}_{method.name}_{json.dumps(params, sort_keys=True)}"
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    n_new = c2.select_slider("New tokens", [16, 32, 64], value=32, key=f"n_{key}")
    if c1.button("Generate", key=f"b_{key}", icon=":material/play_arrow:"):
        with st.spinner("Greedy decoding, dense then method…"):
            dense = decode.generate(lm, rec.text, methods.make("dense"), max_new_tokens=int(n_new), executed=True)
            got = decode.generate(lm, rec.text, method, max_new_tokens=int(n_new), executed=True)
        st.session_state[key] = (dense, got)
    if key not in st.session_state:
        return
    dense, got = st.session_state[key]
    left, right = st.columns(2)
    left.markdown("**Dense**")
    left.text(dense["text"])
    right.markdown(f"**{method.name}**")
    right.text(got["text"])
    speedup = got["decode_tokens_per_s"] / max(dense["decode_tokens_per_s"], 1e-9)
    ceiling = analysis.speedup_ceiling(_mlp_share(lm.name), keep)
    m = st.columns(4)
    m[0].metric(f"{method.name} decode speed ({got['label']})", f"{got['decode_tokens_per_s']:.1f} tok/s",
                help="executed: the skipped weights are really not read; simulated: masking only")
    m[1].metric("Dense decode speed", f"{dense['decode_tokens_per_s']:.1f} tok/s")
    m[2].metric(f"Speed-up ({got['label']})", f"{speedup:.2f}×", help="one pair of runs; the benchmark takes medians")
    m[3].metric(f"Ceiling at keep {keep:.2f}", f"{ceiling:.2f}×",
                help="1 / (1 - m (1 - keep)), m = MLP share of the weight bytes read per token")
    st.caption(f"Prefill: {got['prefill_ms']:.0f} ms ({got['label']}) vs {dense['prefill_ms']:.0f} ms dense. "
               "One pair on a shared machine: benchmarks/decode_speed.py reports medians.")


def router_block(lm) -> bool:
    """True when the DejaVu router exists; else offer to train it (progress shown) and say why."""
    if router.load_router(lm) is not None:
        return True
    st.info(f"DejaVu keeps what a small router predicts from the MLP input. {lm.name} has no trained "
            "router yet: training captures stored history if there is too little, then fits one "
            "predictor per layer (about 3 minutes for smollm2-135m on 2 cores).", icon=":material/model_training:")
    if st.button("Train router", key="train_router", icon=":material/model_training:"):
        bar = st.progress(0.0, text="training the DejaVu router")
        rep = router.train(lm, ui_store.store(), progress=lambda f, msg="": bar.progress(min(1.0, float(f)), text=msg))
        bar.empty()
        st.success(f"Router trained: recall of the true top-50% on held-out text {rep['recall']:.1%}.")
        return True
    return False


def mask_block(lm, rec, name: str, params: dict, li: int) -> None:
    pj = json.dumps(params, sort_keys=True)
    with st.spinner(f"{name}: which neurons it keeps for this prompt…"):
        keep = keep_mask(lm.name, rec.run_id, name, pj, li, rec.d_ff)  # (T, d_ff)
    z = ui_reads.layer(rec.run_id, li)
    oracle = oracle_for(rec.run_id, li, keep, z)
    agree = analysis.mask_agreement(keep, oracle)
    cats = analysis.mask_categories(keep, oracle)
    perm = analysis.neuron_order(z, "frequency")
    T = rec.n_tokens
    t0 = 0
    if T > WINDOW_TOKENS:
        t0 = st.slider("Token window start", 0, T - WINDOW_TOKENS, 0, key=f"t0_{name}")
    rows = slice(t0, min(T, t0 + WINDOW_TOKENS))
    labels = ui_text.token_labels([p for _, p in ui_reads.tokens(rec.run_id)])[rows]
    left, right = st.columns([3, 1])
    left.plotly_chart(charts.mask_heatmap(
        cats[rows][:, perm[:WINDOW_NEURONS]], labels, perm[:WINDOW_NEURONS], analysis.MASK_LABELS,
        f"Layer {li}: {name} against the oracle (same keep), {WINDOW_NEURONS} most active neurons"),
        width="stretch", key=f"mask_{name}")
    with right:
        st.metric("Kept (this layer)", f"{agree['kept']:.1%}")
        st.metric("Recall of the oracle", f"{agree['recall']:.1%}",
                  help="share of the neurons the oracle keeps (true top-k of |z|) that the method keeps too")
        st.metric("Precision", f"{agree['precision']:.1%}")
        rows_all = _per_layer_agreement(lm.name, rec.run_id, name, pj, rec.n_layers, rec.d_ff)
        st.plotly_chart(charts.lines({"recall": np.array([r["recall"] for r in rows_all])},
                                     np.arange(rec.n_layers), "Recall per layer", "layer", "recall",
                                     height=220), width="stretch", key=f"recall_{name}")


def method_tab(lm, rec, name: str, keep: float, li: int) -> None:
    """One chosen method: its parameters, what it keeps, its quality, its generation and timing."""
    method = build(name, keep, {})
    shown = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(method.params).items())
    with st.expander(f"{name} parameters: {shown}"):
        st.caption(" · ".join(f"{k}: {v}" for k, v in method.describe().items()))
        edits = param_editor(name, method)
    method = build(name, keep, edits) if edits else method
    params = dataclasses.asdict(method.params)
    if "router" in method.requires() and not router_block(lm):
        return
    st.subheader("What it keeps")
    mask_block(lm, rec, name, params, li)
    st.subheader("Quality")
    quality_block(lm, method, params)
    st.subheader("Generation and timing")
    if isinstance(params.get("keep"), (int, float)):
        effective = float(params["keep"])
    else:  # a threshold method: its ceiling is at the share it actually kept here
        effective = kept_share(lm.name, rec.run_id, name, json.dumps(params, sort_keys=True))
    generation_block(lm, rec, method, params, effective)


def main() -> None:
    st.title("Methods")
    rid = ui_state.current_run()
    if not rid:
        ui_state.run_picker_hint()
        return
    rec = ui_reads.run_record(rid)
    if rec is None:
        return
    ui_text.run_header(rec)
    ui_jobs.prefetch_methods(rec)  # here at once: this page reads it
    names = [n for n in methods.REGISTRY if n not in HIDDEN]
    c1, c2, c3 = st.columns([3, 2, 2])
    k_m = ui_state.url_state("method", names[:1], lambda s: [n for n in s.split(",") if n],
                             lambda v: isinstance(v, list) and all(n in names for n in v))
    c1.multiselect("Methods", names, key=k_m, help=f"registered: {', '.join(sorted(methods.REGISTRY))}")
    chosen = ui_state.sync_url("method", ",".join)
    k_keep = ui_state.url_state("keep", 0.5, float, lambda v: 0.01 <= v <= 1.0)
    c2.slider("keep (fraction of neurons)", 0.05, 1.0, step=0.05, key=k_keep)
    keep = ui_state.sync_url("keep")
    k_layer = ui_state.url_state("layer", min(rec.n_layers - 1, rec.n_layers // 2), int,
                                 lambda v: isinstance(v, int) and 0 <= v < rec.n_layers)
    c3.slider("Layer", 0, rec.n_layers - 1, key=k_layer)
    li = ui_state.sync_url("layer")
    if not chosen:
        st.info("Pick one or more methods.", icon=":material/info:")
        return
    lm = ui_store.model(rec.model)
    if rec.mode == "parallel":
        st.caption("Masks are computed on the prompt as one sequence (methods see the sequence).")
    for tab, name in zip(st.tabs(chosen), chosen):
        with tab:
            ui_errors.guard(lambda: method_tab(lm, rec, name, keep, li))


ui_errors.guard(main)
