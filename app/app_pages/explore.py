"""Explore: capture a prompt, then look at one layer's token-by-neuron activations. The layer view
is a fragment: its controls redraw it alone, not the page around it."""
from __future__ import annotations


import re

import numpy as np
import streamlit as st

import moyu_charts as charts
import ui_clicks
import ui_errors
import ui_jobs
import ui_reads
import ui_state
import ui_store
import ui_text
from moyu_core import analysis, models, wordlists
from moyu_core.errors import MoyuError
from moyu_core.tokens_display import per_token

WINDOW_TOKENS = 48        # rows of the detailed heatmap
WIDTHS = [128, 256, 512, 768]  # neurons (columns) of the detailed heatmap
OVERVIEW_ROWS, OVERVIEW_COLS = 128, 256  # pooled overview: at most 32k cells
NORM_NAMES = {"raw": "raw z", "abs": "|z|", "token": "per-token normalised"}
CLIPS = [100.0, 99.9, 99.5, 99.0, 95.0]  # colour scale ends at this percentile of |values|
MAX_TOKENS_CAP = 4096  # capture keeps each layer's attention weights: memory grows with length squared


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
    names = ui_store.available_models()
    name = c1.selectbox("Model", names, index=ui_store.default_model_index(names), key="capture_model")
    mode = c2.radio("Input manner", ["sequential", "parallel"], horizontal=True, key="capture_mode",
                    help="sequential: one sequence. parallel: each token alone after the prefix.")
    prefix = c3.text_input("Prefix (optional)", key="capture_prefix",
                           help="Shared prefix; in parallel mode every token sees only it")
    go = c4.button("Capture", type="primary", icon=":material/play_arrow:", width="stretch", key="capture")
    with st.expander("Advanced options"):
        st.number_input("Max tokens", 16, MAX_TOKENS_CAP, min(models.DEFAULT_MAX_TOKENS, MAX_TOKENS_CAP), step=256,
                        key="capture_max_tokens",
                        help=f"The longest prompt this capture accepts (at most {MAX_TOKENS_CAP:,}): a capture "
                             "keeps every layer's attention weights, so its memory grows with the square of "
                             "the length (about 2.5 GB at 4,096 tokens for smollm2-135m).")
    if go:
        capture(name, mode, prefix)


def capture(name: str, mode: str, prefix: str) -> None:
    """Capture the prompt box into the store (checks first), then show the new run. A refusal is
    kept in `capture_error` and shown in plain view under the form."""
    from moyu_core.models import check_text
    from moyu_core.runs import capture_run

    st.session_state.pop("capture_error", None)
    text = st.session_state["prompt_text"]
    limit = int(st.session_state.get("capture_max_tokens") or models.DEFAULT_MAX_TOKENS)
    try:
        check_text(text)
        if prefix:
            check_text(prefix)
    except MoyuError as e:
        st.session_state["capture_error"] = str(e)
        return
    lm = ui_store.model(name)
    n = len(lm.bos_ids) + len(lm.tokenizer(text, add_special_tokens=False)["input_ids"]) if lm.tokenizer else 0
    if n > limit:
        more = (f"Raise **Max tokens** under **Advanced options** (up to {MAX_TOKENS_CAP:,})"
                if limit < MAX_TOKENS_CAP else f"This server captures at most {MAX_TOKENS_CAP:,} tokens")
        st.session_state["capture_error"] = (f"The prompt is {n:,} tokens; the limit is {limit}. "
                                             f"{more}, or shorten the prompt.")
        return
    with st.status("Capturing…", expanded=True) as status:
        bar = st.progress(0.0, text="forward pass with hooks")
        try:
            res = capture_run(lm, ui_store.store(), text, mode=mode, prefix=prefix, max_tokens=limit,
                              progress=lambda f: bar.progress(min(1.0, float(f)), text=f"{f:.0%} of tokens"))
        except MoyuError as e:
            status.update(label="Not captured", state="error")
            st.session_state["capture_error"] = str(e).replace("(--max-tokens)", "(Max tokens, under Advanced options)")
            return
        status.update(label="stored", state="complete")
    ui_state.set_run(res.run_id)
    st.session_state["captured_msg"] = (f"{'Cache hit' if res.cached else 'Captured'}: {res.tokens} tokens × "
                                        f"{res.layers} layers × {res.neurons} neurons")
    st.rerun()


