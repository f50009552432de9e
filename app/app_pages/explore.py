"""Explore: capture a prompt, then look at one layer's token-by-neuron activations."""
from __future__ import annotations

import numpy as np
import streamlit as st

import moyu_charts as charts
import ui_errors
import ui_jobs
import ui_reads
import ui_state
import ui_store
import ui_text
from moyu_core import analysis, wordlists
from moyu_core.errors import MoyuError

WINDOW_TOKENS = 48        # rows of the detailed heatmap
WIDTHS = [128, 256, 512, 768]  # neurons (columns) of the detailed heatmap
OVERVIEW_ROWS, OVERVIEW_COLS = 128, 256  # pooled overview: at most 32k cells


def _fill(text: str) -> None:
    st.session_state["prompt_text"] = text


def _fill_random() -> None:
    n, seed = int(st.session_state.get("rw_n", 30)), int(st.session_state.get("rw_seed", 0))
    st.session_state["prompt_text"] = wordlists.random_word_list(n, seed)


def capture_form() -> None:
    st.session_state.setdefault("prompt_text", wordlists.EXAMPLE_PROMPTS["Sentence"])
    st.caption("Examples")
    cols = st.columns(len(wordlists.EXAMPLE_PROMPTS) + 1)
    for col, (name, text) in zip(cols, wordlists.EXAMPLE_PROMPTS.items()):
        col.button(name, on_click=_fill, args=(text,), width="stretch", key=f"ex_{name}")
    cols[-1].button("Long (~1k tokens)", on_click=_fill, args=(wordlists.reference_text(4500),),
                    width="stretch", key="ex_long",
                    help="English reference prose from Python's pydoc_data, about 1000 tokens")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.number_input("Words", 2, 500, 30, key="rw_n", width=120)
        st.number_input("Seed", 0, 10**6, 0, key="rw_seed", width=120)
        st.button("Random word list", on_click=_fill_random, icon=":material/shuffle:", key="random_words",
                  help="The paper's Figure 2 control: a seeded list of unrelated words")
    st.text_area("Prompt", key="prompt_text", height=110, max_chars=200_000)
    c1, c2, c3, c4 = st.columns([2, 2, 3, 1.2], vertical_alignment="bottom")
    models = ui_store.available_models()
    name = c1.selectbox("Model", models, index=ui_store.default_model_index(models), key="capture_model")
    mode = c2.radio("Input manner", ["sequential", "parallel"], horizontal=True, key="capture_mode",
                    help="sequential: one sequence. parallel: each token alone after the prefix.")
    prefix = c3.text_input("Prefix (optional)", key="capture_prefix",
                           help="Shared prefix; in parallel mode every token sees only it")
    go = c4.button("Capture", type="primary", icon=":material/play_arrow:", width="stretch", key="capture")
    if go:
        capture(name, mode, prefix)


def capture(name: str, mode: str, prefix: str) -> None:
    """Capture the prompt box into the store (checks first), then show the new run."""
    from moyu_core.models import check_text
    from moyu_core.runs import capture_run

    text = st.session_state["prompt_text"]
    try:
        check_text(text)
        if prefix:
            check_text(prefix)
    except MoyuError as e:
        st.error(str(e), icon=":material/error:")
        return
    lm = ui_store.model(name)
    with st.status("Capturing…", expanded=True) as status:
        bar = st.progress(0.0, text="forward pass with hooks")
        try:
            res = capture_run(lm, ui_store.store(), text, mode=mode, prefix=prefix,
                              progress=lambda f: bar.progress(min(1.0, float(f)), text=f"{f:.0%} of tokens"))
        except MoyuError as e:
            status.update(label="Not captured", state="error", expanded=False)
            st.error(str(e), icon=":material/error:")
            return
        status.update(label="stored", state="complete")
    ui_state.set_run(res.run_id)
    st.session_state["captured_msg"] = (f"{'Cache hit' if res.cached else 'Captured'}: {res.tokens} tokens × "
                                        f"{res.layers} layers × {res.neurons} neurons")
    st.rerun()


