"""What an atlas reads: a corpus cut into documents (at blank lines), each document into pieces
of at most PIECE_TOKENS tokens captured like a prompt (the model's BOS first where it has one),
and the pieces grouped into chunks, the unit of work, of resume and of one shard.

Position 0 of every piece (the attention sink: BOS, or the piece's first text token where the
model has no BOS) runs through the model but is left out of every statistic.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .. import corpora
from ..errors import MoyuError

PIECE_TOKENS = 512
BUILT_IN = {"pydoc": corpora.pydoc_topics, "docstrings": corpora.stdlib_docstrings}
MAX_TOKENS_RANGE = (2, 10**10)
CHUNK_TOKENS = 16384           # default text tokens per chunk
CHUNK_TOKENS_RANGE = (1, 10**7)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Piece:
    """One forward: `ids` = the model's BOS (n_bos of them, 0 or 1), then the text tokens of
    document `doc` from position `start` (positions count the document's text tokens);
    `ordinal` is its place among all the plan's pieces (0, 1, ...)."""

    doc: int
    start: int
    ids: tuple[int, ...]
    n_bos: int
    ordinal: int

    @property
    def text_ids(self) -> tuple[int, ...]:
        return self.ids[self.n_bos:]

    @property
    def measured(self) -> int:
        """Tokens that enter the statistics: all but position 0."""
        return max(0, len(self.ids) - 1)

    def doc_pos(self, piece_pos: int) -> int:
        """The document position of the token at `piece_pos` (>= n_bos) of this piece."""
        return self.start + piece_pos - self.n_bos


@dataclass(frozen=True)
class Chunk:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def tokens(self) -> int:
        return sum(len(p.text_ids) for p in self.pieces)

    @property
    def measured(self) -> int:
        return sum(p.measured for p in self.pieces)


def read_corpus(spec: str) -> tuple[str, str]:
    """(text, label) of `--corpus`: a built-in name (pydoc, docstrings) or a UTF-8 text file.
    Missing, empty or binary files are refused with a one-line MoyuError."""
    if spec in BUILT_IN:
        return BUILT_IN[spec](), spec
    path = Path(spec).expanduser()
    if not path.is_file():
        raise MoyuError(f"corpus not found: {path} (a text file, or one of: {', '.join(BUILT_IN)})")
    data = path.read_bytes()
    if b"\x00" in data[:1 << 20]:
        raise MoyuError(f"corpus {path} looks binary (NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MoyuError(f"corpus {path} is not UTF-8 text (byte {e.start}); give a UTF-8 text file") from None
    if not text.strip():
        raise MoyuError(f"corpus {path} is empty")
    return text, str(path.resolve())


def documents(text: str) -> list[str]:
    """Documents: the text split at blank lines, each stripped, empty ones dropped; control
    characters other than newline and tab become spaces."""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    return [d.strip() for d in re.split(r"\n[ \t]*\n\s*", text) if d.strip()]


def plan(lm, docs: list[str], max_tokens: int | None = None, chunk_tokens: int = CHUNK_TOKENS) -> list[Chunk]:
    """Pieces of every document (at most `max_tokens` text tokens in all, documents in order),
    grouped into chunks of at least `chunk_tokens` text tokens (the last may be smaller)."""
    bos = tuple(lm.bos_ids)
    width = PIECE_TOKENS - len(bos)
    budget = max_tokens if max_tokens is not None else MAX_TOKENS_RANGE[1]
    pieces: list[Piece] = []
    batch = 256
    for first in range(0, len(docs), batch):
        encoded = lm.tokenizer(docs[first:first + batch], add_special_tokens=False)["input_ids"]
        for doc, ids in enumerate(encoded, start=first):
            ids = ids[:budget]
            budget -= len(ids)
            pieces += [Piece(doc, s, bos + tuple(ids[s:s + width]), len(bos), len(pieces) + j)
                       for j, s in enumerate(range(0, len(ids), width))]
            if budget <= 0:
                break
        if budget <= 0:
            break
    if not any(p.measured for p in pieces):
        raise MoyuError("the corpus has no token to measure (every piece is a single token, and "
                        "position 0 of a piece is left out)")
    chunks: list[Chunk] = []
    group: list[Piece] = []
    filled = 0
    for p in pieces:
        group.append(p)
        filled += len(p.text_ids)
        if filled >= chunk_tokens:
            chunks.append(Chunk(len(chunks), tuple(group)))
            group, filled = [], 0
    if group:
        chunks.append(Chunk(len(chunks), tuple(group)))
    return chunks


def plan_digest(chunks: list[Chunk]) -> str:
    """What a resume must find unchanged: every piece's document, start and token ids, by chunk."""
    h = hashlib.sha256()
    for c in chunks:
        for p in c.pieces:
            h.update(f"{c.index}:{p.doc}:{p.start}:{p.n_bos}:".encode())
            h.update(",".join(map(str, p.ids)).encode())
            h.update(b";")
    return h.hexdigest()
