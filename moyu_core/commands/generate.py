"""generate: greedy text with a DA method, with prefill and decode timings."""
from __future__ import annotations

HELP = "greedy generation with a DA method: text, tokens, prefill ms, slicing ms, decode tokens/s, label"


def add_arguments(p) -> None:
    p.add_argument("text")
    p.add_argument("--method", default="dense")
    p.add_argument("--keep", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--simulated", action="store_true", help="mask instead of slicing")


def run(args) -> dict:
    from ..decode import generate
    from ..methods import make
    from ..models import load
    m = make(args.method, **({"keep": args.keep} if args.keep is not None else {}))
    r = generate(load(args.model), args.text, m, args.max_new_tokens, executed=not args.simulated)
    sliced = f", slicing {r['slice_ms']:.0f} ms" if m.sequence_level else ""
    r["text_summary"] = (f"{r['text']}\n[{r['label']}] {r['n_tokens']} tokens, prefill "
                         f"{r['prefill_ms']:.0f} ms{sliced}, decode {r['decode_tokens_per_s']:.1f} tok/s")
    return r
