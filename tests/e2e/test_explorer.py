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


def metric_values(page, label: str) -> list[str]:
    """The values of every metric whose label is exactly `label`, in page order."""
    out = []
    for box in page.locator('[data-testid="stMetric"]').all():
        if box.locator('[data-testid="stMetricLabel"]').inner_text().strip() == label:
            out.append(box.locator('[data-testid="stMetricValue"]').inner_text().strip())
    return out


def wait_no_progress(page, timeout: int = 240_000) -> None:
    """Until no background job shows its progress bar (they say what they compute: "⏳ ...")."""
    page.wait_for_function("!Array.from(document.querySelectorAll('[data-testid=\"stProgress\"]'))"
                           ".some(e => e.innerText.includes('⏳'))", timeout=timeout)
    wait_idle(page)


def capture(page, base: str, text: str) -> str:
    """Capture `text` on Explore; returns the run id."""
    page.goto(base + "/")
    page.get_by_label("Prompt").fill(text)
    page.get_by_role("button", name="Capture").click()
    page.get_by_text("Adjacent top-10% overlap").wait_for()
    wait_idle(page)
    return re.search(r"run=([0-9a-f]{24})", page.url).group(1)


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
    section = page.locator('[data-testid="stExpander"]').filter(has_text="tda · keep")
    section.locator("summary").click()
    section.get_by_role("button", name="Evaluate quality").click()
    section.get_by_text("Measured sparsity").first.wait_for(timeout=240_000)
    section.get_by_role("button", name="Generate").click()
    section.get_by_text("Speed-up").first.wait_for(timeout=240_000)
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
    page.get_by_text(f"all {tokens} tokens").first.wait_for()  # the pooled overview of every token (a Plotly title)
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


def test_click_a_cell_search_a_neuron_hide_the_sink_and_whole_characters(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    run_id = capture(page, base, "Emoji 🦄 and Hebrew שלום: " + " ".join(["tokens"] * 60))
    detail = page.locator(".stPlotlyChart").filter(has=page.locator(".gtitle", has_text="tokens 0–"))
    rows = detail.locator(".js-plotly-plot").evaluate("el => el.data[0].y.join(' | ')")
    assert "🦄" in rows and "ש" in rows and "\ufffd" not in rows, rows   # byte pieces merged for display
    cells = page.locator(".st-key-detail_box .js-plotly-plot").first
    cells.scroll_into_view_if_needed()
    area = cells.locator(".nsewdrag").first.bounding_box()
    x, y = area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.4
    page.mouse.move(x, y)
    hover = page.locator(".hovertext").first
    hover.wait_for()
    assert re.search(r"token \d+ ▸ .+neuron n\d+", hover.text_content()), hover.text_content()
    page.mouse.click(x, y)
    page.wait_for_function("location.search.includes('neuron=') && location.search.includes('token=')")
    page.get_by_text("Selected:").wait_for()
    wait_idle(page)
    neuron = re.search(r"neuron=(\d+)", page.url).group(1)
    page.get_by_text(f"neuron {neuron} over the tokens").first.wait_for()
    link = page.get_by_role("link", name=re.compile(f"Open neuron {neuron} of layer \\d+ in Neurons"))
    link.wait_for()
    assert f"neuron={neuron}" in link.get_attribute("href")
    shot(page, artifacts, "10-cell-selected", height=2300)

    find = page.get_by_role("spinbutton", name="Find neuron")
    find.fill("1234")
    find.press("Enter")
    page.wait_for_function("location.search.includes('neuron=1234')")
    page.get_by_text("neuron 1234 over the tokens").first.wait_for()
    wait_idle(page)
    cols = page.locator(".st-key-detail_box .js-plotly-plot").first.evaluate("el => el.data[0].x")
    assert "n1234" in cols   # the window moved to show the neuron

    page.get_by_text("Hide token 0 (attention sink)").click()
    page.wait_for_function("location.search.includes('hide0=1')")
    wait_idle(page)
    title = page.locator(".st-key-detail_box .gtitle").first
    page.wait_for_function("document.querySelector('.st-key-detail_box .gtitle').textContent"
                           ".startsWith('Layer 15: tokens 1–')")
    assert title.text_content().startswith("Layer 15: tokens 1–")
    no_traceback(page)

    page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Heavy hitters").click()
    page.get_by_text("Top heavy hitter", exact=True).wait_for()
    wait_idle(page)
    page.get_by_text("Skip token 0").click()
    page.wait_for_function("location.search.includes('skip_first=True')")
    wait_idle(page)
    first = page.locator("span[title^='token 0:']").first
    assert "background" not in (first.get_attribute("style") or "")   # token 0 is not shaded
    bar = page.locator(".js-plotly-plot").filter(has_text="Accumulated attention").first
    assert bar.evaluate("el => el.data[0].x[0]").startswith("1 ▸")   # token 0 has no bar
    assert "🦄" in page.inner_text("body") and "\ufffd" not in page.inner_text("body")
    no_traceback(page)
    shot(page, artifacts, "11-heavy-hitters-skip-sink", height=1900)
    assert run_id
