"""Methods side by side in a real browser: dense, the oracle and methods in one grid; quality on the
prompt itself next to the standard protocol; Evaluate and Generate land on Compare."""
from __future__ import annotations

import re

from test_explorer import capture, metric_values, no_traceback, shot, wait_idle, wait_no_progress


def svg_texts(page, selector: str) -> list[str]:
    """Text of SVG elements (Plotly titles, legends, ticks): not HTML, so no inner_text."""
    return page.locator(selector).evaluate_all("els => els.map(e => e.textContent)")


def test_grid_prompt_quality_and_compare(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    run_id = capture(page, base, "Side by side: the river ran past the old stone mill at dawn.")
    page.goto(f"{base}/methods?run={run_id}&method=oracle,dense,tda,griffin&keep=0.5&layer=10")
    page.get_by_text("each method against the oracle").first.wait_for()
    wait_no_progress(page)
    titles = svg_texts(page, ".js-plotly-plot .gtitle, .js-plotly-plot .annotation-text")
    grid = [t for t in titles if " · recall " in t]
    assert [t.split(" · ")[0] for t in grid] == ["oracle", "dense", "tda", "griffin"], titles   # one figure
    assert page.locator(".js-plotly-plot").filter(has_text="oracle · recall").count() == 1
    recall = metric_values(page, "Recall of the oracle")
    assert len(recall) == 4 and recall[0] == "100.0%" and recall[1] == "100.0%"
    assert len(metric_values(page, "Kept (this layer)")) == 4 and len(metric_values(page, "Perplexity ratio")) >= 4
    assert re.search(r"method=oracle(%2C|,)dense(%2C|,)tda(%2C|,)griffin", page.url), page.url
    no_traceback(page)
    shot(page, artifacts, "20-side-by-side", height=1900)

    score = page.get_by_role("button", name=re.compile(r"Score .* on this prompt"))
    ready = "document.body.innerHTML.includes('on each token of the prompt')"
    # a known race (closing notes, stops 11 and 12): the Methods box comes back empty after a
    # fragment's rerun lost to a full rerun, and the next rerun shows "Pick one or more methods";
    # the page, reloaded from its URL, is right
    reset = "document.body.innerText.includes('Pick one or more methods')"
    started = (f"document.body.innerText.includes('⏳') || ({ready}) || ({reset}) || ![...document"
               ".querySelectorAll('button')].some(b => /Score .* on this prompt/.test(b.innerText))")
    for _ in range(4):
        if page.evaluate(ready):
            break
        if not page.evaluate(reset):
            try:
                score.wait_for(timeout=60_000)
            except Exception:  # noqa: BLE001 - no button: the race, reloaded below
                pass
        if page.evaluate(reset) or not score.count():
            shot(page, artifacts, "20-side-by-side-widgets-reset", height=1900)
            page.reload()
            page.get_by_text("each method against the oracle").first.wait_for()
            wait_no_progress(page)
            continue
        score.click()
        try:   # a click while the page is still settling (after a resize) can be lost: then click again
            page.wait_for_function(started, timeout=15_000)
            page.wait_for_function(f"({ready}) || ({reset})", timeout=240_000)
        except Exception:  # noqa: BLE001
            continue
        if page.evaluate(ready):
            break
    page.get_by_text("on each token of the prompt").first.wait_for(timeout=5_000)
    wait_no_progress(page)
    assert page.get_by_text("pydoc_data.topics").count() >= 1   # the standard protocol says its text
    assert page.get_by_text("Quality on this prompt").count() == 1
    assert len(metric_values(page, "KL on this prompt")) == 3   # oracle, tda, griffin (dense is the reference)
    no_traceback(page)
    shot(page, artifacts, "21-prompt-quality", height=2600)

    section = page.locator('[data-testid="stExpander"]').filter(has_text="griffin · keep")
    section.locator("summary").click()
    section.get_by_role("button", name="Evaluate quality").click()
    section.get_by_text("Perplexity ratio").first.wait_for(timeout=240_000)
    wait_idle(page)
    section.get_by_role("button", name="Generate").click()
    section.get_by_text("Speed-up").first.wait_for(timeout=240_000)
    wait_idle(page)
    no_traceback(page)

    page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Compare").click()
    page.get_by_role("heading", name="Compare").wait_for()
    wait_idle(page)
    legend = svg_texts(page, ".js-plotly-plot .legendtext")
    assert "Pareto frontier" in legend and "griffin" in legend, legend
    # the caption under the table says what the labels mean; it comes after the chart, so wait for it
    caption = page.get_by_text(re.compile(r"labelled executed \(.*\) or simulated"))
    try:
        caption.wait_for(timeout=30_000)
    except Exception:  # noqa: BLE001 - fail with what the page shows
        shot(page, artifacts, "22-compare-no-caption", height=1400)
        raise AssertionError(page.inner_text("body")[-2000:]) from None
    page.get_by_role("radio", name="keep", exact=True).click(force=True)   # x axis: keep, from 0 to 1
    page.wait_for_url(re.compile(r"x=keep"))
    wait_idle(page)
    ticks = [t for t in svg_texts(page, ".js-plotly-plot .xtick text") if t]
    assert ticks and min(float(t) for t in ticks) >= 0 and max(float(t) for t in ticks) <= 1.0, ticks
    no_traceback(page)
    shot(page, artifacts, "22-compare", height=1400)