# ---- one layer ----------------------------------------------------------------------------------------

def _select(token: int | None, neuron: int | None) -> None:
    if token is not None:
        st.session_state["url_token"] = token
    if neuron is not None:
        st.session_state["url_neuron"] = neuron


def _clicked(cell: dict) -> None:
    """A clicked heatmap cell: the detailed view's names its token ("12 ▸ cat") and neuron
    ("n345"); an overview block carries its strongest token and neuron (customdata)."""
    data = cell.get("customdata")
    if isinstance(data, list) and len(data) >= 2:
        _select(int(data[0]), int(data[1]))
        return
    token = re.match(r"\s*(\d+)\s*▸", str(cell.get("y")))
    neuron = re.fullmatch(r"n(\d+)", str(cell.get("x")))
    _select(int(token.group(1)) if token else None, int(neuron.group(1)) if neuron else None)


def _clear_selection() -> None:
    st.session_state["url_token"] = None
    st.session_state["url_neuron"] = None


def neurons_link(rec, li: int, neuron: int) -> None:
    """A link to this neuron's dashboard on the Neurons page."""
    st.page_link("app_pages/neurons.py", label=f"Open neuron {neuron} of layer {li} in Neurons",
                 icon=":material/open_in_new:",
                 query_params={"run": rec.run_id, "layer": str(li), "neuron": str(neuron)})


def _block_labels(texts: list[str], edges: np.ndarray) -> list[str]:
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        words = "".join(texts[a:b]).replace("\n", "⏎")
        words = words if len(words) <= 28 else words[:27] + "…"
        out.append(f"{a}–{b - 1} «{words}»" if b - a > 1 else f"{a} «{words}»")
    return out


def _selection_panel(rec, li: int, z: np.ndarray, labels: list[str], token, neuron, first: int) -> None:
    T, D = z.shape
    parts = []
    if token is not None:
        parts.append(f"token **{token}** «{ui_text.md_escape(labels[token].split('▸', 1)[-1].strip())}»")
    if neuron is not None:
        parts.append(f"neuron **{neuron}**")
    if token is not None and neuron is not None:
        rank = int((np.abs(z[token]) > abs(z[token, neuron])).sum()) + 1
        parts.append(f"z = {z[token, neuron]:.4f} (|z| rank {rank} of {D} in this token)")
    c1, c2 = st.columns([5, 1], vertical_alignment="center")
    c1.markdown("**Selected:** " + " · ".join(parts))
    c2.button("Clear selection", on_click=_clear_selection, key="clear_selection")
    if neuron is not None:
        values = z[:, neuron].astype(float).copy()
        values[:first] = np.nan
        fig = charts.per_token({f"neuron {neuron}": values}, labels, f"Layer {li}: neuron {neuron} over the tokens",
                               "z", height=220, marked=token)
        fig.update_yaxes(rangemode="normal")
        st.plotly_chart(fig, width="stretch", key="neuron_line")
        neurons_link(rec, li, neuron)


