"""moyu in the browser: this file only declares the pages (see app_pages/)."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

st.set_page_config(page_title="moyu — dynamic activation workbench", page_icon=":material/grid_on:",
                   layout="wide")

pages = [
    st.Page("app_pages/explore.py", title="Explore", icon=":material/grid_on:", default=True),
    st.Page("app_pages/heavy_hitters.py", title="Heavy hitters", icon=":material/bolt:"),
    st.Page("app_pages/methods.py", title="Methods", icon=":material/tune:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/scatter_plot:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/storage:"),
]
if (HERE / "app_pages" / "experiments.py").exists():
    pages.append(st.Page("app_pages/experiments.py", title="Experiments", icon=":material/science:"))

st.navigation(pages).run()
