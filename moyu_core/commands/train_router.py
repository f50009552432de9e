"""train-router: train (or reuse) the DejaVu router of a model from activation history."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = "train the DejaVu router from stored activations (captures history if too little); report recall"


def add_arguments(p) -> None:
    from ..router import DEFAULT_MIN_TOKENS, DEFAULT_STEPS

    p.add_argument("--rank", type=int, default=None, help="router rank r (default max(64, d_ff // 4))")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Adam steps per layer (default %(default)s)")
    p.add_argument("--min-tokens", type=int, default=DEFAULT_MIN_TOKENS,
                   help="tokens of history to train on (default %(default)s)")
    p.add_argument("--force", action="store_true", help="retrain even if a matching router file exists")


def run(args) -> dict:
    from .. import models, router
    from ..store import Store

    for name in ("rank", "steps", "min_tokens"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise MoyuError(f"--{name.replace('_', '-')} must be positive")
    store = Store(args.db)
    lm = models.load(args.model, progress=lambda m: print(m, file=sys.stderr))
    models.setup_compute()
    last = [""]

    def progress(frac: float, msg: str = "") -> None:
        if msg != last[0]:
            last[0] = msg
            print(f"[{frac:4.0%}] {msg}", file=sys.stderr)

    r = router.train(lm, store, rank=args.rank, steps=args.steps, min_tokens=args.min_tokens,
                     progress=progress, force=args.force)
    store.close()
    out = dict(r)
    out["text_summary"] = (
        f"router {r['path']}{' (reused)' if r['cached'] else ''}: rank {r['rank']}, {r['steps']} steps, "
        f"{r['tokens_trained']} tokens, {r['seconds']:.1f} s\n"
        f"held-out top-k recall (= precision) at keep 0.5: {r['recall@0.5']:.3f} "
        f"(static {r['static_recall@0.5']:.3f}, random 0.5); at keep 0.25: {r['recall@0.25']:.3f} "
        f"(static {r['static_recall@0.25']:.3f}, random 0.25)\n"
        f"classifier (logit > 0 vs top-50% label): recall {r['clf_recall']:.3f}, "
        f"precision {r['clf_precision']:.3f}")
    return out
