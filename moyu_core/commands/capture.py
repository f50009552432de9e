"""capture "TEXT" | --file prompts.txt: record activations into the store."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MoyuError

HELP = "run a prompt through the model and store every token's MLP activations"


def add_arguments(p) -> None:
    p.add_argument("text", nargs="?", help="the prompt")
    p.add_argument("--file", help="a text file with one prompt per line")
    p.add_argument("--mode", default="sequential", choices=["sequential", "parallel"])
    p.add_argument("--prefix", default="",
                   help="context before the prompt; in parallel input before every token (default there: "
                        "the model's BOS, else one newline token, so no token sits at position 0)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--dtype", default="int8", choices=["int8", "float16", "float32"])
    p.add_argument("--max-tokens", type=int, default=None, help="prompt length limit (default 2048)")


def _prompts(args) -> list[str]:
    if (args.text is None) == (args.file is None):
        raise MoyuError("give either TEXT or --file")
    if args.text is not None:
        return [args.text]
    path = Path(args.file)
    if not path.is_file():
        raise MoyuError(f"no such file: {path}")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise MoyuError(f"{path} is not UTF-8 text") from e
    if not lines:
        raise MoyuError(f"{path} has no prompts")
    return lines


def run(args) -> dict:
    from .. import models, runs
    from ..store import Store

    if args.max_tokens is not None and not 1 <= args.max_tokens <= 32768:
        raise MoyuError("--max-tokens must be between 1 and 32768")
    prompts = _prompts(args)
    for text in prompts:  # cheap checks before the model loads
        models.check_text(text)
    store = Store(args.db)
    lm = models.load(args.model, progress=lambda m: print(m, file=sys.stderr))
    models.setup_compute()
    for text in prompts:  # check every prompt before the first forward pass
        lm.encode(text, chat=args.chat, max_tokens=args.max_tokens)
    results = []
    bar = None
    if len(prompts) > 1:
        from tqdm import tqdm
        bar = tqdm(total=len(prompts), desc="capture", unit="prompt", file=sys.stderr)
    for text in prompts:
        r = runs.capture_run(lm, store, text, mode=args.mode, prefix=args.prefix, chat=args.chat,
                             dtype=args.dtype, max_tokens=args.max_tokens)
        results.append(r.as_dict())
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    store.close()
    lines = [f"{r['run_id']}  {r['tokens']} tokens{'  (cached)' if r['cached'] else ''}" for r in results]
    out = dict(results[-1]) if len(results) == 1 else {
        "runs": results, "run_id": results[-1]["run_id"], "tokens": sum(r["tokens"] for r in results),
        "layers": results[-1]["layers"], "neurons": results[-1]["neurons"],
        "cached": all(r["cached"] for r in results)}
    out["text_summary"] = "\n".join(lines)
    return out
