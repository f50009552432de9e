"""Tokens as whole characters, for display only.

A byte-level BPE (SmolLM2, GPT-2) or a byte-fallback tokenizer (Gemma) may cut one character
into several tokens; each of those decodes alone to the replacement character "�". For display,
consecutive pieces are merged until they decode to valid text: an emoji cut in two shows as one
emoji spread over both positions. Pure: the caller passes the tokenizer's `decode`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

REPLACEMENT = "\ufffd"
MAX_SPAN = 8  # a UTF-8 character has at most 4 bytes; a byte-fallback piece is one byte


@dataclass(frozen=True)
class Span:
    """Tokens start..end-1 shown together as `text`."""

    start: int
    end: int
    text: str


def merge_byte_pieces(ids: Sequence[int], decode: Callable[[list[int]], str],
                      max_span: int = MAX_SPAN) -> list[Span]:
    """Spans covering every position in order. A piece whose text has more replacement
    characters than its group would have is extended with the following pieces until the joint
    text has none left from the cut (at most `max_span` pieces); a piece that never resolves
    stays alone (so a "�" that is in the text itself shows as its byte pieces)."""
    ids = list(ids)
    out: list[Span] = []
    i = 0
    while i < len(ids):
        text = decode(ids[i:i + 1])
        end = i + 1
        if REPLACEMENT in text:
            for j in range(i + 2, min(len(ids), i + max_span) + 1):
                joint = decode(ids[i:j])
                if joint.count(REPLACEMENT) < text.count(REPLACEMENT) and not joint.endswith(REPLACEMENT):
                    text, end = joint, j
                    break
        out.append(Span(i, end, text))
        i = end
    return out


def per_token(spans: Sequence[Span]) -> list[tuple[str, int, int]]:
    """For each position: (its span's text, its part number from 1, the span's length)."""
    out = []
    for s in spans:
        n = s.end - s.start
        out += [(s.text, k + 1, n) for k in range(n)]
    return out


def labels(spans: Sequence[Span]) -> list[str]:
    """One label per token: its text, or for a piece of a cut character the whole character
    with the part, e.g. "😀 (1/2)", "😀 (2/2)"."""
    return [text if n == 1 else f"{text} ({k}/{n})" for text, k, n in per_token(spans)]


def display_pieces(ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """`labels` of `merge_byte_pieces`: one display label per token."""
    return labels(merge_byte_pieces(ids, decode))
