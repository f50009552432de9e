"""moyu in the browser: this file declares the pages (see app_pages/) and runs the chosen one."""
from __future__ import annotations

import streamlit as st

import ui_state

st.set_page_config(page_title="moyu — dynamic activation workbench", page_icon=":material/grid_on:",
                   layout="wide")

page = st.navigation([
    st.Page("app_pages/explore.py", title="Explore", icon=":material/grid_on:", default=True),
    st.Page("app_pages/heavy_hitters.py", title="Heavy hitters", icon=":material/bolt:"),
    st.Page("app_pages/neurons.py", title="Neurons", icon=":material/hub:"),
    st.Page("app_pages/methods.py", title="Methods", icon=":material/tune:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/scatter_plot:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/storage:"),
    st.Page("app_pages/experiments.py", title="Experiments", icon=":material/science:"),
])
ui_state.entering(page.url_path)
page.run()