def layer_view(rec) -> None:
    L, T, D = rec.n_layers, rec.n_tokens, rec.d_ff
    c1, c2, c3 = st.columns([3, 2.4, 1.6])
    k_layer = ui_state.url_state("layer", min(L - 1, L // 2), int, lambda v: isinstance(v, int) and 0 <= v < L)
    c1.slider("Layer", 0, L - 1, key=k_layer)
    li = ui_state.sync_url("layer")
    k_norm = ui_state.url_state("norm", "token", str, lambda v: v in analysis.NORMALISATIONS)
    c2.radio("Values", analysis.NORMALISATIONS, key=k_norm, horizontal=True,
             format_func={"raw": "raw z", "abs": "|z|", "token": "per-token normalised"}.get,
             help="per-token normalised: |z| divided by the token's largest |z| (as in the paper)")
    norm = ui_state.sync_url("norm")
    k_order = ui_state.url_state("order", "frequency", str, lambda v: v in analysis.ORDERS)
    c3.radio("Neuron order", analysis.ORDERS, key=k_order, horizontal=True,
             format_func={"index": "index", "frequency": "by activation count"}.get,
             help="by activation count: neurons in most tokens' top 10% first; inertia shows as bands")
    order = ui_state.sync_url("order")

    z = ui_reads.layer(rec.run_id, li)  # (T, d_ff)
    pieces = [p for _, p in ui_reads.tokens(rec.run_id)]
    perm = analysis.neuron_order(z, order)
    vals = analysis.normalise(z, norm)[:, perm]  # (T, d_ff) in display order
    signed = norm == "raw"

    left, right = st.columns([4, 1])
    with right:
        inert = analysis.inertia(z)
        st.markdown(f"**Inertia, layer {li}**")
        st.metric("Adjacent top-10% overlap", ui_text.pct(inert.adjacent_overlap),
                  delta=None if inert.n_tokens < 2 else f"{inert.adjacent_overlap - inert.random_overlap:+.1%} vs random",
                  help="mean share of token t's top-10% neurons that were in token t-1's top 10%; "
                       "random sets would overlap by 10%")
        st.metric("Overlap with history", ui_text.pct(inert.history_overlap),
                  help="mean share of token t's top-10% neurons already active for some earlier token")
        st.metric("All-pairs overlap", ui_text.pct(inert.pairwise_overlap))
        st.metric("Neurons ever in a top 10%", ui_text.pct(inert.union_share),
                  help="share of the layer's neurons in at least one token's top 10%")
    with left:
        if T > WINDOW_TOKENS or D > 512:
            pooled, re, ce = analysis.pool2d(vals, OVERVIEW_ROWS, OVERVIEW_COLS)
            st.plotly_chart(charts.image_overview(
                pooled, re, ce, f"Layer {li}: all {T} tokens × {D} neurons (pooled, strongest value per block)",
                signed, x_title=f"neuron ({order} order)", height=min(340, 120 + 12 * len(re))),
                width="stretch")
        w0, w1, w2 = st.columns([2, 1, 2]) if T > WINDOW_TOKENS else (None, *st.columns([1, 2]))
        t0 = 0
        if T > WINDOW_TOKENS:
            k_tok = ui_state.url_state("tok", 0, int, lambda v: isinstance(v, int) and 0 <= v <= T - WINDOW_TOKENS)
            w0.slider("Token window start", 0, T - WINDOW_TOKENS, step=1, key=k_tok)
            t0 = ui_state.sync_url("tok")
        k_w = ui_state.url_state("width", 256, int, lambda v: v in WIDTHS)
        w1.select_slider("Neurons in the detailed view", WIDTHS, key=k_w)
        width = min(ui_state.sync_url("width"), D)
        n0 = 0
        if D > width:
            k_n0 = ui_state.url_state("nstart", 0, int, lambda v: isinstance(v, int) and 0 <= v <= D - width and v % 16 == 0)
            w2.slider("Neuron window start (display order)", 0, D - width, step=16, key=k_n0)
            n0 = ui_state.sync_url("nstart")
        rows = slice(t0, min(T, t0 + WINDOW_TOKENS))
        window = vals[rows, n0:n0 + width]
        labels = ui_text.token_labels(pieces)[rows]
        st.plotly_chart(charts.window_heatmap(
            window, labels, perm[n0:n0 + width],
            f"Layer {li}: tokens {rows.start}–{rows.stop - 1}, neurons {n0}–{n0 + width - 1} ({order} order)",
            signed), width="stretch", key="detail")


def all_layers(rec) -> None:
    with st.expander("All layers", expanded=rec.n_tokens <= 256):
        ov = ui_reads.overview(rec.run_id, rec.n_layers)
        freq = ov["frequency"]  # (L, d_ff)
        ranked = -np.sort(-freq, axis=1)
        pooled, re, ce = analysis.pool2d(ranked, freq.shape[0], charts.MAX_CELLS // freq.shape[0])
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.image_overview(
            pooled, re, ce, "Activation frequency per layer (neurons ranked)",
            False, x_title="neuron rank", y_title="layer", height=300), width="stretch")
        rows = ov["inertia"]
        x = np.arange(len(rows))
        c2.plotly_chart(charts.lines(
            {"adjacent overlap": np.array([r["adjacent_overlap"] for r in rows]),
             "overlap with history": np.array([r["history_overlap"] for r in rows]),
             "random sets": np.array([r["random_overlap"] for r in rows])},
            x, "Inertia per layer (top-10% sets)", "layer", "overlap"), width="stretch")


def share_box(rec) -> None:
    st.caption("Link to this view (same server)")
    st.code(ui_state.share_link({"run": rec.run_id, **{k: v for k, v in st.query_params.items() if k != "run"}},
                          "explore"), language=None)


def main() -> None:
    st.title("Explore")
    rid = ui_state.current_run()
    known = bool(rid) and ui_store.store().has_run(rid)
    with st.expander("New capture", expanded=not known):
        capture_form()
    rid = st.session_state.get("run_id")
    if not rid:
        st.info("Type a prompt and press **Capture**: every token's MLP activations (the input of "
                "`down_proj`) are stored for every layer.", icon=":material/info:")
        return
    rec = ui_reads.run_record(rid)
    if rec is None:
        return
    if "captured_msg" in st.session_state:
        st.toast(st.session_state.pop("captured_msg"), icon=":material/check_circle:")
    ui_text.run_header(rec)
    layer_view(rec)
    all_layers(rec)
    share_box(rec)
    ui_jobs.prefetch_methods(rec)


ui_errors.guard(main)
