"""relu-swiglu: train a controlled ReLU/SwiGLU pair and compare sparsity and router recall."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = "ReLU vs SwiGLU: train a controlled tiny pair, compare sparsity and DejaVu router recall (limitation 1)"


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int, default=1200, help="shared training step budget (default 1200)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock cap per model (default 15)")
    p.add_argument("--keep", type=float, default=0.2, help="router keep fraction")
    p.add_argument("--models", default="tiny-relu,tiny-swiglu,smollm2-135m,gemma3-270m",
                   help="comma-separated models to compare")
    p.add_argument("--router-layers", type=int, default=4)
    p.add_argument("--router-steps", type=int, default=300)
    p.add_argument("--suffix", default="", help="suffix for the trained model names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--force", action="store_true", help="recompute the comparison even if cached")


def run(args) -> dict:
    from .. import models
    from ..experiments import relu_swiglu as rs
    from ..store import Store

    if not 0 < args.keep < 1:
        raise MoyuError("--keep must be between 0 and 1")
    if args.steps < 1 or args.minutes <= 0:
        raise MoyuError("--steps and --minutes must be positive")
    models.setup_compute()
    tp = rs.TrainParams(steps=args.steps, max_minutes=args.minutes, seed=args.seed, suffix=args.suffix)
    print("training the pair (or reusing it)...", file=sys.stderr)
    trained = rs.train_pair(tp, force=args.retrain)
    names = tuple(m.strip() for m in args.models.split(",") if m.strip())
    names = tuple(n + args.suffix if n in rs.PAIR else n for n in names)
    cp = rs.CompareParams(keep=args.keep, n_layers=args.router_layers, router_steps=args.router_steps,
                          models=names, seed=args.seed)
    store = Store(args.db)
    res = rs.compare(cp, store, force=args.force)
    store.close()
    out = {"experiment": "relu_swiglu", "training": trained, "params": {"keep": cp.keep}, **res}
    out["text_summary"] = rs.summary_text(out)
    return out
