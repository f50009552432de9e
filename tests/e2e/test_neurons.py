"""The Neurons page in a real browser: a click on an Explore heatmap cell opens that neuron's
dashboard from a real (small) atlas, and the id boxes move to another neuron."""
from __future__ import annotations

import re

from test_explorer import capture, no_traceback, shot, wait_idle

CORPUS = "Rivers carry water down to the sea.\n\nThe old mill stood by the river for a hundred years.\n"


def test_cell_click_opens_the_neuron_in_the_atlas(app_server, new_page, artifacts, lm, tmp_path_factory):
    from moyu_core.atlas import build

    folder = tmp_path_factory.mktemp("atlas_e2e")
    (folder / "corpus.txt").write_text(CORPUS)
    build.build(lm, str(folder / "corpus.txt"), folder / "atlas", top_k=3, chunk_tokens=16, methods=["oracle", "tda"])
    base, _ = app_server
    page = new_page()
    capture(page, base, "Rivers carry water down to the sea, past the old mill.")
    cells = page.locator(".st-key-detail_box .js-plotly-plot").first
    cells.scroll_into_view_if_needed()
    area = cells.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(area["x"] + area["width"] * 0.5, area["y"] + area["height"] * 0.5)
    page.wait_for_function("location.search.includes('neuron=')")
    wait_idle(page)
    link = page.get_by_role("link", name=re.compile(r"Open neuron \d+ of layer \d+ in Neurons"))
    link.wait_for()
    neuron, layer = map(int, re.search(r"Open neuron (\d+) of layer (\d+)", link.inner_text()).groups())
    link.click()
    page.get_by_role("heading", name="Neurons").wait_for()
    box = page.get_by_role("textbox", name="Atlas folder")
    box.fill(str(folder / "atlas"))
    box.press("Enter")
    try:
        page.get_by_role("heading", name=f"Layer {layer}, neuron {neuron}").wait_for(timeout=60_000)
    except Exception:  # noqa: BLE001 - say what the page shows instead
        shot(page, artifacts, "40-neuron-dashboard-failed", height=1800)
        raise AssertionError(page.inner_text("body")[-3000:]) from None
    wait_idle(page)
    assert page.get_by_text(re.compile(r"Top \d+ contexts")).count() == 1
    assert page.get_by_text("Vocabulary effect").count() == 1
    assert "river" in page.inner_text("body").lower()   # the corpus' own contexts
    no_traceback(page)
    shot(page, artifacts, "40-neuron-dashboard", height=1800)

    other = (neuron + 1) % 1536
    ids = page.get_by_role("spinbutton", name="Neuron")
    ids.fill(str(other))
    ids.press("Enter")
    page.get_by_role("heading", name=f"Layer {layer}, neuron {other}").wait_for()
    assert f"neuron={other}" in page.url
    no_traceback(page)
