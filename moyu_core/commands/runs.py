"""runs: list cached runs."""
from __future__ import annotations

HELP = "list cached runs (newest first)"


def add_arguments(p) -> None:
    p.add_argument("--filter-model", default=None, help="only runs of this model")
    p.add_argument("--text", default=None, help="only runs whose text contains this")
    p.add_argument("--limit", type=int, default=50)


def run(args) -> dict:
    from ..store import Store

    rows = Store(args.db).list_runs(model=args.filter_model, text=args.text, limit=max(1, args.limit))
    lines = [f"{r['run_id']}  {r['model']:<14} {r['mode']:<10} {r['method']:<8} {r['n_tokens']:>5} tok  "
             f"{r['text'][:60]!r}" for r in rows] or ["no runs"]
    for r in rows:
        r["created_at"] = str(r["created_at"])
    return {"runs": rows, "count": len(rows), "text_summary": "\n".join(lines)}
