"""inertia: the paper's Figure 2 experiment, measured, with verdicts."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = "activation inertia (paper Figure 2): sentences vs random words, parallel vs sequential, with verdicts"


def add_arguments(p) -> None:
    from ..experiments.stats import MARGIN_D

    p.add_argument("--texts", type=int, default=30, help="texts of each kind (default %(default)s)")
    p.add_argument("--tokens", type=int, default=40, help="tokens per text (default 40)")
    p.add_argument("--fraction", type=float, default=0.1, help="top fraction of |z| that counts as active")
    p.add_argument("--layers", default="", help="comma-separated layer indices (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="",
                   help="context before every text (default: the model's BOS, else one newline token)")
    p.add_argument("--margin-d", type=float, default=MARGIN_D,
                   help="equivalence margin of the no-difference claim, in Cohen's d (default %(default)s)")
    p.add_argument("--force", action="store_true", help="recompute even if cached")


def parse_layers(s: str):
    if not s:
        return None
    try:
        return tuple(int(x) for x in s.split(","))
    except ValueError as e:
        raise MoyuError("--layers must be comma-separated integers") from e


def run(args) -> dict:
    from .. import models
    from ..experiments import inertia
    from ..store import Store

    if not 0 < args.fraction < 1:
        raise MoyuError("--fraction must be between 0 and 1")
    if not args.margin_d > 0:
        raise MoyuError("--margin-d must be positive")
    params = inertia.InertiaParams(n_texts=args.texts, n_tokens=args.tokens, fraction=args.fraction,
                                   layers=parse_layers(args.layers), seed=args.seed, prefix=args.prefix,
                                   margin_d=args.margin_d)
    store = Store(args.db)
    lm = models.load(args.model, progress=lambda m: print(m, file=sys.stderr))
    models.setup_compute()
    res = inertia.run(lm, store, params, force=args.force)
    store.close()
    res.pop("heatmaps", None) if not args.json else None
    res["text_summary"] = inertia.summary_text(res)
    return res
