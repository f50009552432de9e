"""Clicks on heatmap cells. Plotly selects no heatmap cell (Streamlit's `on_select` reports
selected points, and a heatmap has none), but Plotly does emit `plotly_click` with the cell. This
tiny `st.components.v2` component listens to it on the charts inside one keyed container and
sends the cell (x, y, customdata) to Python: no extra trace, nothing more on the wire."""
from __future__ import annotations

from typing import Callable

import streamlit as st

_JS = """
export default function(component) {
    const { setTriggerValue, data } = component;
    const attach = () => {
        document.querySelectorAll(`.st-key-${data.box} .js-plotly-plot`).forEach((gd) => {
            if (gd.__moyuClicks || typeof gd.on !== "function") return;
            gd.__moyuClicks = true;
            gd.on("plotly_click", (e) => {
                const p = e && e.points && e.points[0];
                if (!p) return;
                const cd = p.customdata === undefined || p.customdata === null ? null : Array.from(p.customdata);
                setTriggerValue("cell", {x: p.x, y: p.y, customdata: cd, at: Date.now()});
            });
        });
    };
    attach();
    const timer = setInterval(attach, 300);   // a redrawn chart is a new element
    return () => clearInterval(timer);
}
"""
_COMPONENT = st.components.v2.component("moyu_heatmap_clicks", js=_JS)


def on_cell_click(box: str, on_click: Callable[[dict], None]) -> None:
    """Call `on_click(cell)` (cell: x, y, customdata of the clicked heatmap cell) when a cell of a
    Plotly chart inside `st.container(key=box)` is clicked; place after that container."""
    key = f"clicks_{box}"

    def changed():
        cell = getattr(st.session_state.get(key), "cell", None)
        if cell is None and isinstance(st.session_state.get(key), dict):
            cell = st.session_state[key].get("cell")
        if cell:
            on_click(cell)

    _COMPONENT(data={"box": box}, key=key, on_cell_change=changed)
