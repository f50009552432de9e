"""Methods: pick DA methods (dense and the oracle among them) and their keep, and see them side by
side for the same layer and tokens: what each keeps against the oracle, its recall, kept share and
quality; where each hurts on the prompt itself; and decode speed beside the ceiling. Work that
takes longer than a moment (a calibration pass, a forward over the prompt, every layer's
agreement) runs in the background and says what it computes while it runs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import streamlit as st

import moyu_charts as charts
import ui_errors
import ui_jobs
import ui_reads
import ui_state
import ui_store
import ui_text
from moyu_core import analysis, decode, methods, router
from moyu_core.evaluate import evaluate

WINDOW_TOKENS, GRID_NEURONS = 40, 192
DEFAULT_METHODS = ["oracle", "tda", "griffin"]
PER_ROW = 3  # methods per row of the side-by-side grid (cards stay wide enough for their figures)


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


_EVALS: dict[str, list[dict]] = {}   # stored evaluations by model, read once per run of this page


def find_eval(model_name: str, name: str, params: dict) -> dict | None:
    """The stored quality figures of this method and parameters, if any (every card, quality block
    and prompt table asks: one read of the store per run of the page, which runs afresh each time)."""
    if model_name not in _EVALS:
        _EVALS[model_name] = ui_store.store().results(kind="eval", model=model_name)
    for r in reversed(_EVALS[model_name]):
        res = r["result"]
        if res.get("method") == name and res.get("params", {}) == params:
            return res
    return None


def protocol_text(res: dict | None = None) -> str:
    w, p, g = ((res or {}).get("windows", 12), (res or {}).get("prompt_len", 256), (res or {}).get("gen_len", 64))
    return (f"standard protocol: pydoc_data.topics (Python's reference docs), {w} windows of {p} + {g} "
            f"tokens; the method acts on the {g} continuation tokens, teacher-forced")


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
            st.caption(f"No stored quality figures for these parameters yet ({protocol_text()}).")
            return
    m = st.columns(5)
    m[0].metric("Perplexity ratio", f"{res['ppl_ratio']:.3f}", help=f"{res['ppl']:.2f} vs dense {res['dense_ppl']:.2f}")
    m[1].metric("KL(dense‖method)", f"{res['kl']:.4f}")
    m[2].metric("Top-1 agreement", f"{res['top1_agree']:.1%}")
    m[3].metric("Measured sparsity", f"{res['sparsity']:.1%}")
    m[4].metric("Windows", str(res.get("windows", "–")))
    st.caption(protocol_text(res).capitalize() + ". Stored: the Compare page charts it.")


def record_generation(lm, rec, method, params: dict, res: dict) -> None:
    """Store a Generate (kind "decode", charted by Compare) from `decode.compare_speed`'s result:
    the median of the per-pair decode speed-ups, every ratio, the executed/simulated label and the
    last pair's timings; keyed by run, method, parameters, length and number of pairs."""
    ui_store.store().put_result(
        "decode", {"model": lm.fingerprint, "run": rec.run_id, "method": method.name, "params": params,
                   "new_tokens": res["tokens"], "pairs": res["pairs"], "source": "app"},
        {"method": method.name, "params": params, "speedup": res["speedup_median"], "ratios": res["ratios"],
         "pairs": res["pairs"], "label": res["label"], "cpu_ratio_median": res.get("cpu_ratio_median"),
         "tokens_per_s": res["method"]["decode_tokens_per_s"], "dense_tokens_per_s": res["dense"]["decode_tokens_per_s"],
         "prefill_ms": res["method"]["prefill_ms"], "dense_prefill_ms": res["dense"]["prefill_ms"]},
        model=lm.name, method=method.name)


