"""Server time of the app's reruns when a user switches layer, normalisation, neuron order or
method on a cached run (goal: under a second each).

The app's script is run by Streamlit's AppTest in this process, which is what the server does on
each widget change; the figure is the wall time of that rerun (script + figures + messages), not
the browser's drawing. "cold" switches go to a layer (or method) this process has not read yet,
"warm" ones return to one already read. A method's first view on the Methods page is measured
once right after opening the page (for a method that reads the gate or the MLP input: cats, moe,
dejavu), then for every other method. Such methods read one forward over the run that any page
showing the run starts in the background after drawing (Explore here, before the switches, which
therefore share the two cores with it). Opening a link straight to the Methods page with such a
method, nothing computed yet, is a first page load, not a switch: reported on its own.

    .venv/bin/python benchmarks/app_switch.py [--tokens 128 1024] [--repeats 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(at) -> float:
    t0 = time.perf_counter()
    at.run()
    dt = (time.perf_counter() - t0) * 1000
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return dt


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1), "n": len(ms)}


def bench_run(run_id: str, unseen_run_id: str, n_layers: int, repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    app = str(ROOT / "app" / "streamlit_app.py")
    at = AppTest.from_file(app, default_timeout=600)
    at.query_params["run"] = run_id
    at.query_params["layer"] = "0"
    t0 = time.perf_counter()
    at.run()
    first = (time.perf_counter() - t0) * 1000
    out: dict = {"first_open_ms": round(first, 1)}
    layers = [(3 + 7 * i) % n_layers for i in range(repeats)]
    cold, warm = [], []
    for li in layers:  # layers not read yet by this process
        at.slider(key="url_layer").set_value(li)
        cold.append(timed(at))
    for li in layers:  # back to layers already read
        at.slider(key="url_layer").set_value(li)
        warm.append(timed(at))
    out["layer_cold"], out["layer_warm"] = summary(cold), summary(warm)
    norms, orders = [], []
    for i in range(repeats):
        at.radio(key="url_norm").set_value(("raw", "abs", "token")[i % 3])
        norms.append(timed(at))
        at.radio(key="url_order").set_value(("index", "frequency")[i % 2])
        orders.append(timed(at))
    out["normalisation"], out["neuron_order"] = summary(norms), summary(orders)

    from moyu_core.methods import REGISTRY

    names = [n for n in REGISTRY if n not in ("dense", "oracle")]
    # Opening the Methods page starts, in the background, the one forward whose gate activations
    # and MLP inputs the methods that do not decide from z read. A user who picks such a method
    # at once waits for the rest of it: measured first. The other first views come after it.
    at.switch_page("app_pages/methods.py").run()
    first_gate = next((n for n in names if n in ("cats", "moe", "dejavu")), None)
    if first_gate:
        at.multiselect(key="url_method").set_value([first_gate])
        out["gate_method_right_after_opening_ms"] = {first_gate: round(timed(at), 1)}
    cold_m, warm_m = [], []
    picks = [n for n in names if n != first_gate][: max(2, repeats)]
    for name in picks:
        at.multiselect(key="url_method").set_value([name])
        cold_m.append(timed(at))
    for name in picks:
        at.multiselect(key="url_method").set_value([name])
        warm_m.append(timed(at))
    out["method_cold"], out["method_warm"] = summary(cold_m), summary(warm_m)
    out["method_cold_each_ms"] = {n: round(t, 1) for n, t in zip(picks, cold_m)}
    if first_gate:
        out["link_to_methods_gate_first_open_ms"] = {first_gate: round(link_first_open(unseen_run_id, first_gate), 1)}
    return out


def link_first_open(run_id: str, method: str) -> float:
    """A teammate's link straight to the Methods page with a gate/input method, for a run this
    server has not shown yet: the page load waits for the run's forward."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=600)
    at.query_params.update(run=run_id, method=method)
    at.switch_page("app_pages/methods.py")
    return timed(at)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--db", default=None, help="database (default: a fresh temporary file)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from moyu_core import models, wordlists
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    db = args.db or str(Path(tempfile.mkdtemp(prefix="moyu-switch-")) / "switch.duckdb")
    os.environ["MOYU_DB"] = db
    models.setup_compute()
    lm = models.load()
    store = Store(db)
    text = wordlists.reference_text(16_000)
    report = {"db": db, "model": lm.name, "threads": 2, "runs": {}}
    for n in args.tokens:
        ids = lm.encode(text, max_tokens=10**6)[:n]
        run = capture_run(lm, store, lm.tokenizer.decode(ids))  # cached from here on
        unseen = capture_run(lm, store, lm.tokenizer.decode(lm.encode(text, max_tokens=10**6)[n:2 * n]))  # for the link
        report["runs"][f"{run.tokens} tokens"] = bench_run(run.run_id, unseen.run_id, lm.n_layers, args.repeats)
    worst = max([v["max_ms"] for r in report["runs"].values() for v in r.values()
                 if isinstance(v, dict) and "max_ms" in v]
                + [t for r in report["runs"].values() for t in r.get("gate_method_right_after_opening_ms", {}).values()])
    report["worst_switch_ms"] = worst
    report["goal_under_1s"] = worst < 1000
    if args.json:
        print(json.dumps(report))
        return
    for name, r in report["runs"].items():
        print(f"{name}: first open {r['first_open_ms']:.0f} ms (loads the model's outputs and the all-layers overview)")
        for k, v in r.items():
            if isinstance(v, dict) and "max_ms" in v:
                print(f"  {k:<14} median {v['median_ms']:7.1f} ms   max {v['max_ms']:7.1f} ms   (n={v['n']})")
            elif k not in ("first_open_ms",):
                print(f"  {k:<14} {v}")
    print(f"worst switch: {worst:.0f} ms -> goal (< 1000 ms) {'met' if report['goal_under_1s'] else 'NOT met'} "
          "(see also gate_method_right_after_opening_ms; a link straight to the Methods page "
          "with a gate method is a first load: link_to_methods_gate_first_open_ms)")


if __name__ == "__main__":
    main()
