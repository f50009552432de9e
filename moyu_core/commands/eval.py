"""eval: the quality protocol of DESIGN.md for one method."""
from __future__ import annotations

import sys

HELP = "quality of a DA method (ppl ratio, KL, top-1 agreement, sparsity) on pydoc_data.topics"


def add_arguments(p) -> None:
    p.add_argument("--method", required=True)
    p.add_argument("--keep", type=float, default=None)
    p.add_argument("--cett", type=float, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--experts", type=int, default=None)
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--free-tokens", type=int, default=128,
                   help="free greedy generation after the first window's prompt (0: skip)")


def run(args) -> dict:
    from ..evaluate import evaluate
    from ..methods import make
    from ..models import load
    from ..store import Store
    params = {k: getattr(args, k) for k in ("keep", "cett", "threshold", "experts") if getattr(args, k) is not None}
    method = make(args.method, **params)
    lm = load(args.model)
    store = Store(args.db)
    if method.name == "dejavu" and getattr(method.params, "keep", 1.0) < 1.0:
        from .. import router
        if router.load_router(lm) is None:
            router.train(lm, store, progress=lambda f, msg="": print(f"router: {msg}", file=sys.stderr))
    r = dict(evaluate(lm, method, store, args.windows, args.prompt_len, args.gen_len,
                      free_tokens=args.free_tokens))
    r["text_summary"] = (f"{r['method']} {r['params']}: ppl {r['ppl']:.3f} (dense {r['dense_ppl']:.3f}, "
                         f"ratio {r['ppl_ratio']:.3f}), KL {r['kl']:.4f}, top-1 {r['top1_agree']:.3f}, "
                         f"sparsity {r['sparsity']:.3f}")
    if "free_generation" in r:
        fg = r["free_generation"]
        r["text_summary"] += (f"\nfree generation, {fg['tokens']} tokens: agreement with dense "
                              f"{fg['token_agreement']:.3f}, first divergence at token {fg['tokens_until_divergence']}\n"
                              f"{fg['text']!r}")
    return r