def generation_block(lm, rec, method, params: dict, keep: float) -> None:
    key = f"gen_{rec.run_id}_{method.name}_{json.dumps(params, sort_keys=True)}"
    c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="center")
    n_new = c2.select_slider("New tokens", [16, 32, 64], value=32, key=f"n_{key}")
    pairs = c3.select_slider("Pairs (dense, method)", [3, 5, 7], value=3, key=f"p_{key}",
                             help="dense and the method alternate; the speed-up is the median of the pairs' ratios")
    if c1.button("Generate", key=f"b_{key}", icon=":material/play_arrow:"):
        with st.spinner(f"Greedy decoding, dense and method alternating ({pairs} pairs)…"):
            st.session_state[key] = decode.compare_speed(lm, rec.text, method, int(n_new), int(pairs))
        record_generation(lm, rec, method, params, st.session_state[key])
    if key not in st.session_state:
        return
    res = st.session_state[key]
    dense, got = res["dense"], res["method"]
    left, right = st.columns(2)
    left.markdown("**Dense**")
    left.text(dense["text"])
    right.markdown(f"**{method.name}**")
    right.text(got["text"])
    ceiling = decode.ceiling(lm, method.name, keep)
    m = st.columns(4)
    m[0].metric(f"{method.name} decode speed ({got['label']})", f"{got['decode_tokens_per_s']:.1f} tok/s",
                help="executed: the skipped weights are really not read; simulated: masking only")
    m[1].metric("Dense decode speed", f"{dense['decode_tokens_per_s']:.1f} tok/s")
    m[2].metric(f"Speed-up ({got['label']})", f"{res['speedup_median']:.2f}×",
                help="median of the per-pair ratios: " + ", ".join(f"{r:.2f}" for r in res["ratios"]))
    m[3].metric(f"Ceiling at keep {keep:.2f}", f"{ceiling:.2f}×",
                help=f"1 / (1 - s (1 - keep)), s = the share of the bytes read per token that {method.name} "
                     f"can skip ({method.skips.replace('_', ' ')})")
    sliced = f", slicing the kept neurons {got['slice_ms']:.0f} ms" if method.sequence_level else ""
    st.caption(f"Prefill: {got['prefill_ms']:.0f} ms ({got['label']}{sliced}) vs {dense['prefill_ms']:.0f} ms dense; "
               f"last pair shown. {res['pairs']} alternating pairs on a shared machine: "
               "benchmarks/decode_speed.py reports more.")


def router_block(lm) -> bool:
    """True when the DejaVu router exists; else offer to train it (progress shown) and say why.
    After training the page is drawn again: the banner goes, the method is drawn."""
    if router.load_router(lm) is not None:
        return True
    st.info(f"DejaVu keeps what a small router predicts from the MLP input. {lm.name} has no trained "
            "router yet: training captures stored history if there is too little, then fits one "
            "predictor per layer (about 3 minutes for smollm2-135m on 2 cores).", icon=":material/model_training:")
    if st.button("Train router", key="train_router", icon=":material/model_training:"):
        bar = st.progress(0.0, text="training the DejaVu router")
        rep = router.train(lm, ui_store.store(), progress=lambda f, msg="": bar.progress(min(1.0, float(f)), text=msg))
        bar.empty()
        st.session_state["router_msg"] = (f"Router trained: recall of the true top-50% on held-out text "
                                          f"{rep['recall']:.1%}.")
        st.rerun()
    return False


# ---- the chosen methods, side by side ------------------------------------------------------------------

@dataclasses.dataclass
class Pick:
    name: str
    method: object
    params: dict
    waiting: list            # background jobs its masks wait for
    blocked: bool = False    # needs something the user must start (a router)


def picks(lm, rec, chosen: list[str], keep: float) -> list[Pick]:
    """The chosen methods at `keep` with the user's parameter edits (one expander for all)."""
    out = []
    with st.expander("Parameters: " + " · ".join(f"{n} ({ui_jobs.describe(build(n, keep, {}))})" for n in chosen)):
        for name in chosen:
            base = build(name, keep, {})
            st.caption(f"**{name}** — " + ui_text.md_escape(base.describe()["doc"]))
            edits = param_editor(name, base)
            method = build(name, keep, edits) if edits else base
            out.append(Pick(name, method, dataclasses.asdict(method.params), []))
    for p in out:
        if "router" in p.method.requires() and router.load_router(lm) is None:
            p.blocked = True
        else:
            p.waiting = ui_jobs.pending(lm, rec, p.name, p.params)
    return out


