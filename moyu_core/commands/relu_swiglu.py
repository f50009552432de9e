"""relu-swiglu: train controlled ReLU/SwiGLU pairs (one per seed) and compare sparsity and router recall."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = ("ReLU vs SwiGLU: train controlled tiny pairs over seeds, compare sparsity and DejaVu router recall "
        "(limitation 1)")


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int, default=1200, help="requested step budget (default 1200)")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="wall-clock cap per model, turned into a step count before training (default 15)")
    p.add_argument("--seeds", type=int, default=3, help="pairs to train, seeds 0..N-1 (default 3)")
    p.add_argument("--keep", type=float, default=0.2, help="router keep fraction")
    p.add_argument("--models", default="smollm2-135m,gemma3-270m",
                   help="comma-separated reference models to compare beside the trained pairs")
    p.add_argument("--router-layers", type=int, default=4)
    p.add_argument("--router-steps", type=int, default=300)
    p.add_argument("--suffix", default="", help="suffix for the trained model names")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--force", action="store_true", help="recompute the comparison even if cached")


def run(args) -> dict:
    from .. import models
    from ..experiments import relu_swiglu as rs
    from ..store import Store
    from .train_router import progress_printer

    if not 0 < args.keep < 1:
        raise MoyuError("--keep must be between 0 and 1")
    if args.steps < 1 or args.minutes <= 0:
        raise MoyuError("--steps and --minutes must be positive")
    if args.seeds < 2:
        raise MoyuError("--seeds must be at least 2 (intervals are taken across seeds)")
    models.setup_compute()
    tp = rs.TrainParams(steps=args.steps, max_minutes=args.minutes, seeds=tuple(range(args.seeds)),
                        suffix=args.suffix)
    print(f"training {2 * args.seeds} models (or reusing them): at most {rs.estimate_minutes(tp):.0f} min",
          file=sys.stderr)
    progress = progress_printer()
    trained = rs.train_pair(tp, progress=progress, force=args.retrain)
    refs = tuple(m.strip() for m in args.models.split(",") if m.strip())
    cp = rs.CompareParams(keep=args.keep, n_layers=args.router_layers, router_steps=args.router_steps, models=refs)
    store = Store(args.db)
    res = rs.compare(cp, tuple(trained["models"]), store, progress=progress, force=args.force)
    store.close()
    out = {"experiment": "relu_swiglu", "training": trained["models"], "budget": trained["budget"],
           "params": {"keep": cp.keep}, **res}
    out["text_summary"] = rs.summary_text(out)
    return out
