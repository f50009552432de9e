"""eval: the quality protocol of DESIGN.md for one method."""
from __future__ import annotations

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


def run(args) -> dict:
    from ..evaluate import evaluate
    from ..methods import make
    from ..models import load
    from ..store import Store
    params = {k: getattr(args, k) for k in ("keep", "cett", "threshold", "experts") if getattr(args, k) is not None}
    method = make(args.method, **params)
    lm = load(args.model)
    r = evaluate(lm, method, Store(args.db), args.windows, args.prompt_len, args.gen_len)
    r = dict(r)
    r["text_summary"] = (f"{r['method']} {r['params']}: ppl {r['ppl']:.3f} (dense {r['dense_ppl']:.3f}, "
                         f"ratio {r['ppl_ratio']:.3f}), KL {r['kl']:.4f}, top-1 {r['top1_agree']:.3f}, "
                         f"sparsity {r['sparsity']:.3f}")
    return r
