"""Errors and leftovers in plain view, in a real browser: an over-length prompt says the limit and
how to raise it; a link's out-of-range parameter is reset with a notice; an experiment's progress
bars go when it ends and ReLU vs SwiGLU says how long it takes."""
from __future__ import annotations

import re

from test_explorer import capture, no_traceback, shot, wait_idle


def test_over_length_prompt_and_url_notice(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    page.goto(base + "/")
    page.get_by_text("Advanced options").click()
    box = page.get_by_role("spinbutton", name="Max tokens")
    box.fill("16")
    box.press("Enter")
    wait_idle(page)
    page.get_by_label("Prompt").fill("one two three four five six seven eight nine ten eleven twelve "
                                     "thirteen fourteen fifteen sixteen seventeen eighteen")
    page.get_by_role("button", name="Capture").click()
    error = page.locator('[data-testid="stAlert"]').filter(has_text="the limit is 16")
    error.wait_for()
    assert error.is_visible()   # in plain view, not inside a collapsed box
    text = error.inner_text()
    assert "Max tokens" in text and "Advanced options" in text and "--max-tokens" not in text, text
    shot(page, artifacts, "30-over-length")
    box.fill("64")
    box.press("Enter")
    page.get_by_role("button", name="Capture").click()
    page.get_by_text("Adjacent top-10% overlap").wait_for()
    wait_idle(page)
    run_id = re.search(r"run=([0-9a-f]{24})", page.url).group(1)
    no_traceback(page)

    page.goto(f"{base}/?run={run_id}&layer=99&clip=42")
    notice = page.locator('[data-testid="stAlert"]').filter(has_text="layer=99")
    notice.wait_for()
    assert "0–29" in notice.inner_text() and "reset to 15" in notice.inner_text()
    assert page.locator('[data-testid="stAlert"]').filter(has_text="clip=42").count() == 1
    assert page.get_by_role("slider", name="Layer").first.get_attribute("aria-valuetext") == "15"
    no_traceback(page)
    shot(page, artifacts, "31-url-notice")


def test_experiment_bars_go_and_relu_says_its_time(app_server, new_page, artifacts):
    base, _ = app_server
    page = new_page()
    capture(page, base, "Warm up the model for the experiments page.")
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Experiments").click()
    page.get_by_role("heading", name="Experiments").wait_for()
    wait_idle(page)
    page.get_by_label("Texts of each kind").fill("2")
    page.get_by_label("Tokens per text").fill("6")
    page.get_by_role("button", name="Run (cached when already done)").first.click()
    page.locator('[data-testid="stProgress"]').first.wait_for(timeout=60_000)   # a bar while it runs
    page.get_by_text("Inertia per layer").first.wait_for(timeout=240_000)
    wait_idle(page)
    try:   # and gone once it has ended
        page.wait_for_function("document.querySelectorAll('[data-testid=\"stProgress\"]').length == 0",
                               timeout=30_000)
    except Exception:  # noqa: BLE001 - say which bars stayed
        raise AssertionError(page.locator('[data-testid="stProgress"]').all_inner_texts()) from None
    no_traceback(page)
    page.get_by_role("tab", name="ReLU vs SwiGLU").click()
    page.get_by_role("button", name="Train and compare").wait_for()
    assert page.get_by_text(re.compile(r"at most about \d+ min")).count() == 1
    tabs = page.get_by_role("tab").all_inner_texts()
    assert {"Activation inertia", "Heavy-hitter ablation", "ReLU vs SwiGLU", "Applicability"} <= set(tabs)
    shot(page, artifacts, "32-experiments")
