"""import FILE.parquet: add the runs of a bundle to the database (checked first, one transaction).

The subcommand is spelled `import` (see COMMAND_NAMES in moyu_core/__main__.py); the module has
another name because `import` is a Python keyword."""
from __future__ import annotations

HELP = "import runs from Parquet bundles made by `export` (hostile files are refused, nothing is executed)"


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE.parquet", help="bundles to import")


def run(args) -> dict:
    from ..share.importer import import_bundle
    from ..store import Store

    store = Store(args.db)
    ids: list[str] = []
    for f in args.files:
        ids += import_bundle(store, f)
    store.close()
    lines = [f"{rid}  imported" for rid in ids]
    return {"run_ids": ids, "count": len(ids), "text_summary": "\n".join(lines)}
