"""train-router: train (or reuse) the DejaVu router of a model from activation history."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = "train the DejaVu router from stored activations (captures history if too little); report recall"


def add_arguments(p) -> None:
    from ..router import DEFAULT_MIN_TOKENS, DEFAULT_STEPS

    p.add_argument("--rank", type=int, default=None,
                   help="router rank r (default: the router is 5%% of the MLP's parameters; at most 10%%)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Adam steps per layer (default %(default)s)")
    p.add_argument("--min-tokens", type=int, default=DEFAULT_MIN_TOKENS,
                   help="tokens of history to train on (default %(default)s)")
    p.add_argument("--force", action="store_true", help="retrain even if a matching router file exists")


def progress_printer():
    """progress(fraction, message) that prints each new message to stderr as '[ 40%] message'."""
    last = [""]

    def progress(frac: float, msg: str = "") -> None:
        if msg != last[0]:
            last[0] = msg
            print(f"[{frac:4.0%}] {msg}", file=sys.stderr)
    return progress


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
    r = router.train(lm, store, rank=args.rank, steps=args.steps, min_tokens=args.min_tokens,
                     progress=progress_printer(), force=args.force)
    store.close()
    out = dict(r)
    out["text_summary"] = router.report_text(r)
    return out