def _layer_view(rec) -> None:
    L, T, D = rec.n_layers, rec.n_tokens, rec.d_ff
    c1, c2, c3 = st.columns([3, 2.4, 1.6])
    k_layer = ui_state.url_state("layer", min(L - 1, L // 2), int, lambda v: isinstance(v, int) and 0 <= v < L,
                                 allowed=f"0–{L - 1}")
    c1.slider("Layer", 0, L - 1, key=k_layer)
    li = ui_state.sync_url("layer")
    k_norm = ui_state.url_state("norm", "token", str, lambda v: v in analysis.NORMALISATIONS,
                                allowed=", ".join(analysis.NORMALISATIONS))
    c2.radio("Values", analysis.NORMALISATIONS, key=k_norm, horizontal=True, format_func=NORM_NAMES.get,
             help="per-token normalised: |z| divided by the token's largest |z| (as in the paper)")
    norm = ui_state.sync_url("norm")
    k_order = ui_state.url_state("order", "frequency", str, lambda v: v in analysis.ORDERS,
                                 allowed=", ".join(analysis.ORDERS))
    c3.radio("Neuron order", analysis.ORDERS, key=k_order, horizontal=True,
             format_func={"index": "index", "frequency": "by activation count"}.get,
             help="by activation count: neurons in most tokens' top 10% first; inertia shows as bands")
    order = ui_state.sync_url("order")

    d1, d2, d3, d4 = st.columns([2.2, 1.6, 1.2, 1.2], vertical_alignment="bottom")
    k_clip = ui_state.url_state("clip", 99.5, float, lambda v: v in CLIPS, allowed=", ".join(map(str, CLIPS)))
    d1.select_slider("Colour scale ends at", CLIPS, key=k_clip,
                     format_func=lambda v: "the largest value" if v >= 100 else f"{v:g}th percentile of |z|",
                     help="Values beyond the end are drawn in the end colour, so the attention sink's "
                          "massive values do not turn the rest of the layer dark")
    clip = ui_state.sync_url("clip")
    k_sink = ui_state.url_state("hide0", False, lambda s: s in ("1", "True", "true"), lambda v: isinstance(v, bool))
    d2.toggle("Hide token 0 (attention sink)", key=k_sink,
              help="token 0 leaves the heatmaps, the colour scale and the inertia figures")
    first = 1 if ui_state.sync_url("hide0", lambda v: "1" if v else "0") and T > 1 else 0
    k_tok = ui_state.url_state("token", None, int, lambda v: v is None or (isinstance(v, int) and first <= v < T),
                               allowed=f"{first}–{T - 1}")
    d3.number_input("Token", first, T - 1, key=k_tok, step=1, placeholder="select…",
                    help="select a token (or click a heatmap cell)")
    token = ui_state.sync_url("token")
    k_neuron = ui_state.url_state("neuron", None, int, lambda v: v is None or (isinstance(v, int) and 0 <= v < D),
                                  allowed=f"0–{D - 1}")
    d4.number_input("Find neuron", 0, D - 1, key=k_neuron, step=1, placeholder="neuron id…",
                    help="jump to a neuron by its id (or click a heatmap cell)")
    neuron = ui_state.sync_url("neuron")

    z = ui_reads.layer(rec.run_id, li)  # (T, d_ff)
    labels = ui_text.token_labels(ui_reads.pieces(rec.run_id, rec.model))
    perm = ui_reads.neuron_order(rec.run_id, li, order)
    signed = norm == "raw"
    limit = ui_reads.colour_limit(rec.run_id, li, norm, first, clip)
    where = np.empty(D, np.int64)
    where[perm] = np.arange(D)   # display position of each neuron id

    left, right = st.columns([4, 1])
    with right:
        inert = ui_reads.inertia(rec.run_id, li, first == 1)
        st.markdown(f"**Inertia, layer {li}**" + (" (token 0 left out)" if first else ""))
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
        shown_T = T - first
        if shown_T > WINDOW_TOKENS or D > 512:
            key = (ui_store.db_path(), rec.run_id, li, norm, order, first)
            pooled, re_, ce, rows, cols = ui_reads.POOLED.get_or_put(
                key, lambda: analysis.pool2d_strongest(analysis.normalise(z[first:], norm)[:, perm],
                                                       OVERVIEW_ROWS, OVERVIEW_COLS))
            strongest = np.stack([rows + first, perm[cols]], axis=-1)   # (R, C, 2): token, neuron id
            strongest = strongest.astype(np.int16 if max(T, D) < 2**15 else np.int32)
            texts = [t if k == 1 else "" for t, k, _ in per_token(ui_reads.spans(rec.run_id, rec.model))]
            with st.container(key="overview_box"):
                st.plotly_chart(charts.image_overview(
                    pooled, re_ + first, ce,
                    f"Layer {li}: all {T} tokens × {D} neurons (pooled, strongest value per block; click a block)",
                    signed, x_title=f"neuron ({order} order)", height=min(340, 120 + 12 * len(re_)), limit=limit,
                    row_labels=_block_labels(texts, re_ + first), strongest=strongest), width="stretch", key="overview")
            ui_clicks.on_cell_click("overview_box", _clicked)
        w0, w1, w2 = st.columns([2, 1, 2]) if shown_T > WINDOW_TOKENS else (None, *st.columns([1, 2]))
        _follow_selection(rec, li, order, token, neuron, where, first)
        t0 = first
        if shown_T > WINDOW_TOKENS:
            k_tok0 = ui_state.url_state("tok", first, int,
                                        lambda v: isinstance(v, int) and first <= v <= T - WINDOW_TOKENS,
                                        allowed=f"{first}–{T - WINDOW_TOKENS}")
            w0.slider("Token window start", first, T - WINDOW_TOKENS, step=1, key=k_tok0)
            t0 = ui_state.sync_url("tok")
        k_w = ui_state.url_state("width", 256, int, lambda v: v in WIDTHS, allowed=", ".join(map(str, WIDTHS)))
        w1.select_slider("Neurons in the detailed view", WIDTHS, key=k_w)
        width = min(ui_state.sync_url("width"), D)
        n0 = 0
        if D > width:
            k_n0 = ui_state.url_state("nstart", 0, int, lambda v: isinstance(v, int) and 0 <= v <= D - width and v % 16 == 0,
                                      allowed=f"multiples of 16 in 0–{D - width}")
            w2.slider("Neuron window start (display order)", 0, D - width, step=16, key=k_n0)
            n0 = ui_state.sync_url("nstart")
        rows_ = slice(t0, min(T, t0 + WINDOW_TOKENS))
        window = analysis.normalise(z[rows_], norm)[:, perm[n0:n0 + width]]   # normalised per token
        sel_row = token - t0 if token is not None and t0 <= token < rows_.stop else None
        sel_col = int(where[neuron]) - n0 if neuron is not None and n0 <= where[neuron] < n0 + width else None
        with st.container(key="detail_box"):
            st.plotly_chart(charts.window_heatmap(
                window, labels[rows_], perm[n0:n0 + width],
                f"Layer {li}: tokens {rows_.start}–{rows_.stop - 1}, neurons {n0}–{n0 + width - 1} "
                f"({order} order, {NORM_NAMES[norm]})",
                signed, limit=limit, selected=(sel_row, sel_col)), width="stretch", key="detail")
        ui_clicks.on_cell_click("detail_box", _clicked)
        if token is not None or neuron is not None:
            _selection_panel(rec, li, z, labels, token, neuron, first)
    share_box(rec)


def _follow_selection(rec, li: int, order: str, token, neuron, where: np.ndarray, first: int) -> None:
    """When the selection changes, move the detailed view's windows to show it (before their
    sliders are drawn); afterwards the user may scroll away."""
    sel = (rec.run_id, li, order, token, neuron)
    if st.session_state.get("_followed") == sel:
        return
    st.session_state["_followed"] = sel
    T, D = rec.n_tokens, rec.d_ff
    if token is not None and T - first > WINDOW_TOKENS:
        t0 = st.session_state.get("url_tok", first)
        if not (t0 <= token < t0 + WINDOW_TOKENS):
            st.session_state["url_tok"] = int(min(max(first, token - WINDOW_TOKENS // 2), T - WINDOW_TOKENS))
    width = min(int(st.session_state.get("url_width", 256)), D)
    if neuron is not None and D > width:
        n0, pos = int(st.session_state.get("url_nstart", 0)), int(where[neuron])
        if not (n0 <= pos < n0 + width):
            st.session_state["url_nstart"] = int(min(pos // 16 * 16, (D - width) // 16 * 16))


@st.fragment
def layer_view(rec) -> None:
    ui_errors.guard(lambda: _layer_view(rec), what="explore:layer")


def all_layers(rec) -> None:
    # drawn only while open (a tracked expander reruns the page when toggled): for a long run its
    # background job and progress bar would otherwise compete with every click on the page
    box = st.expander("All layers", expanded=rec.n_tokens <= 256, key="all_layers", on_change="rerun")
    with box:
        if not box.open:
            return
        if rec.n_tokens > 256:   # every layer's inertia: seconds for a long run, so in the background
            job = ui_jobs.overview(rec)
            if not ui_jobs.wait([job], "overview"):
                return
        ov = ui_reads.overview(rec.run_id, rec.n_layers)
        freq = ov["frequency"]  # (L, d_ff)
        ranked = -np.sort(-freq, axis=1)
        pooled, re_, ce = analysis.pool2d(ranked, freq.shape[0], charts.MAX_CELLS // freq.shape[0])
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.image_overview(
            pooled, re_, ce, "Activation frequency per layer (neurons ranked)",
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
    with st.expander("New capture", expanded=not known or "capture_error" in st.session_state):
        capture_form()
    if "capture_error" in st.session_state:
        st.error(st.session_state["capture_error"], icon=":material/error:")
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
    ui_jobs.prefetch_methods(rec)


ui_errors.guard(main, what="explore")