def grid(lm, rec, chosen: list[Pick], li: int, keep: float) -> dict[str, dict]:
    """One figure: each ready method's mask against the oracle for the same tokens and neurons;
    under it one card per method (recall of the oracle, kept share, precision, quality)."""
    T = rec.n_tokens
    t0 = 0
    if T > WINDOW_TOKENS:
        k = ui_state.url_state("mtok", 0, int, lambda v: isinstance(v, int) and 0 <= v <= T - WINDOW_TOKENS,
                               allowed=f"0–{T - WINDOW_TOKENS}")
        st.slider("Token window start (every method)", 0, T - WINDOW_TOKENS, key=k)
        t0 = ui_state.sync_url("mtok")
    rows = slice(t0, min(T, t0 + WINDOW_TOKENS))
    z = ui_reads.layer(rec.run_id, li)
    neurons = ui_reads.neuron_order(rec.run_id, li)[:GRID_NEURONS]
    labels = ui_text.token_labels(ui_reads.pieces(rec.run_id, rec.model))[rows]
    panels, stats = [], {}
    for p in chosen:
        if p.blocked or p.waiting:
            continue
        mask = ui_jobs.layer_mask(lm, rec, p.name, p.params, li)
        oracle = mask if p.name == "oracle" else ui_jobs.oracle_for(rec.run_id, li, mask)
        stats[p.name] = analysis.mask_agreement(mask, oracle)
        panels.append((p.name, f"{p.name} · recall {stats[p.name]['recall']:.0%} · kept {stats[p.name]['kept']:.0%}",
                       analysis.mask_categories(mask[rows][:, neurons], oracle[rows][:, neurons])))
    if panels:
        st.plotly_chart(charts.mask_grid(
            panels, labels, neurons, analysis.MASK_LABELS,
            f"Layer {li}, keep {keep:.2f}: tokens {rows.start}–{rows.stop - 1}, the {len(neurons)} most often "
            "active neurons; each method against the oracle keeping the same share", per_row=PER_ROW),
            width="stretch", key="grid")
    del z
    for start in range(0, len(chosen), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, p in zip(cols, chosen[start:start + PER_ROW]):
            with col, st.container(border=True):
                ui_errors.guard(lambda p=p: card(lm, rec, p, stats.get(p.name)))
    return stats


def card(lm, rec, p: Pick, agree: dict | None) -> None:
    st.markdown(f"**{p.name}** · {ui_jobs.describe(p.method)}")
    if p.blocked:
        router_block(lm)
        return
    if agree is None:
        ui_jobs.wait(p.waiting, f"card_{p.name}")
        return
    a, b = st.columns(2)
    a.metric("Recall of the oracle", f"{agree['recall']:.1%}",
             help="share of the neurons the oracle keeps (true top-k of |z| at the same share) that the method "
                  "keeps too")
    b.metric("Kept (this layer)", f"{agree['kept']:.1%}")
    a.metric("Precision", f"{agree['precision']:.1%}")
    res = find_eval(lm.name, p.name, p.params)
    b.metric("Perplexity ratio", "–" if res is None else f"{res['ppl_ratio']:.3f}",
             help=protocol_text(res) if res else f"not evaluated yet at these parameters ({protocol_text()})")
    got = ui_jobs.quality_if_done(rec, p.name, p.params)
    if got is not None:
        a.metric("KL on this prompt", f"{got['mean_kl']:.4f}",
                 help=f"mean over {got['n_scored']} tokens: {got['rule']}")
        b.metric("Perplexity ratio on this prompt", f"{got['ppl_ratio']:.3f}")


def per_layer(lm, rec, chosen: list[Pick]) -> dict[str, list[dict]]:
    """Recall of the oracle at every layer, one line per method (computed in the background)."""
    ready, jobs = {}, []
    for p in chosen:
        if p.blocked or p.waiting:
            continue
        job = ui_jobs.layer_stats(lm, rec, p.name, p.params)
        if job.done() and not job.failed():
            ready[p.name] = job.result()
        else:
            jobs.append(job)
    if ready:
        st.plotly_chart(charts.lines({n: np.array([r["recall"] for r in rows]) for n, rows in ready.items()},
                                     np.arange(rec.n_layers), "Recall of the oracle per layer", "layer", "recall",
                                     height=260, y_range=(0, 1.02)), width="stretch", key="recall_layers")
    if jobs:
        ui_jobs.wait(jobs, "per_layer")
    return ready


# ---- quality on the prompt itself ------------------------------------------------------------------

def prompt_block(lm, rec, chosen: list[Pick]) -> None:
    st.subheader("Quality on this prompt")
    scored = [p for p in chosen if p.name != "dense" and not p.blocked]
    left, right = st.columns([3, 2])
    with left:
        st.caption(f"Teacher-forced on this run's own {rec.n_tokens} tokens: each method's loss on every token "
                   "against dense, and KL(dense‖method) of the next-token distributions, so you see where it "
                   "hurts. Per-token methods act on tokens 1…T−1 (token 0, the attention sink, stays dense); "
                   "sequence-level methods (griffin, static) decide from the first half of the text and act on "
                   "the second half, as when generating after a prompt.")
        asked = st.session_state.setdefault("pq_asked", set())
        keys = [(rec.run_id, ui_jobs.method_key(p.name, p.params)) for p in scored]
        if not scored:
            st.caption("Pick a method other than dense.")
            return
        if not all(k in asked or ui_jobs.quality_if_done(rec, p.name, p.params) for k, p in zip(keys, scored)):
            if st.button(f"Score {', '.join(p.name for p in scored)} on this prompt", key="pq_run",
                         icon=":material/query_stats:",
                         help="one forward over the prompt per method, and one dense forward (about 1.5 s "
                              "each for 1024 tokens of smollm2 on 2 cores)"):
                asked.update(keys)
        ready, jobs = {}, []
        for k, p in zip(keys, scored):
            done = ui_jobs.quality_if_done(rec, p.name, p.params)
            if done is not None:
                ready[p.name] = done
            elif k in asked:
                jobs.append(ui_jobs.prompt_quality(lm, rec, p.name, p.params))
        if jobs:
            ui_jobs.wait(jobs, "prompt_quality")
        if ready:
            prompt_figures(rec, ready)
    with right:
        st.markdown("**Standard protocol** (stored)")
        rows = []
        for p in scored:
            res = find_eval(lm.name, p.name, p.params)
            rows.append({"method": p.name, "ppl ratio": None if res is None else res["ppl_ratio"],
                         "KL": None if res is None else res["kl"],
                         "top-1 agree": None if res is None else res["top1_agree"],
                         "windows": None if res is None else res.get("windows")})
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"ppl ratio": st.column_config.NumberColumn(format="%.3f"),
                                    "KL": st.column_config.NumberColumn(format="%.4f"),
                                    "top-1 agree": st.column_config.NumberColumn(format="percent")})
        st.caption(protocol_text().capitalize() + ". Not this prompt: the same text for every method, so "
                   "methods compare fairly. Evaluate a method below, in its section.")


