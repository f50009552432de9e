"""heavy_hitters (being written)."""
import streamlit as st

st.title("heavy_hitters")
st.info("Coming soon.")
