"""hh-ablation: remove the earliest heavy hitter and measure what changes (control: a token at a
matched position), sink included and sink excluded."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = ("heavy-hitter ablation: mask attention to the earliest heavy hitter vs a position-matched token, "
        "sink included and excluded, with verdicts")


def add_arguments(p) -> None:
    p.add_argument("--texts", type=int, default=20, help="texts (default %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--continuation-tokens", type=int, default=32)
    p.add_argument("--heavy", type=int, default=4, help="how many top tokens count as heavy hitters")
    p.add_argument("--min-readers", type=int, default=16,
                   help="rank only tokens that at least this many queries see (default %(default)s)")
    p.add_argument("--keep", type=float, default=0.5, help="Griffin keep fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")


def run(args) -> dict:
    from .. import models
    from ..experiments import hh_ablation
    from ..store import Store

    if not 0 < args.keep <= 1:
        raise MoyuError("--keep must be in (0, 1]")
    params = hh_ablation.AblationParams(n_texts=args.texts, prompt_tokens=args.prompt_tokens,
                                        continuation_tokens=args.continuation_tokens, n_heavy=args.heavy,
                                        min_readers=args.min_readers, keep=args.keep, seed=args.seed)
    store = Store(args.db)
    lm = models.load(args.model, progress=lambda m: print(m, file=sys.stderr))
    models.setup_compute()
    res = hh_ablation.run(lm, store, params, force=args.force)
    store.close()
    res["text_summary"] = hh_ablation.summary_text(res)
    return res
