"""Command line: `python -m moyu_core COMMAND ...` (contract in DESIGN.md).

Each command is one module in `moyu_core/commands/` with `HELP`, `add_arguments(parser)` and
`run(args) -> dict`. Every command takes `--db`, `--model`, `--json`; with `--json` the last line
printed is one JSON object. A user error is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .errors import MoyuError

COMMANDS = ["capture", "runs", "export", "import_bundle", "inertia", "hh_ablation", "relu_swiglu", "applicability", "eval", "generate",
            "train_router", "atlas"]
COMMAND_NAMES = {"import_bundle": "import"}  # module name -> subcommand (`import` is a keyword)


def _human(result: dict) -> str:
    if "text_summary" in result:
        return result["text_summary"]
    return "\n".join(f"{k}: {v}" for k, v in result.items())


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from .models import DEFAULT_MODEL
    from .store import DEFAULT_DB

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=str(DEFAULT_DB), help="DuckDB file (default: %(default)s, env MOYU_DB)")
    common.add_argument("--model", default=DEFAULT_MODEL,
                        help="registered model name, local HF folder or .gguf path (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    prog = "moyu" if Path(sys.argv[0]).name == "moyu" else "python -m moyu_core"
    parser = argparse.ArgumentParser(prog=prog, description="moyu: dynamic activation workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in COMMANDS:
        mod = importlib.import_module(f"moyu_core.commands.{name}")
        cmd = COMMAND_NAMES.get(name, name.replace("_", "-"))
        p = sub.add_parser(cmd, parents=[common], help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        modules[cmd] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        result = modules[args.command].run(args)
    except MoyuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    summary = result.pop("text_summary", None)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(summary if summary is not None else _human(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
