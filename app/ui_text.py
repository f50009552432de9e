"""How values and user text are shown: figures, token labels, the run header."""
from __future__ import annotations

import re

import streamlit as st


def md_escape(text: str) -> str:
    """User text shown as plain text inside Markdown (no links, images or HTML from a prompt)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|~$:])", r"\\\1", text)


def run_header(rec) -> None:
    text = rec.text if len(rec.text) <= 240 else rec.text[:240] + "…"
    st.markdown(f"**Run** `{rec.run_id}` · {md_escape(rec.model)} · {rec.mode} · {rec.n_tokens} tokens · "
                f"{rec.n_layers} layers × {rec.d_ff} neurons · {rec.dtype}")
    st.caption(md_escape(text.replace("\n", " ⏎ ")))


def pct(v: float) -> str:
    """A share as a percentage, or a dash when it is undefined (e.g. one-token prompts)."""
    return "–" if v != v else f"{v:.1%}"


def token_labels(pieces: list[str]) -> list[str]:
    """Unique, readable axis labels: '12 ▸ cat' (position first, so repeated words stay apart)."""
    out = []
    for i, p in enumerate(pieces):
        shown = p.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "·") or "∅"
        out.append(f"{i} ▸ {shown[:14]}")
    return out
