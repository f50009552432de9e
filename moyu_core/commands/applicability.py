"""applicability: every DA method's quality at the same keep on each shipped model."""
from __future__ import annotations

from ..errors import MoyuError

HELP = "applicability: every method's quality at keep 0.5 on smollm2-135m and gemma3-270m side by side"


def add_arguments(p) -> None:
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--models", default="smollm2-135m,gemma3-270m")
    p.add_argument("--windows", type=int, default=12, help="evaluation windows, the n of every interval "
                   "(default %(default)s)")
    p.add_argument("--force", action="store_true")


def run(args) -> dict:
    from .. import models
    from ..experiments import applicability as ap
    from ..store import Store

    if not 0 < args.keep <= 1:
        raise MoyuError("--keep must be in (0, 1]")
    if args.windows < 2:
        raise MoyuError("--windows must be at least 2 (intervals are taken over windows)")
    models.setup_compute()
    params = ap.ApplicabilityParams(keep=args.keep, windows=args.windows,
                                    models=tuple(m.strip() for m in args.models.split(",") if m.strip()))
    store = Store(args.db)
    res = ap.run(store, params, progress=None, force=args.force)
    store.close()
    res["text_summary"] = ap.summary_text(res)
    return res
