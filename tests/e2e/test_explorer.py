"""The explorer in a real browser: capture, heatmap, layer and method switches, share link."""
from __future__ import annotations

import re

PROMPT = "The cat sat on the mat because the mat was warm."


def wait_idle(page, ms: int = 400) -> None:
    """Until Streamlit has finished the current script run (no 'Running' indicator)."""
    page.wait_for_timeout(ms)
    page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(300)


def no_traceback(page) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body and 'File "' not in body, body[-1500:]


def shot(page, artifacts, name: str, height: int | None = None) -> None:
    if height:
        page.set_viewport_size({"width": 1440, "height": height})
        page.wait_for_timeout(800)
    page.screenshot(path=str(artifacts / f"{name}.png"))


def metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_capture_switch_layer_and_method_then_share(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    page.goto(base + "/")
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_role("button", name="Capture").click()
    page.get_by_text("Adjacent top-10% overlap").wait_for()
    wait_idle(page)
    assert re.search(r"[?&]run=[0-9a-f]{24}", page.url), page.url
    run_id = re.search(r"run=([0-9a-f]{24})", page.url).group(1)
    assert page.locator(".js-plotly-plot").count() >= 3  # overview, detail, all layers
    assert page.locator(".js-plotly-plot .heatmaplayer, .js-plotly-plot image").count() >= 1
    shot(page, artifacts, "01-explore", height=2100)
    no_traceback(page)

    # change layer with the keyboard: the URL and the figures follow
    layer = page.get_by_role("slider", name="Layer").first
    layer.focus()
    for _ in range(3):
        layer.press("ArrowRight")
    page.wait_for_url(re.compile(r"layer=18"))
    wait_idle(page)
    assert page.get_by_text("Layer 18: tokens").count() >= 1
    page.get_by_text("|z|", exact=True).click()
    page.wait_for_url(re.compile(r"norm=abs"))
    wait_idle(page)
    page.locator("code").filter(has_text="norm=abs").last.wait_for()  # the link is redrawn last
    share = page.locator("code").filter(has_text="run=").last.inner_text().strip()
    assert run_id in share and "layer=18" in share and "norm=abs" in share

    # methods: what it keeps, quality and timing figures
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Methods").click()
    page.get_by_role("heading", name="Methods").wait_for()
    wait_idle(page)
    no_traceback(page)
    page.get_by_text("Recall of the oracle").first.wait_for()
    page.get_by_role("button", name="Evaluate quality").first.click()
    page.get_by_text("Perplexity ratio").first.wait_for(timeout=240_000)
    page.get_by_role("button", name="Generate").first.click()
    page.get_by_text("Speed-up").first.wait_for(timeout=240_000)
    wait_idle(page)
    body = page.inner_text("body")
    assert "executed" in body or "simulated" in body
    assert "Ceiling at keep" in body
    no_traceback(page)
    shot(page, artifacts, "02-methods", height=2400)

    # the share link in a fresh session shows the same view
    other = new_page()
    other.goto(share)
    other.get_by_text("Adjacent top-10% overlap").wait_for()
    wait_idle(other)
    assert run_id in other.inner_text("body")
    assert other.get_by_role("slider", name="Layer").first.get_attribute("aria-valuetext") == "18"
    assert other.get_by_text("Layer 18: tokens").count() >= 1
    no_traceback(other)
    shot(other, artifacts, "03-shared-link")


def test_long_prompt_heavy_hitters_and_runs(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    page.goto(base + "/")
    page.get_by_role("button", name="Long (~1k tokens)").click()
    page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value.length > 2000)")
    wait_idle(page)
    page.get_by_role("button", name="Capture").click()
    page.get_by_text("Adjacent top-10% overlap").wait_for(timeout=240_000)
    wait_idle(page)
    tokens = int(re.search(r"(\d+) tokens", page.inner_text("body")).group(1))
    assert tokens >= 1000
    assert page.get_by_text(f"all {tokens} tokens").count() == 1  # pooled overview of every token
    assert page.get_by_role("slider", name=re.compile("Token window")).count() + \
        page.get_by_text("Token window start").count() >= 1
    no_traceback(page)
    shot(page, artifacts, "04-explore-1024-tokens", height=2100)

    page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Heavy hitters").click()
    page.get_by_text("Top heavy hitter", exact=True).wait_for()
    wait_idle(page)
    page.locator("sup").filter(has_text="#1").first.wait_for()
    assert page.locator("sup").filter(has_text="#1").count() == 1
    no_traceback(page)
    shot(page, artifacts, "05-heavy-hitters", height=1900)

    page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Runs").click()
    page.get_by_role("heading", name="Runs").wait_for()
    wait_idle(page)
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stDataFrame"]').count() == 1, page.inner_text("body")[-1500:]
    no_traceback(page)
    shot(page, artifacts, "06-runs")


def test_bad_input_is_a_friendly_message(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    page.goto(base + "/?run=doesnotexist&layer=99")
    page.get_by_text("is not in this server's database").wait_for()
    page.get_by_label("Prompt").fill("   ")
    page.get_by_role("button", name="Capture").click()
    page.get_by_text("prompt is empty").wait_for()
    no_traceback(page)
    shot(page, artifacts, "07-bad-input")
