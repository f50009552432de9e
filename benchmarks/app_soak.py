"""Server memory under use: at least 200 varied interactions over 10 runs in real Chromium, the
server's resident memory (RSS) sampled as it goes (goal: at most 2.5 GB at the end).

Runs of different lengths (up to --max-tokens) are captured into a fresh database first; then a
seeded random walk opens runs on Explore, Heavy hitters and Methods (by link and by the sidebar),
changes layer, values, neuron order, token window, keep and methods, clicks heatmap cells, finds
neurons, hides the sink, scores methods on the prompt now and then, and visits Compare. Every
interaction waits until the page is drawn (benchmarks/app_latency.py's rule). Reported: RSS after
the model's first load, its peak and its value at the end, after the background work settled.

    .venv/bin/python benchmarks/app_soak.py [--interactions 200] [--runs 10] [--max-tokens 1024] [--json]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from app_latency import (CHROMIUM, CHROMIUM_ARGS, IDLE, NO_PROGRESS, body_has, rss_mb, start_app,
                         titles_have)

GOAL_MB = 2560


def prepare(db: str, runs: int, max_tokens: int) -> list:
    """`runs` runs from 64 to max_tokens tokens of reference prose and random word lists."""
    import gc

    from moyu_core import models, wordlists
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    models.setup_compute()
    lm = models.load()
    store = Store(db)
    ids = lm.encode(wordlists.reference_text(200_000), max_tokens=10**6)
    lengths = [int(64 + (max_tokens - 64) * i / max(1, runs - 1)) for i in range(runs)]
    out, at = [], 0
    for i, n in enumerate(lengths):
        text = (lm.tokenizer.decode(ids[at:at + n]) if i % 3 else wordlists.random_word_list(max(2, n // 2), i))
        at += n
        out.append(store.run(capture_run(lm, store, text, max_tokens=4096).run_id))
    store.close()
    models._LOADED.clear()   # this process's model is not the server's: free it
    gc.collect()
    return out


def drawn(page, expect: str = "true", timeout: int = 300_000) -> None:
    page.wait_for_function(f"({expect}) && {IDLE}", timeout=timeout, polling="raf")
    page.wait_for_timeout(100)
    page.wait_for_function(f"({expect}) && {IDLE}", timeout=timeout, polling="raf")


def nudge(page, rng: random.Random, slider: str, expect: str) -> None:
    """One step left or right on the slider labelled `slider`, until drawn."""
    s = page.get_by_role("slider", name=slider).first
    s.focus()
    s.press(rng.choice(["ArrowRight", "ArrowLeft"]))
    drawn(page, expect)


def step(page, base: str, rng: random.Random, recs: list) -> str:
    """One random interaction; returns its name."""
    rec = rng.choice(recs)
    path = page.evaluate("location.pathname")
    on_explore = path.rstrip("/").endswith(("", "explore")) and "methods" not in path and "heavy" not in path
    choice = rng.random()
    if choice < 0.12 or "run=" not in page.url:
        page.goto(f"{base}/?run={rec.run_id}&layer={rng.randrange(rec.n_layers)}")
        drawn(page, titles_have("tokens"))
        return "open a run on Explore"
    if choice < 0.22:
        methods = ",".join(rng.sample(["oracle", "dense", "tda", "griffin", "cats", "cett", "static", "moe"], 3))
        page.goto(f"{base}/methods?run={rec.run_id}&method={methods}&keep={rng.choice([0.25, 0.5, 0.75])}")
        drawn(page, titles_have("each method against the oracle"))
        score = page.get_by_role("button", name="on this prompt")
        if rng.random() < 0.25 and score.count():
            score.first.click()
            drawn(page)
            return "open Methods, score on the prompt"
        return "open Methods by link"
    if choice < 0.28:
        page.goto(f"{base}/heavy_hitters?run={rec.run_id}&k={rng.randint(1, 10)}")
        drawn(page, titles_have("Accumulated attention"))
        return "heavy hitters"
    if choice < 0.31:
        page.goto(f"{base}/compare")
        drawn(page, body_has("Compare"))
        return "compare"
    if "methods" in path:
        if rng.random() < 0.4:
            nudge(page, rng, "keep (fraction of neurons)", titles_have("keep"))
            return "methods: keep"
        nudge(page, rng, "Layer", titles_have("each method"))
        return "methods: layer"
    if not on_explore:
        page.goto(f"{base}/?run={rec.run_id}")
        drawn(page, titles_have("tokens"))
        return "open a run on Explore"
    which = rng.random()
    if which < 0.3:
        nudge(page, rng, "Layer", titles_have("tokens"))
        return "explore: layer"
    if which < 0.45:
        page.get_by_role("radio", name=rng.choice(["raw z", "|z|", "per-token normalised"]), exact=True).first.click(
            force=True)
        drawn(page, titles_have("tokens"))
        return "explore: values"
    if which < 0.55:
        page.get_by_role("radio", name=rng.choice(["index", "by activation count"]), exact=True).first.click(force=True)
        drawn(page, titles_have("tokens"))
        return "explore: order"
    if which < 0.75:
        plot = page.locator(".st-key-detail_box .js-plotly-plot").first
        plot.scroll_into_view_if_needed()
        box = plot.locator(".nsewdrag").first.bounding_box()
        x, y = box["x"] + box["width"] * rng.uniform(0.05, 0.95), box["y"] + box["height"] * rng.uniform(0.05, 0.95)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        drawn(page, body_has("Selected:"))
        return "explore: click a cell"
    if which < 0.87:
        box = page.get_by_role("spinbutton", name="Find neuron")
        box.fill(str(rng.randrange(1536)))
        box.press("Enter")
        drawn(page, titles_have("over the tokens"))
        return "explore: find neuron"
    page.get_by_text("Hide token 0 (attention sink)").click()
    drawn(page, titles_have("tokens"))
    return "explore: hide token 0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interactions", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="moyu-soak-"))
    db = str(tmp / "soak.duckdb")
    recs = prepare(db, args.runs, args.max_tokens)
    proc, base = start_app(db, str(tmp / "timing.jsonl"), tmp / "server.log")
    from playwright.sync_api import sync_playwright

    rng = random.Random(args.seed)
    samples, counts, errors = [], {}, 0
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1440, "height": 1100}).new_page()
            page.set_default_timeout(300_000)
            page.goto(f"{base}/?run={recs[0].run_id}")
            drawn(page, titles_have("tokens"))
            after_load = rss_mb(proc.pid)
            t0 = time.monotonic()
            for i in range(args.interactions):
                try:
                    name = step(page, base, rng, recs)
                except Exception as e:  # noqa: BLE001 - a missed locator is counted, the soak goes on
                    name, errors = f"error: {type(e).__name__}", errors + 1
                counts[name] = counts.get(name, 0) + 1
                if i % 10 == 9:
                    samples.append((i + 1, round(rss_mb(proc.pid))))
                    if not args.json:
                        print(f"{i + 1:4d} interactions  RSS {samples[-1][1]:6d} MB  ({time.monotonic() - t0:.0f} s)",
                              flush=True)
            page.wait_for_function(NO_PROGRESS, timeout=600_000)
            time.sleep(10)   # background work settles; freed memory returned
            browser.close()
        end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    report = {"runs": len(recs), "tokens": [r.n_tokens for r in recs], "interactions": args.interactions,
              "errors": errors, "by_kind": counts, "rss_after_first_load_mb": round(after_load),
              "rss_peak_mb": max([s[1] for s in samples] + [round(end)]), "rss_end_mb": round(end),
              "samples": samples, "goal_mb": GOAL_MB, "goal_met": end <= GOAL_MB, "server_log": str(tmp / "server.log")}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.interactions} interactions over {len(recs)} runs ({min(report['tokens'])}-{max(report['tokens'])} "
          f"tokens), {errors} not completed")
    print(f"server RSS: after the first load {report['rss_after_first_load_mb']} MB, peak "
          f"{report['rss_peak_mb']} MB, end {report['rss_end_mb']} MB -> goal (<= {GOAL_MB} MB) "
          f"{'met' if report['goal_met'] else 'NOT met'}")
    print("interactions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
