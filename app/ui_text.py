"""How values and user text are shown: figures, token labels, the run header."""
from __future__ import annotations

import re

import streamlit as st


def md_escape(text: str) -> str:
    """User text shown as plain text inside Markdown (no links, images or HTML from a prompt)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|~$:])", r"\\\1", text)


def context_label(mode: str, prefix: str) -> str:
    """The context a run's tokens followed: 'each after «⏎»' (parallel), 'after «…»' (a
    sequential prefix), or '' (none)."""
    if not prefix:
        return ""
    shown = prefix if len(prefix) <= 60 else prefix[:60] + "…"
    shown = shown.replace("\n", "⏎").replace("\t", "⇥")
    return f"{'each token after' if mode == 'parallel' else 'after'} «{shown}»"


def run_header(rec) -> None:
    text = rec.text if len(rec.text) <= 240 else rec.text[:240] + "…"
    ctx = context_label(rec.mode, rec.prefix)
    st.markdown(f"**Run** `{rec.run_id}` · {md_escape(rec.model)} · {rec.mode}"
                f"{' (' + md_escape(ctx) + ')' if ctx else ''} · {rec.n_tokens} tokens · "
                f"{rec.n_layers} layers × {rec.d_ff} neurons · {rec.dtype}")
    st.caption(md_escape(text.replace("\n", " ⏎ ")))


def pct(v: float) -> str:
    """A share as a percentage, or a dash when it is undefined (e.g. one-token prompts)."""
    return "–" if v != v else f"{v:.1%}"


def shaded_tokens(spans, score, titles: list[str], top: list[int] | None = None,
                  colour: str = "231,111,81", skip: set[int] | None = None) -> str:
    """The text as HTML from its display spans (`tokens_display.Span`: a cut character's pieces
    drawn once), each shaded by its tokens' highest score (NaN, or a position in `skip`: not
    shaded), titled (hover) by `titles[start]`, the `top` positions boxed and ranked. Every
    piece is escaped: a prompt's own HTML stays text. Pages show it with `st.html` (sanitised, and
    no markdown pass, which for a 1024-token run was a large share of the page's drawing time)."""
    import html

    import numpy as np

    s = np.asarray(score, dtype=float).copy()
    for i in skip or ():
        s[i] = np.nan
    finite = np.isfinite(s)
    peak = float(np.max(np.maximum(s[finite], 0))) if finite.any() else 0.0
    rank = {p: r + 1 for r, p in enumerate(top or [])}
    out = []
    for sp in spans:
        text = html.escape(sp.text).replace("\n", "⏎<br>").replace("  ", "&nbsp; ")
        got = s[sp.start:sp.end][finite[sp.start:sp.end]]
        style = "padding: 1px 0;"
        if got.size:
            v = float(np.sqrt(max(float(got.max()), 0.0) / max(peak, 1e-12)))
            style = f"background: rgba({colour},{0.08 + 0.8 * v:.2f}); border-radius: 3px; padding: 1px 0;"
        marked = [p for p in range(sp.start, sp.end) if p in rank]
        if marked:
            style += " outline: 2px solid #264653; font-weight: 600;"
            text += f"<sup style='color:#264653'>#{rank[marked[0]]}</sup>"
        out.append(f"<span title='{html.escape(titles[sp.start])}' style='{style}'>{text}</span>")
    return ("<div style='line-height: 2.1; font-family: ui-monospace, monospace; font-size: 0.9rem; "
            "max-height: 320px; overflow-y: auto'>" + "".join(out) + "</div>")


def token_labels(pieces: list[str]) -> list[str]:
    """Unique, readable axis labels: '12 ▸ cat' (position first, so repeated words stay apart)."""
    out = []
    for i, p in enumerate(pieces):
        shown = p.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"
        out.append(f"{i} ▸ {shown[:14]}")
    return out