def prompt_figures(rec, ready: dict[str, dict]) -> None:
    labels = ui_text.token_labels(ui_reads.pieces(rec.run_id, rec.model))
    what = st.radio("Per token", ["KL(dense‖method)", "extra loss (method − dense)"], horizontal=True,
                    key="pq_what")
    series = {n: (r["kl"] if what.startswith("KL") else r["loss"] - r["dense_loss"]) for n, r in ready.items()}
    st.plotly_chart(charts.per_token(series, labels, f"{what} on each token of the prompt", what),
                    width="stretch", key="pq_chart")
    shade = st.selectbox("Shade the text by", list(ready), key="pq_shade",
                         format_func=lambda n: f"{n}: {what}")
    values = series[shade]
    titles = [f"token {i}: " + ("not scored" if np.isnan(v) else f"{what} {v:.4f}") for i, v in enumerate(values)]
    st.html(ui_text.shaded_tokens(ui_reads.spans(rec.run_id, rec.model), np.where(values > 0, values, 0.0), titles))
    st.dataframe(pd.DataFrame([{"method": n, "mean KL": r["mean_kl"], "ppl ratio": r["ppl_ratio"],
                                "top-1 agree": r["top1"], "tokens scored": r["n_scored"], "where it acts": r["rule"]}
                               for n, r in ready.items()]), hide_index=True, width="stretch",
                 column_config={"mean KL": st.column_config.NumberColumn(format="%.4f"),
                                "ppl ratio": st.column_config.NumberColumn(format="%.3f"),
                                "top-1 agree": st.column_config.NumberColumn(format="percent")})


