"""hh-ablation: remove the earliest heavy hitter and measure what changes (control: a random token)."""
from __future__ import annotations

import sys

from ..errors import MoyuError

HELP = "heavy-hitter ablation: mask attention to the earliest heavy hitter vs a random token, with verdicts"


def add_arguments(p) -> None:
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--continuation-tokens", type=int, default=32)
    p.add_argument("--heavy", type=int, default=4, help="how many top tokens count as heavy hitters")
    p.add_argument("--keep", type=float, default=0.5, help="Griffin keep fraction")
    p.add_argument("--skip-first", action="store_true", help="never pick token 0 (the attention sink)")
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
                                        keep=args.keep, skip_first=args.skip_first, seed=args.seed)
    store = Store(args.db)
    lm = models.load(args.model, progress=lambda m: print(m, file=sys.stderr))
    models.setup_compute()
    res = hh_ablation.run(lm, store, params, force=args.force)
    store.close()
    res["text_summary"] = hh_ablation.summary_text(res)
    return res
