"""export RUN_ID... --out FILE.parquet: write runs to a shareable Parquet bundle."""
from __future__ import annotations

HELP = "write runs (activations, tokens, attention summaries, metrics) to one Parquet bundle"


def add_arguments(p) -> None:
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids (see `runs`)")
    p.add_argument("--out", required=True, help="the bundle to write, FILE.parquet")


def run(args) -> dict:
    from ..share.export import export_runs
    from ..store import Store

    store = Store(args.db)
    out = export_runs(store, args.run_ids, args.out)
    store.close()
    size = out.stat().st_size
    return {"path": str(out), "runs": list(dict.fromkeys(args.run_ids)), "bytes": size,
            "text_summary": f"wrote {len(set(args.run_ids))} run(s) to {out} ({size / 2**20:.1f} MB)"}