# ---- one method in depth ----------------------------------------------------------------------------

def details(lm, rec, p: Pick, stats: list[dict] | None) -> None:
    st.caption(" · ".join(f"{k}: {v}" for k, v in p.method.describe().items() if k != "params"))
    st.markdown("**Quality** (standard protocol)")
    quality_block(lm, p.method, p.params)
    st.markdown("**Generation and timing**")
    if isinstance(p.params.get("keep"), (int, float)):
        effective = float(p.params["keep"])
    elif stats is not None:   # a threshold method: its ceiling is at the share it actually kept here
        effective = float(np.mean([r["kept"] for r in stats]))
    else:
        st.caption("Waiting for the share it keeps at every layer (above).")
        return
    generation_block(lm, rec, p.method, p.params, effective)


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
    if "router_msg" in st.session_state:
        st.success(st.session_state.pop("router_msg"), icon=":material/check_circle:")
    names = list(methods.REGISTRY)
    raw = st.query_params.get("method")
    if "url_method" not in st.session_state and raw:
        unknown = [n for n in raw.split(",") if n and n not in names]
        if unknown:
            ui_state.notice("method", f"The link's method {', '.join(unknown)} is not registered on this server "
                                      f"(registered: {', '.join(names)}); left out.",
                            [n for n in raw.split(",") if n in names])
    c1, c2, c3 = st.columns([3, 2, 2])
    k_m = ui_state.url_state("method", [n for n in DEFAULT_METHODS if n in names],
                             lambda s: [n for n in dict.fromkeys(s.split(",")) if n in names],
                             lambda v: isinstance(v, list) and all(n in names for n in v))
    c1.multiselect("Methods", names, key=k_m,
                   help="side by side for the same layer and tokens; dense is the reference, the oracle "
                        "(each token's true top-k of |z|) the upper bound")
    chosen = ui_state.sync_url("method", ",".join)
    k_keep = ui_state.url_state("keep", 0.5, float, lambda v: 0.05 <= v <= 1.0 and abs(v * 20 - round(v * 20)) < 1e-6,
                                allowed="0.05–1.0 in steps of 0.05")
    c2.slider("keep (fraction of neurons)", 0.05, 1.0, step=0.05, key=k_keep)
    keep = round(ui_state.sync_url("keep"), 2)
    k_layer = ui_state.url_state("layer", min(rec.n_layers - 1, rec.n_layers // 2), int,
                                 lambda v: isinstance(v, int) and 0 <= v < rec.n_layers,
                                 allowed=f"0–{rec.n_layers - 1}")
    c3.slider("Layer", 0, rec.n_layers - 1, key=k_layer)
    li = ui_state.sync_url("layer")
    ui_jobs.prefetch_methods(rec)  # here at once: this page reads it
    if not chosen:
        st.info("Pick one or more methods.", icon=":material/info:")
        return
    lm = ui_store.model(rec.model)
    if rec.mode == "parallel":
        st.caption("Masks are computed on the prompt as one sequence (methods see the sequence).")
    chosen_picks = picks(lm, rec, chosen, keep)
    grid(lm, rec, chosen_picks, li, keep)
    stats = per_layer(lm, rec, chosen_picks)
    prompt_block(lm, rec, chosen_picks)
    st.subheader("Each method: standard quality, generation and timing")
    for p in chosen_picks:
        if p.blocked:
            continue
        # keyed and tracked: it stays open across reruns, also when a progress bar above it comes
        # or goes (an untracked one could be drawn afresh, closed, under the user's click); drawn
        # only while open, as the browser lays out a closed box's contents too, on every rerun
        box = st.expander(f"{p.name} · {ui_jobs.describe(p.method)}", expanded=len(chosen_picks) == 1,
                          key=f"details_{p.name}", on_change="rerun")
        with box:
            if box.open:
                ui_errors.guard(lambda p=p: details(lm, rec, p, stats.get(p.name)))


ui_errors.guard(main, what="methods")
