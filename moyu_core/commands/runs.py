"""runs: list cached runs."""
from __future__ import annotations

HELP = "list cached runs (newest first)"


def add_arguments(p) -> None:
    p.add_argument("--filter-model", default=None, help="only runs of this model")
    p.add_argument("--text", default=None, help="only runs whose text contains this")
    p.add_argument("--limit", type=int, default=50)


def _context(r: dict) -> str:
    """The context the run's tokens followed, as a Python literal ('\\n' for smollm2's parallel default)."""
    return repr(r["prefix"][:10]) if r["prefix"] else "-"


def run(args) -> dict:
    from ..store import Store

    rows = Store(args.db).list_runs(model=args.filter_model, text=args.text, limit=max(1, args.limit))
    lines = [f"{r['run_id']}  {r['model']:<14} {r['mode']:<10} {_context(r):<12} {r['method']:<8} "
             f"{r['n_tokens']:>5} tok  {r['text'][:60]!r}" for r in rows] or ["no runs"]
    for r in rows:
        r["created_at"] = str(r["created_at"])
    return {"runs": rows, "count": len(rows), "text_summary": "\n".join(lines)}
